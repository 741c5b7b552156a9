"""A new job's items, as `transitions.create` puts them: the job item and, for an input
too big to carry in every write, its input item. Building an item writes nothing."""

from __future__ import annotations

from typing import Any

from . import codec, historymode, schema
from .dynamo import Item, av
from .historymode import HistoryMode
from .schema import IN, J
from .status import JobStatus
from .table import Table

QUEUED_UNTIL = 9_999_999_999_999  # not_before of a child waiting for a concurrency slot


def new_job(table: Table, job_id: str, job_type: str, *, input_json: str, cursor_json: str,
            max_attempts: int, max_steps: int, deadline_at: int | None,
            runnable_now: bool = True, history: HistoryMode | bool = "steps",
            paused_by: str | None = None,
            extra: dict[str, Any] | None = None) -> Item:
    """The item of a new PENDING job at step 0 (validated and encoded by the caller). An
    input over INLINE_INPUT_BYTES is left out: it goes to the job's input item."""
    now = table.clock.now_ms()
    item: Item = {
        **schema.job_key(job_id),
        J.JOB_ID: av(job_id), J.TYPE: av(job_type), J.STATUS: av(JobStatus.PENDING.value),
        J.STEP: av(0), J.INPUT_HASH: av(codec.input_hash(job_type + "\x1f" + input_json)),
        J.CURSOR: av(cursor_json), J.ATTEMPT: av(0), J.MAX_ATTEMPTS: av(max_attempts),
        J.MAX_STEPS: av(max_steps), J.CREATED: av(now), J.UPDATED: av(now),
        J.INVOCATIONS: av(0), J.LEASE: av(0),
        J.NOT_BEFORE: av(0 if runnable_now else QUEUED_UNTIL),
        J.LIST_SHARD: av(schema.list_hash(job_id)),
        J.LIST_KEY: av(schema.list_range(
            job_type, schema.ACTIVE if paused_by is None else schema.PAUSED, now)),
    }
    if codec.size_of(input_json) <= schema.INLINE_INPUT_BYTES:
        item[J.INPUT] = av(input_json)
    if not runnable_now:
        item[J.WAIT_REASON] = av("concurrency")
    if deadline_at is not None:
        item[J.DEADLINE] = av(deadline_at)
    mode = historymode.parse_mode(history, f"a new {job_type!r} job")
    if (ho := historymode.stored(mode)) is not None:
        item[J.HISTORY_ON] = av(ho)
    if paused_by is not None:
        item[J.PAUSED_BY] = av(paused_by)
    for k, v in (extra or {}).items():
        item[k] = av(v)
    return item


def input_item(job_id: str, input_json: str, input_hash: str, expires_at: int | None) -> Item:
    """The input item of a job whose input is too big for its job item."""
    item: Item = {**schema.input_key(job_id), IN.INPUT: av(input_json),
                  J.INPUT_HASH: av(input_hash)}
    if expires_at is not None:
        item[IN.EXPIRES] = av(expires_at)
    return item
