"""The kill switch of a job type: its control item `TYPE#<type>/CONTROL`, a per-container
cache of it, and the wake that makes a resumed type's held jobs due again."""

from __future__ import annotations

import contextlib
import threading
import uuid
from typing import Any

from . import codec, dynamo, schema, transitions
from .dynamo import Refused, Update, av
from .errors import StoreUnavailable
from .items import control_item, job_item, pk_job_id
from .records import child_ids_of
from .schema import ACTIVE, CTL, J
from .status import JobStatus
from .table import Table


class PauseSwitch:
    """The pause flags of one table's job types, as one container sees them."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._cache: dict[str, tuple[int, bool]] = {}
        self._lock = threading.Lock()

    def switch(self, job_type: str, paused: bool, reason: str = "") -> int:
        """Pause or resume a job type. Resuming makes its jobs (and their children, which
        a paused ancestor paused too) due now, so the next sweep dispatches them.

        Returns how many jobs were made due (0 when pausing). Both are idempotent:
        resuming a type that is not paused writes nothing and wakes nothing (its jobs were
        not held), so a repeated resume is a no-op — except after a resume that died
        while waking the jobs (the control item names that wake until it is done): then
        resuming again wakes them (a resume meeting a live wake wakes again: harmless).
        """
        codec.validate_job_type(job_type)
        key = schema.control_key(job_type)
        now = self.table.clock.now_ms()
        wake = uuid.uuid4().hex  # this resume's wake: only it may say the wake is done
        if paused:
            self.table.put({**key, CTL.PAUSED: av(True),
                            CTL.REASON: av(reason or "paused by operator"),
                            CTL.UPDATED: av(now)})
            self._remember(job_type, True)
            return 0
        upd = (Update().set(CTL.PAUSED, False).set(CTL.REASON, reason or "resumed")
               .set(CTL.UPDATED, now).set(CTL.WAKING, wake))
        upd.where(f"{upd.eq(CTL.PAUSED, True)} OR {upd.exists(CTL.WAKING)}")
        try:
            self.table.update(key, upd)
        except Refused:
            # Not paused (or never was): none of its jobs were held.
            self._remember(job_type, False)
            return 0
        self._remember(job_type, False)
        woken = self._wake_type(job_type)
        # Refused: paused again since, or another resume's wake runs now (it clears its
        # own). Not written: the next resume wakes again, which is harmless.
        done = Update().remove(CTL.WAKING)
        with contextlib.suppress(Refused, StoreUnavailable):
            self.table.update(key, done.where(done.eq(CTL.WAKING, wake)))
        return woken

    def state(self, job_type: str) -> bool | None:
        """True if paused, False if paused and resumed since, None if never paused."""
        codec.validate_job_type(job_type)
        return self._read(job_type, consistent=True)

    def is_paused(self, job_type: str, *, fresh: bool = False) -> bool:
        """Whether the type is paused; cached per container for `pause_cache_s`."""
        now = self.table.clock.now_ms()
        with self._lock:
            hit = self._cache.get(job_type)
        if hit is not None and hit[0] > now and not fresh:
            return hit[1]
        # A kill switch may take a second to be seen: half the price of a strong read.
        paused = bool(self._read(job_type, consistent=fresh))
        self._remember(job_type, paused)
        return paused

    def types(self) -> dict[str, bool]:
        """Control items of every type that was ever paused (a small Scan; operator use)."""
        values = {":c": av(schema.CONTROL_SK)}

        def fetch(start: Any) -> dict[str, Any]:
            page: dict[str, Any] = {}  # a literal: the IAM analysis sees no index here
            if start:
                page["ExclusiveStartKey"] = start
            return self.table.call("scan", FilterExpression="sk = :c",
                                   ExpressionAttributeValues=values, **page)

        return {c.job_type: c.paused for c in map(control_item, dynamo.pages(fetch))}

    def _remember(self, job_type: str, paused: bool) -> None:
        with self._lock:
            self._cache[job_type] = (self.table.clock.now_ms() + self.table.pause_cache_ms,
                                     paused)

    def _read(self, job_type: str, *, consistent: bool) -> bool | None:
        """The type's pause flag as stored; None without a control item."""
        raw = self.table.get_item(schema.control_key(job_type), consistent=consistent)
        return None if raw is None else control_item(raw).paused

    def _wake_type(self, job_type: str) -> int:
        """Make every ready, unleased job of the type, and of its job trees, due now."""
        values: dict[str, Any] = {":p": av(f"{job_type}#{ACTIVE}#")}
        names = {"#k": J.LIST_SHARD, "#r": J.LIST_KEY}
        ids: list[str] = []
        for lk in schema.list_shards():
            shard_values = {**values, ":lk": av(lk)}
            ids.extend(pk_job_id(item) for item in dynamo.pages(
                lambda start, v=shard_values: self.table.call(  # type: ignore[misc]
                    "query", IndexName=schema.LIST_INDEX,
                    KeyConditionExpression="#k = :lk AND begins_with(#r, :p)",
                    ExpressionAttributeNames=names, ExpressionAttributeValues=v,
                    **dynamo.start_at(start))))
        return self._wake(ids, seen=set())

    def _wake(self, ids: list[str], *, seen: set[str]) -> int:
        woken = 0
        todo = [i for i in dict.fromkeys(ids) if i not in seen]
        seen.update(todo)
        children: list[str] = []
        for item in map(job_item, self.table.batch_get([schema.job_key(i) for i in todo])):
            if item.status.terminal:
                continue
            if item.children_total and item.status == JobStatus.WAITING:
                # Paused with their ancestor.
                children.extend(child_ids_of(self.table.view(item, secrets=False)))
            try:
                transitions.wake(self.table, item.job_id)
                woken += 1
            except Refused:
                continue
        if children:
            woken += self._wake(children, seen=seen)
        return woken
