"""Step-history items: a log under the job's partition, one item per event.

Keys are `STEP#<step:09d>#<time>#<owner>#<event>`, so one step can have several events (a
retry, a takeover, a failure) and a `begins_with(STEP#<step>)` query reads a step's.
"""

from __future__ import annotations

from typing import Any

from . import codec, schema
from .dynamo import Item, av
from .lease import Lease
from .records import HistoryEntry
from .schema import H
from .table import Table

DETAIL_CHARS = 2000


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
        H.EXPIRES: av(now // 1000 + table.retention_s),
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
                        work=codec.loads(s(H.WORK)))
