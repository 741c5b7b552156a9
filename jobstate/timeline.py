"""A job's history read back in order: its history items, the step records on the job
item and in steps items, and its type's pauses and resumes while it was alive.

Sorted by when each thing ended, so the newest state is last: a failure, then the repair
(resume or redrive), then the success (issue 20).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from . import dynamo, history, schema
from .dynamo import Item
from .records import HistoryEntry, JobView
from .schema import H
from .table import Table


def build(table: Table, job: JobView, raws: Iterable[Item]) -> list[HistoryEntry]:
    """Every entry of `job`'s history, oldest first."""
    created = job.created_at or 0
    items: list[HistoryEntry] = []
    steps: list[HistoryEntry] = []
    for raw in raws:
        if raw.get(H.EVENT, {}).get("S") == "steps":
            base = int(raw.get(H.CREATED, {}).get("N", created))
            steps += history.unpack(raw.get(H.STEPS, {}).get("S"), base)
        else:
            items.append(history.entry(raw))
    steps += history.unpack(job.recent, created)
    # A step with an item of its own (history="step-items", a failure) shows that one, not both.
    own = {(e.step, e.event) for e in items}
    entries = items + [e for e in steps if (e.step, e.event) not in own]
    entries += type_actions(table, job)
    entries.sort(key=_when)
    return _steps_for_type_actions(entries)


def _when(e: HistoryEntry) -> tuple[int, bool, int]:
    # Same millisecond: a type's action (step -1 until placed) after the job's own entries.
    return (e.ended_at if e.ended_at is not None else e.started_at or 0, e.step < 0, e.step)


def _steps_for_type_actions(entries: list[HistoryEntry]) -> list[HistoryEntry]:
    """A type's pause or resume happened between steps: give it the step of the entry
    before it (the item has none of its own)."""
    out, step = [], 0
    for e in entries:
        if e.step < 0:
            e = replace(e, step=step)
        out.append(e)
        step = e.step
    return out


def type_actions(table: Table, job: JobView) -> list[HistoryEntry]:
    """Pauses and resumes of the job's type (or an ancestor's) while the job was alive."""
    since = job.created_at or 0
    until = table.clock.now_ms() if not job.status.terminal else (job.updated_at or since)
    out = []
    for job_type in {job.job_type, *job.ancestors}:
        values = {":pk": dynamo.av(schema.type_pk(job_type)),
                  ":a": dynamo.av(schema.op_sk(since, "")),
                  ":b": dynamo.av(schema.op_sk(until + 1, ""))}

        def fetch(start: Item | None, values: Item = values) -> dict[str, object]:
            page: dict[str, object] = {}  # a literal: the IAM analysis sees no index here
            if start:
                page["ExclusiveStartKey"] = start
            return dict(table.call("query", ExpressionAttributeValues=values, **page,
                                   KeyConditionExpression="pk = :pk AND sk BETWEEN :a AND :b"))

        for raw in dynamo.pages(fetch):
            out.append(replace(history.entry(raw), step=-1))
    return out


def checkpoints(raws: Iterable[Item]) -> dict[int, tuple[str, str]]:
    """The checkpoints kept in history: step -> (cursor JSON, progress JSON) it starts from."""
    out = {}
    for raw in raws:
        cursor = raw.get(H.CURSOR, {}).get("S")
        if raw.get(H.EVENT, {}).get("S") == "steps" and cursor is not None:
            out[int(raw[H.STEP]["N"])] = (cursor, raw.get(H.PROGRESS, {}).get("S", "{}"))
    return out
