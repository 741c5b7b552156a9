"""JobStore: the public face of the table — reads, listings, and the operator's actions
(create, cancel, resume, pause). Every write to a job item is a transition
(the transitions package); the pause switch lives in pause.py.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import (
    callbacks,
    codec,
    fxrecords,
    history,
    joins,
    newjob,
    pagetoken,
    schema,
    timeline,
    transitions,
)
from .callbacks import CallbackAnswer
from .dynamo import Item, Refused, TransactionRefused, Update, av
from .errors import InvalidInput, JobConflict, JobFinished, JobNotFound
from .historymode import HistoryMode
from .items import JobItem, job_item
from .pause import PauseSwitch
from .records import HistoryEntry, JobView, Page
from .redrive import redrive as redrive_job
from .schema import CH, FX, IN, H, J
from .status import RUNNABLE, JobStatus
from .table import Table


@dataclass(frozen=True)
class Limits:
    """Per-job runaway guards and retry budget."""

    max_steps: int = 10_000
    max_attempts: int = 3
    deadline_s: float | None = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if (not isinstance(self.max_steps, int) or isinstance(self.max_steps, bool)
                or self.max_steps < 1):
            raise InvalidInput(f"max_steps must be a positive int, got {self.max_steps!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidInput(f"max_attempts must be a positive int, got {self.max_attempts!r}")
        if self.deadline_s is not None and (
            not isinstance(self.deadline_s, int | float) or isinstance(self.deadline_s, bool)
            or not math.isfinite(self.deadline_s) or self.deadline_s <= 0
        ):
            raise InvalidInput(
                f"deadline must be a positive number of seconds or None, got {self.deadline_s!r}"
            )


@dataclass(frozen=True)
class NewJob:
    """A new job's items: the job, and its input's own item when the input is big."""

    job_id: str
    item: Item
    input: Item | None = None


class JobStore(Table):
    """Durable job records in one DynamoDB table (see schema.py for the layout)."""

    @functools.cached_property
    def pauses(self) -> PauseSwitch:
        """The job types' kill switches, as this store (container) sees them."""
        return PauseSwitch(self)

    # -- reads --------------------------------------------------------------------------

    def get_raw(self, job_id: str) -> Item | None:
        """The job item as stored (strongly consistent), or None (absent or expired)."""
        return self.get_item(schema.job_key(job_id))

    def get(self, job_id: str, *, secrets: bool = False) -> JobView:
        """The job's current record (strongly consistent). Tokens redacted unless `secrets`."""
        codec.validate_job_id(job_id)
        item = self.get_job_item(job_id)
        if item is None:
            raise JobNotFound(
                f"no job {job_id!r} in table {self.table_name!r} (it may never have existed "
                "or have expired); check the id with `jobstate list`.",
                job_id=job_id,
            )
        return self.view(item, secrets=secrets)

    def list(
        self,
        job_type: str | None = None,
        status: JobStatus | str | None = None,
        *,
        limit: int = 50,
        next_token: str | None = None,
    ) -> Page:
        """Jobs by type and status through the sharded `by-type` GSI, newest first.

        The index's sort key starts with a bucket: ACTIVE (in flight) and ASLEEP (asleep
        until a time), ordered by creation, and each final status, ordered by finish time;
        it is written when a job is created, sleeps, wakes and finishes, never by a step.
        RUNNING/WAITING/PENDING are told apart on the base item.
        """
        if job_type is not None:
            codec.validate_job_type(job_type)
        st = parse_status(status)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be an int from 1 to 1000, got {limit!r}")
        streams = _streams(job_type, st)
        starts = pagetoken.decode(
            next_token, lambda v: _list_token_ok(v, streams),
            "next_token is not one this store returned for this listing; pass the "
            "Page.next_token unchanged, with the same job type and status.")
        heads: builtins.list[tuple[str, Item]] = []
        exhausted: dict[str, bool] = {}
        for stream, (lk, prefix) in streams.items():
            if starts.get(stream) == "done":
                exhausted[stream] = True
                continue
            resp = self._list_page(lk, prefix, limit, starts.get(stream))
            heads.extend((stream, dict(item)) for item in resp.get("Items", []))
            exhausted[stream] = "LastEvaluatedKey" not in resp
        heads.sort(key=lambda h: _list_order(h[1][J.LIST_KEY]["S"]), reverse=True)
        taken = heads[:limit]
        new_starts: dict[str, Any] = dict(starts)
        for stream, head in taken:
            new_starts[stream] = {k: head[k] for k in _START_NAMES}
        for stream, done in exhausted.items():
            if done and not any(h[0] == stream for h in heads[limit:]):
                new_starts[stream] = "done"
        more = len(heads) > limit or not all(exhausted.get(s, True) for s in streams)
        found = {i.job_id: i for i in map(job_item, self.batch_get(
            [schema.key_of(head) for _, head in taken]))}
        jobs = []
        for _, head in taken:
            item = found.get(schema.job_id_of(head[schema.PK]["S"]))
            if item is None or (st is not None and item.status != st) or (
                    job_type is not None and item.job_type != job_type):
                continue
            jobs.append(self.view(item, secrets=False))
        return Page(jobs=jobs, next_token=pagetoken.encode(new_starts) if more else None)

    def _list_page(self, lk: str, prefix: str, limit: int, start: Any) -> dict[str, Any]:
        key = "#k = :lk" + (" AND begins_with(#r, :p)" if prefix else "")
        return self.call(
            "query", IndexName=schema.LIST_INDEX, KeyConditionExpression=key,
            ExpressionAttributeNames={"#k": J.LIST_SHARD,
                                      **({"#r": J.LIST_KEY} if prefix else {})},
            ExpressionAttributeValues={":lk": av(lk), **({":p": av(prefix)} if prefix else {})},
            ScanIndexForward=False, Limit=limit, **({"ExclusiveStartKey": start} if start else {}))

    def iter_jobs(
        self, job_type: str | None = None, status: JobStatus | str | None = None
    ) -> Iterator[JobView]:
        token: str | None = None
        while True:
            page = self.list(job_type, status, limit=100, next_token=token)
            yield from page.jobs
            if page.next_token is None:
                return
            token = page.next_token

    def history(self, job_id: str) -> builtins.list[HistoryEntry]:
        """The job's history, oldest first: every step, retry, failure, takeover, operator
        action and callback answer (see history.py for what each costs)."""
        job = self.get(job_id)  # a clear JobNotFound first
        return timeline.build(self, job, self.partition(job_id, schema.STEP_PREFIX))

    # -- creating jobs ------------------------------------------------------------------

    def new_job_item(
        self,
        job_type: str,
        input: Any,
        job_id: str | None,
        limits: Limits,
        *,
        history: HistoryMode | bool = "steps",
        cursor: dict[str, Any] | None = None,
        runnable_now: bool = True,
        paused_by: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> NewJob:
        """Validate and encode a new job's items; raises before anything is written."""
        codec.validate_job_type(job_type)
        if job_id is None:
            job_id = f"{job_type}-{uuid.uuid4().hex}"
        codec.validate_job_id(job_id)
        input_json = codec.dumps(input, "input")
        if cursor is not None and not isinstance(cursor, dict):
            # A list/str cursor would be stored, then break every claim (ctx.cursor is a dict).
            raise codec.StateNotSerializable(
                f"cursor must be a dict, got {type(cursor).__name__}; store positions as "
                "e.g. {'offset': 1200}."
            )
        cursor_json = codec.dumps(cursor or {}, "cursor")
        codec.check_budget({"input": input_json, "cursor": cursor_json})
        now = self.clock.now_ms()
        deadline = None if limits.deadline_s is None else now + int(limits.deadline_s * 1000)
        item = newjob.new_job(
            self, job_id, job_type, input_json=input_json, cursor_json=cursor_json,
            max_attempts=limits.max_attempts, max_steps=limits.max_steps,
            deadline_at=deadline, runnable_now=runnable_now, history=history,
            paused_by=paused_by, extra=extra)
        inputs = None
        if J.INPUT not in item:  # too big to ride in every write of the job
            inputs = newjob.input_item(job_id, input_json, item[J.INPUT_HASH]["S"],
                                            fxrecords.expires_at(self, deadline))
        return NewJob(job_id, item, inputs)

    def create(
        self,
        job_type: str,
        input: Any = None,
        job_id: str | None = None,
        limits: Limits | None = None,
        *,
        history: HistoryMode | bool = "steps",
        cursor: dict[str, Any] | None = None,
        _purged: bool = False,
    ) -> tuple[JobView, bool]:
        """Create a PENDING job at step 0. Returns (job, created).

        Idempotent for a given job id: the same type and input return the existing job
        (created=False); a different type or input raises JobConflict. An id whose job
        finished and expired (retention passed) names a new job. A job of a paused type is
        created held (it runs once the type is resumed). `history`: historymode.py."""
        new = self.new_job_item(job_type, input, job_id, limits or Limits(), history=history,
                                cursor=cursor, paused_by=self.pauses.holder([job_type]))
        job_id = new.job_id
        try:
            transitions.create(self, new.item, new.input)
        except Refused as refusal:
            old = refusal.old if refusal.old and refusal.old[schema.SK]["S"] == schema.JOB_SK \
                else self.get_item(schema.job_key(job_id), expired_too=True)
            if old is not None and self.expired(old) and not _purged:
                # Expired (TTL deletes late): that job is gone; clear what is left of it
                # (its effect records must not answer for the new job) and create anew.
                self._purge_expired(job_item(old))
                return self.create(job_type, input, job_id, limits, history=history,
                                   cursor=cursor, _purged=True)
            existing = job_item(old) if old is not None else None
            if existing is None:  # the input of another job, or an expired copy raced us
                raise JobConflict(
                    f"job {job_id!r} exists with a different input, or could not be read "
                    "back; use a new id, or retry.", job_id=job_id) from None
            if existing.input_hash != new.item[J.INPUT_HASH]["S"]:
                raise JobConflict(
                    f"job {job_id!r} already exists with a different type or input; a job id "
                    "names one unit of work. Use a new id, or pass job_id=None for a "
                    "generated one.",
                    job_id=job_id,
                ) from None
            return self.view(existing, secrets=False), False
        return self.view(new.item, secrets=False), True

    def _purge_expired(self, old: JobItem) -> None:
        """Delete what is left of a finished job whose record expired (TTL deletes late).

        Each delete is conditional, so a job re-created with this id meanwhile loses
        nothing: the job item only while it is still expired (a transition), every other
        item only if it predates the old job's last write.
        """
        cut = old.updated_at or 0
        stamps = sorted({FX.STARTED_AT, FX.DONE_AT, CH.JOINED_AT, H.STARTED_AT, H.ENDED_AT})
        newer = " AND ".join(f"NOT (attribute_exists({a}) AND {a} > :cut)" for a in stamps)
        for raw in self.partition(old.job_id):
            if raw[schema.SK]["S"] == schema.JOB_SK:
                with contextlib.suppress(Refused):
                    transitions.purge(self, old.job_id)
                continue
            try:
                self.delete(schema.key_of(raw), {"ConditionExpression": newer,
                                                 "ExpressionAttributeValues": {":cut": av(cut)}})
            except Refused:
                continue

    # -- operator actions ---------------------------------------------------------------

    def cancel(self, job_id: str, reason: str = "cancelled by operator", *,
               by: str | None = None) -> JobView:
        """Cancel a job: its next claim (or its running step's commit) sees it and stops.

        Cancelling an already-cancelled job is a no-op; a finished job raises JobFinished.
        A cancelled child still joins its parent (and releases its queued sibling) in the
        same transaction, or the parent would wait for it forever. Recorded in the job's
        history with `by` (who) and the reason.
        """
        view = self._cancel(job_id, reason)
        history.note(self, view, "cancelled", who=by, detail=reason)
        return view

    def _cancel(self, job_id: str, reason: str) -> JobView:
        codec.validate_job_id(job_id)
        reason = validate_reason(reason)
        item = self.get_job_item(job_id)
        if item is None:
            raise JobNotFound(f"no job {job_id!r} to cancel.", job_id=job_id)
        if item.parent_id is None:
            try:
                return self.view(transitions.cancel(self, job_id, item.job_type, reason),
                                 secrets=False)
            except Refused as refusal:
                return self._cancel_refused(job_id, refusal.old)
        parts = joins.join_actions(self, self.view(item, secrets=False), "CANCELLED", None,
                                   reason)
        first = transitions.action(self, schema.job_key(job_id),
                                   transitions.cancel_update(self, item.job_type, reason))
        try:
            joins.transact_join(self.transact, first, parts)
        except TransactionRefused as refusal:
            if 0 not in refusal.parts:
                raise
            return self._cancel_refused(job_id, refusal.parts[0])
        return self.get(job_id)

    def _cancel_refused(self, job_id: str, old: Item | None) -> JobView:
        if old is None:
            raise JobNotFound(f"no job {job_id!r} to cancel.", job_id=job_id)
        view = self.view(old, secrets=False)
        if view.status == JobStatus.CANCELLED:
            return view
        raise JobFinished(
            f"job {job_id!r} already {view.status.value}; there is nothing to cancel.",
            job_id=job_id,
        )

    def resume(self, job_id: str, *, max_steps: int | None = None,
               deadline_s: float | None = None, by: str | None = None,
               reason: str = "") -> JobView:
        """Make a FAILED or CANCELLED job runnable again from its last committed step.

        The attempt budget starts afresh and the job becomes due now, so the caller (or the
        sweeper) dispatches its step. `max_steps` raises the job's step guard (a job that
        failed it needs a larger one); `deadline_s` gives it a new deadline from now (a
        job past its deadline otherwise gets a fresh window as long as its first). The
        effect records' expiry moves with the deadline. Recorded in its history (`by`).
        """
        view = self._resume(job_id, max_steps, deadline_s)
        history.note(self, view, "resumed", who=by, detail=reason or "resumed")
        return view

    def _resume(self, job_id: str, max_steps: int | None,
                deadline_s: float | None) -> JobView:
        codec.validate_job_id(job_id)
        if max_steps is not None or deadline_s is not None:
            Limits(max_steps=max_steps or 1, deadline_s=deadline_s)  # validates both
        item = self.get_job_item(job_id)
        if item is None:
            raise JobNotFound(f"no job {job_id!r} to resume.", job_id=job_id)
        if item.status in RUNNABLE:
            return self.view(item, secrets=False)
        if item.status == JobStatus.SUCCEEDED:
            raise JobFinished(f"job {job_id!r} succeeded; there is nothing to resume.",
                              job_id=job_id)
        guard = item.max_steps
        if max_steps is not None:
            if max_steps <= item.step:
                raise InvalidInput(
                    f"max_steps={max_steps} would stop job {job_id!r} again at once: it is at "
                    f"step {item.step}; pass a larger one."
                )
            guard = max_steps
        elif guard is not None and item.step >= guard:
            raise InvalidInput(
                f"job {job_id!r} is at step {item.step}, its max_steps guard ({guard}); "
                "resuming it as is would fail it again. Pass a larger max_steps "
                "(`jobstate resume JOB --max-steps N`) if its stop condition is right."
            )
        now = self.clock.now_ms()
        deadline = item.deadline_at
        if deadline_s is not None:
            deadline = now + int(deadline_s * 1000)
        elif item.deadline_at is not None and item.deadline_at <= now:
            # A resumed job gets a fresh deadline window of the same length.
            span = item.deadline_at - (item.created_at or now)
            deadline = now + max(span, 60_000)
        try:
            raw = transitions.resume(self, item, max_steps=guard, deadline_at=deadline)
        except Refused:
            return self.get(job_id)
        if deadline != item.deadline_at:
            fxrecords.extend_expiry(self, job_id, deadline)
            if item.input is None:  # its input item lives as long as its effects
                ttl = fxrecords.expires_at(self, deadline)
                upd = Update().remove(IN.EXPIRES) if ttl is None else Update().set(
                    IN.EXPIRES, ttl)
                with contextlib.suppress(Refused):
                    self.update(schema.input_key(job_id), upd.where(upd.exists(schema.PK)))
        return self.view(raw, secrets=False)

    def redrive(self, job_id: str, *, from_step: int | None = None, by: str | None = None,
                reason: str = "") -> JobView:
        """Run a FAILED job again from its last committed step, or from `from_step` if history
        kept its checkpoint; effects DONE stay skipped (redrive.py: what can be redriven)."""
        return redrive_job(self, job_id, is_paused=lambda t: self.is_paused(t, fresh=True),
                           from_step=from_step, by=by, reason=reason)

    # -- pause / resume a job type --------------------------------------------------------

    # -- callbacks (issue 18): answers from senders that cannot invoke the function ----------

    def complete_callback(self, token: str, result: Any = None) -> CallbackAnswer:
        """Record callback `token`'s success; the waiting job is due now (the next sweep
        sends it). `App.complete_callback` sends it at once."""
        return callbacks.complete(self, token, result)

    def fail_callback(self, token: str, error: str) -> CallbackAnswer:
        """Record callback `token`'s failure; the waiting job is due now."""
        return callbacks.fail(self, token, error)

    def heartbeat_callback(self, token: str) -> CallbackAnswer:
        """Callback `token`'s sender is still at work: its heartbeat timeout restarts."""
        return callbacks.heartbeat(self, token)

    def set_paused(self, job_type: str, paused: bool, reason: str = "", *,
                   by: str | None = None) -> int:
        """Pause or resume a job type (see pause.PauseSwitch.switch). Returns how many jobs
        a resume made due (0 when pausing). Recorded in the history of its jobs (`by`)."""
        if reason:
            validate_reason(reason)
        n = self.pauses.switch(job_type, paused, reason)
        history.type_note(self, job_type, "paused" if paused else "resumed", who=by,
                          detail=reason or ("paused" if paused else "resumed"))
        return n

    def pause_state(self, job_type: str) -> bool | None:
        """True if the type is paused, False if it was paused and resumed since, None if
        it was never paused (no control item: an unknown or mistyped type). A strong read,
        for operators; steps use the cached `is_paused`."""
        return self.pauses.state(job_type)

    def is_paused(self, job_type: str, *, fresh: bool = False) -> bool:
        """Whether the type is paused; cached per container for `pause_cache_s`."""
        return self.pauses.is_paused(job_type, fresh=fresh)

    def paused_types(self) -> dict[str, bool]:
        """Control items of every type that was ever paused (a small Scan; operator use)."""
        return self.pauses.types()


# -- helpers --------------------------------------------------------------------------------


MAX_REASON_CHARS = 1000


def validate_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput(f"a cancel reason must be a non-empty string, got {reason!r:.80}")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput(f"a cancel reason is at most {MAX_REASON_CHARS} characters, got "
                           f"{len(reason)}; keep it to a sentence.")
    return reason


def parse_status(status: JobStatus | str | None) -> JobStatus | None:
    if status is None:
        return None
    try:
        return JobStatus(status)
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise InvalidInput(f"status must be one of {names}, got {status!r:.40}") from None


def _list_order(ls: str) -> str:
    # Newest first across shards: order by the timestamp, then the rest of the key.
    _, _, ts = ls.rpartition("#")
    return ts + ls


_START_NAMES = {schema.PK, schema.SK, J.LIST_SHARD, J.LIST_KEY}
_BUCKETS = (schema.ACTIVE, schema.ASLEEP, schema.PAUSED,
            *(s.value for s in JobStatus if s.terminal))


def _streams(job_type: str | None, status: JobStatus | None) -> dict[str, tuple[str, str]]:
    """The index ranges a listing reads, by name: (shard, sort-key prefix) pairs."""
    if status is None:
        buckets: tuple[str, ...] = _BUCKETS if job_type is not None else ("",)
    elif status.terminal:
        buckets = (status.value,)
    else:
        buckets = (schema.ACTIVE, schema.ASLEEP, schema.PAUSED)
    out = {}
    for lk in schema.list_shards():
        for bucket in buckets:
            prefix = schema.list_prefix(bucket, job_type) if bucket else ""
            out[f"{lk}|{bucket}"] = (lk, prefix)
    return out


def _list_token_ok(value: dict[str, Any], streams: dict[str, tuple[str, str]]) -> bool:
    """A `list` token: per range of this listing, "done" or a job item's index keys in
    that range."""
    for stream, start in value.items():
        if stream not in streams:
            return False
        if start == "done":
            continue
        lk, prefix = streams[stream]
        text = pagetoken.string_key(start, _START_NAMES)
        if text is None or not (
                text[J.LIST_SHARD] == lk and text[schema.SK] == schema.JOB_SK
                and text[schema.PK].startswith(schema.JOB_PREFIX)
                and text[J.LIST_KEY].startswith(prefix)):
            return False
    return True
