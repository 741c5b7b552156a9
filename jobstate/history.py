"""A job's history: recent steps on the job item, history items under its partition.

On by default, at almost no cost (issue 20): each step's commit (or sleep, spawn, finish)
adds a compact record — step, claim time, duration, outcome — to the job item's `hr`
attribute, on the write that happens anyway. When `RING` records have gathered, the next
commit first puts them in one history item together with the checkpoint the step starts
from (cursor and progress: what `redrive --from-step` restores), so a step costs 1/RING of
a write more and the job item stays well under 1 KB. Eventful steps (a retry, a deferral,
a takeover, a failure) and operator actions get their own items at once. That is the
default mode, "steps"; "recent" drops the records instead of moving them (no write beyond
the step's two) and "step-items" puts each step in an item of its own (historymode.py).

Keys are `STEP#<step:09d>#<time>#<owner>#<event>`. A job type's pause and resume live
under its `TYPE#` partition (`OP#<time>#<action>`) and show in the history of every job
alive then. History items expire `retention` after they are written or after the job's
deadline, whichever is later, like the job's own TTL.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from . import codec, schema
from .dynamo import Item, Refused, av, condition
from .lease import Lease
from .records import HistoryEntry
from .schema import H
from .table import Table

DETAIL_CHARS = 2000
RING = 16  # step records kept on the job item before they move to a history item
CODES = {"c": "committed", "w": "waited", "s": "spawned", "S": "succeeded", "F": "failed"}
EVENTS = {v: k for k, v in CODES.items()}


def expires(table: Table, now: int, deadline_at: int | None) -> int:
    """A history item's TTL: `retention` after now or after the job's deadline."""
    return max(now, deadline_at or 0) // 1000 + table.retention_s


def history_item(table: Table, lease: Lease, event: str, now: int, *,
                 detail: str | None = None, attempt: int | None = None,
                 work: str | None = None) -> Item:
    """The history item of `event` in the leased step."""
    item: Item = {
        schema.PK: av(schema.job_pk(lease.job_id)),
        schema.SK: av(schema.history_sk(lease.step, now, lease.owner, event)),
        H.STEP: av(lease.step),
        H.EVENT: av(event),
        H.OWNER: av(lease.owner),
        H.REQUEST_ID: av(lease.request_id),
        H.STARTED_AT: av(lease.claimed_at),
        H.ENDED_AT: av(now),
        H.DURATION_MS: av(max(0, now - lease.claimed_at)),
        H.EXPIRES: av(expires(table, now, lease.job.deadline_at)),
    }
    if detail:
        item[H.DETAIL] = av(detail[:DETAIL_CHARS])
    if attempt is not None:
        item[H.ATTEMPT] = av(attempt)
    if work:
        item[H.WORK] = av(work)
    return item


def record(table: Table, lease: Lease, event: str, **kw: Any) -> None:
    """One unconditional PutItem: history is a log, its own key makes it unique."""
    table.call("put_item", Item=history_item(table, lease, event, table.clock.now_ms(), **kw))


# -- recent steps on the job item ------------------------------------------------------------


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    n = max(0, n)
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def ring(table: Table, lease: Lease, event: str, now: int) -> tuple[str, bool, Item | None]:
    """This step's record; whether it is appended to the job item's recent steps (False:
    it replaces them); and the history item to put first when they are full (or None).

    Appended with `list_append`, so a step sends its own record only (request bytes), and
    only to a list the claim saw: the commit is fenced by the lease, nothing else writes
    `hr` while a step holds it.
    """
    base = lease.job.created_at or 0
    mine = (f"{_b36(lease.step)}.{_b36(lease.claimed_at - base)}."
            f"{_b36(now - lease.claimed_at)}.{EVENTS[event]}")
    before = (lease.job.recent or "").split()
    if len(before) < RING:
        return mine, bool(before), None
    if lease.job.history_mode == "recent":  # the last steps only: older records go
        return mine, False, None
    return mine, False, steps_item(table, lease, before)


def steps_item(table: Table, lease: Lease, records: list[str]) -> Item:
    """Committed steps' records moved off the job item, with the checkpoint step
    `lease.step` starts from. Its key follows from its content: a resent write (or a
    second owner of the same step) puts the same item again."""
    first = records[0].split(".")
    job = lease.job
    return {
        schema.PK: av(schema.job_pk(lease.job_id)),
        schema.SK: av(schema.history_sk(int(first[0], 36), int(first[1], 36), "ring", "steps")),
        H.EVENT: av("steps"), H.STEP: av(lease.step), H.STEPS: av(" ".join(records)),
        H.CREATED: av(job.created_at or 0),
        H.CURSOR: av(codec.dumps(job.cursor, "cursor")),
        H.PROGRESS: av(codec.dumps(job.progress.to_dict(), "progress")),
        H.EXPIRES: av(expires(table, table.clock.now_ms(), job.deadline_at)),
    }


def unpack(records: str | None, created_at: int) -> list[HistoryEntry]:
    """Step records (`hr` or a steps item's) as history entries."""
    out = []
    for rec in (records or "").split():
        parts = rec.split(".")
        if len(parts) != 4 or parts[3] not in CODES:
            continue
        step, start, took = (int(p, 36) for p in parts[:3])
        out.append(HistoryEntry(step=step, event=CODES[parts[3]], owner=None, request_id=None,
                                started_at=created_at + start,
                                ended_at=created_at + start + took, duration_ms=took,
                                attempt=None, detail=None))
    return out


# -- operator actions and other notes --------------------------------------------------------


class JobLike(Protocol):
    """What `note` needs of a job (a JobView or a JobItem)."""

    @property
    def job_id(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def deadline_at(self) -> int | None: ...


def note(table: Table, job: JobLike, event: str, *, who: str | None = None,
         detail: str | None = None, step: int | None = None, at_ms: int | None = None,
         once: bool = False) -> None:
    """Record something that happened to `job` outside its steps: an operator's action
    (`paused`, `resumed`, `cancelled`, `settled`, `redriven`), a callback's answer, ...

    One PutItem under the job's partition (conditional with `once`). `who` is the caller
    (an IAM ARN, an OS user); `detail` says why or what (cut to DETAIL_CHARS); `at_ms`
    dates it (default now). `once`: the note is of something with a time of its own
    (`at_ms`, e.g. a callback answer), keyed by that alone and put only if missing, so
    whoever repeats the act repeats the note safely. Callers outside this module use this
    function, never their own item.
    """
    now = table.clock.now_ms() if at_ms is None else at_ms
    at = job.step if step is None else step
    item: Item = {
        schema.PK: av(schema.job_pk(job.job_id)),
        schema.SK: av(schema.history_sk(0 if once else at, now, who or "-", event)),
        H.STEP: av(at), H.EVENT: av(event), H.ENDED_AT: av(now),
        H.EXPIRES: av(expires(table, now, job.deadline_at)),
    }
    if who:
        item[H.WHO] = av(who[:500])
    if detail:
        item[H.DETAIL] = av(detail[:DETAIL_CHARS])
    if not once:
        table.call("put_item", Item=item)
        return
    with contextlib.suppress(Refused):  # refused: noted already
        table.put(item, condition(lambda u: u.absent(schema.PK)))


def type_note(table: Table, job_type: str, event: str, *, who: str | None = None,
              detail: str | None = None) -> None:
    """A job type's pause or resume: one item under its TYPE# partition, shown in the
    history of every job that was alive then."""
    now = table.clock.now_ms()
    item: Item = {schema.PK: av(schema.type_pk(job_type)),
                  schema.SK: av(schema.op_sk(now, event)), H.EVENT: av(event),
                  H.ENDED_AT: av(now), H.EXPIRES: av(now // 1000 + table.retention_s)}
    if who:
        item[H.WHO] = av(who[:500])
    if detail:
        item[H.DETAIL] = av(f"{job_type}: {detail}"[:DETAIL_CHARS])
    table.call("put_item", Item=item)


def entry(raw: Item) -> HistoryEntry:
    """A history item as the public record."""
    def n(name: str) -> int | None:
        v = raw.get(name, {}).get("N")
        return None if v is None else int(v)

    def s(name: str) -> str | None:
        v = raw.get(name, {}).get("S")
        return None if v is None else str(v)

    return HistoryEntry(step=n(H.STEP) or 0, event=s(H.EVENT) or "", owner=s(H.OWNER),
                        request_id=s(H.REQUEST_ID), started_at=n(H.STARTED_AT),
                        ended_at=n(H.ENDED_AT), duration_ms=n(H.DURATION_MS),
                        attempt=n(H.ATTEMPT), detail=s(H.DETAIL),
                        work=codec.loads(s(H.WORK)), who=s(H.WHO))
