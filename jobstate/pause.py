"""The kill switch of a job type.

Pausing a type writes its control item `TYPE#<type>/CONTROL`, then marks each unfinished
job of the type, and of the job trees below them, as held (`pause-mark`): the claim's own
condition refuses a held job, so a step costs no read of the flag and no event gets past
it, whatever types it names. Resuming clears the marks (`unpause`), which makes the jobs
ready for the next sweep. A job created while its type (or an ancestor's) is paused is
created held; the sweeper marks any job a pause missed (the index it lists them from is
eventually consistent) when it meets one.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import codec, dynamo, schema, transitions
from .dynamo import Refused, Update, av
from .errors import StoreUnavailable
from .items import ControlItem, JobItem, control_item, job_item, pk_job_id
from .records import ancestors_of, child_ids_of
from .schema import CTL, J
from .status import JobStatus
from .table import Table

_MARK_TRIES = 5  # a job listed in a new bucket since it was read is read again, this often


class PauseSwitch:
    """The pause flags of one table's job types, as one container sees them."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._cache: dict[str, tuple[int, bool]] = {}
        self._lock = threading.Lock()

    def switch(self, job_type: str, paused: bool, reason: str = "") -> int:
        """Pause or resume a job type. Returns how many held jobs a resume let go (ready for
        the next sweep); 0 when pausing.

        Both are idempotent: resuming a type that is not paused changes nothing — except
        after a resume that died while letting its jobs go (the control item names that
        wake until it is done): then resuming again finishes it.
        """
        codec.validate_job_type(job_type)
        key = schema.control_key(job_type)
        now = self.table.clock.now_ms()
        if paused:
            self.table.put({**key, CTL.PAUSED: av(True),
                            CTL.REASON: av(reason or "paused by operator"),
                            CTL.UPDATED: av(now)})
            self._remember(job_type, True)
            self.hold(job_type, self._jobs_of(job_type))
            return 0
        wake = uuid.uuid4().hex  # this resume's wake: only it may say the wake is done
        upd = (Update().set(CTL.PAUSED, False).set(CTL.REASON, reason or "resumed")
               .set(CTL.UPDATED, now).set(CTL.WAKING, wake))
        upd.where(f"{upd.eq(CTL.PAUSED, True)} OR {upd.exists(CTL.WAKING)}")
        try:
            self.table.update(key, upd)
        except Refused:
            self._remember(job_type, False)  # not paused (or never was): nothing held
            return 0
        self._remember(job_type, False)
        let_go = self._let_go(job_type, self._jobs_of(job_type), seen=set())
        # Refused: paused again since, or another resume's wake runs now (it clears its
        # own). Not written: the next resume wakes again, which is harmless.
        done = Update().remove(CTL.WAKING)
        with contextlib.suppress(Refused, StoreUnavailable):
            self.table.update(key, done.where(done.eq(CTL.WAKING, wake)))
        return let_go

    def hold(self, job_type: str, ids: Iterable[str], seen: set[str] | None = None) -> int:
        """Mark the unfinished jobs `ids` and their descendants as held by `job_type`."""
        seen = set() if seen is None else seen
        todo = [i for i in dict.fromkeys(ids) if i not in seen]
        seen.update(todo)
        held = 0
        children: list[str] = []
        for item in self._read(todo):
            if item.status.terminal:
                continue
            children.extend(self._children(item))
            held += self._apply(transitions.pause_mark, item, job_type)
        return held + (self.hold(job_type, children, seen) if children else 0)

    def _let_go(self, job_type: str, ids: Iterable[str], *, seen: set[str]) -> int:
        todo = [i for i in dict.fromkeys(ids) if i not in seen]
        seen.update(todo)
        let_go = 0
        children: list[str] = []
        for item in self._read(todo):
            if item.status.terminal:
                continue
            children.extend(self._children(item))
            others = [t for t in (*ancestors_of(item), item.job_type) if t != job_type]
            other = self.holder(others)
            if other is None:
                let_go += self._apply(transitions.unpause, item, job_type)
            else:  # still held by another paused type: hand it over, do not let it go
                self._apply(functools.partial(transitions.unpause, still_held_by=other),
                            item, job_type)
        return let_go + (self._let_go(job_type, children, seen=seen) if children else 0)

    def _apply(self, change: Callable[[Table, JobItem, str], None], item: JobItem,
               job_type: str) -> int:
        """Mark or unmark one job: 1 if done, 0 if it no longer applies (finished meanwhile,
        held by another paused type, not held by this one). A job whose step moved it to
        another by-type bucket since it was read is read again and tried again."""
        for _ in range(_MARK_TRIES):
            try:
                change(self.table, item, job_type)
                return 1
            except Refused:
                raw = self.table.get_item(schema.job_key(item.job_id))
                if raw is None:
                    return 0
                again = job_item(raw)
                if again.status.terminal or again.list_key == item.list_key:
                    return 0  # refused for what it is, not for where it is listed
                item = again
        raise StoreUnavailable(
            f"job {item.job_id!r} kept moving while being marked for {job_type!r}'s pause; "
            "run the pause or resume again")

    def _read(self, ids: list[str]) -> Iterator[JobItem]:
        return map(job_item, self.table.batch_get([schema.job_key(i) for i in ids]))

    def _children(self, item: JobItem) -> list[str]:
        if item.children_total and item.status == JobStatus.WAITING:
            return child_ids_of(self.table.view(item, secrets=False))
        return []

    def _jobs_of(self, job_type: str) -> list[str]:
        """Every unfinished job of the type (in flight or asleep), from the by-type index."""
        names = {"#k": J.LIST_SHARD, "#r": J.LIST_KEY}
        ids: list[str] = []
        for bucket in (schema.ACTIVE, schema.ASLEEP, schema.PAUSED):
            values: dict[str, Any] = {":p": av(schema.list_prefix(bucket, job_type))}
            for lk in schema.list_shards():
                shard_values = {**values, ":lk": av(lk)}
                ids.extend(pk_job_id(item) for item in dynamo.pages(
                    lambda start, v=shard_values: self.table.call(  # type: ignore[misc]
                        "query", IndexName=schema.LIST_INDEX,
                        KeyConditionExpression="#k = :lk AND begins_with(#r, :p)",
                        ExpressionAttributeNames=names, ExpressionAttributeValues=v,
                        **dynamo.start_at(start))))
        return ids

    # -- reading the flags ---------------------------------------------------------------

    def state(self, job_type: str) -> bool | None:
        """True if paused, False if paused and resumed since, None if never paused."""
        codec.validate_job_type(job_type)
        return self._flag(job_type, consistent=True)

    def is_paused(self, job_type: str, *, fresh: bool = False) -> bool:
        """Whether the type is paused; cached per container for `pause_cache_s` (for job
        creation and the sweeper; a step never reads it)."""
        now = self.table.clock.now_ms()
        with self._lock:
            hit = self._cache.get(job_type)
        if hit is not None and hit[0] > now and not fresh:
            return hit[1]
        paused = bool(self._flag(job_type, consistent=fresh))
        self._remember(job_type, paused)
        return paused

    def holder(self, job_types: Iterable[str], *, fresh: bool = False) -> str | None:
        """The first of `job_types` that is paused (a new job is created held by it)."""
        return next((t for t in job_types if self.is_paused(t, fresh=fresh)), None)

    def types(self) -> dict[str, bool]:
        """Control items of every type that was ever paused (a small Scan; operator use)."""
        return {c.job_type: c.paused for c in self.controls()}

    def paused_now(self) -> list[ControlItem]:
        """The control items of the types paused now (since when, why), by name."""
        return sorted((c for c in self.controls() if c.paused), key=lambda c: c.job_type)

    def controls(self) -> list[ControlItem]:
        """Every type's control item (a Scan for one item kind; operator use)."""
        values = {":c": av(schema.CONTROL_SK)}

        def fetch(start: Any) -> dict[str, Any]:
            page: dict[str, Any] = {}  # a literal: the IAM analysis sees no index here
            if start:
                page["ExclusiveStartKey"] = start
            return self.table.call("scan", FilterExpression="sk = :c",
                                   ExpressionAttributeValues=values, **page)

        return [control_item(raw) for raw in dynamo.pages(fetch)]

    def _remember(self, job_type: str, paused: bool) -> None:
        with self._lock:
            self._cache[job_type] = (self.table.clock.now_ms() + self.table.pause_cache_ms,
                                     paused)

    def _flag(self, job_type: str, *, consistent: bool) -> bool | None:
        """The type's pause flag as stored; None without a control item."""
        raw = self.table.get_item(schema.control_key(job_type), consistent=consistent)
        return None if raw is None else control_item(raw).paused
