"""Side effects recorded so they are not redone: `ctx.once` and `ctx.once_batch`.

An effect record `FX#<key>` is put STARTED (owner = this lease) before `fn` runs and
updated to DONE with the result after. Happy path: 2 writes, 0 reads. If a later attempt
finds it STARTED by another owner (one that died, or whose `fn` raised), the outcome is
unknown: AT_LEAST_ONCE runs `fn` again, AT_MOST_ONCE asks `reconcile` or parks the job
with EffectOutcomeUnknown. Under AT_MOST_ONCE an exception from `fn` leaves the outcome
unknown too (a timeout after the far side acted is an exception); `fn` raises
`EffectNotDone` to say "this did not happen" and be run again by the retry.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import codec, faults, hooks, observe, schema
from .dynamo import Refused, TransactionRefused
from .errors import (
    EffectNotDone,
    EffectOutcomeUnknown,
    EffectResultNotStored,
    InvalidInput,
    JobStateError,
    LeaseLost,
    StoreUnavailable,
)
from .fxrecords import (
    DONE,
    NOT_STORED,
    STARTED,
    absent,
    decode_result,
    done_update,
    encode_result,
    mine,
    started_item,
    take_over_update,
    validate_key,
)
from .items import EffectItem, effect_item
from .lease import Lease
from .serdes import JSON, Serdes
from .signals import Deferred
from .status import NOT_DONE, Semantics
from .table import Table
from .transitions import request_token

BATCH_CHUNK = 25  # once_batch: keys started, run and recorded together (crash blast radius)
TXN_BYTES = 3_500_000  # a DONE transaction stays under TransactWriteItems' 4 MB
PERSIST_ATTEMPTS = 6  # a settling write is tried this often through a short outage ...
PERSIST_RESERVE_MS = 1_000  # ... while this much of the invocation is left after the pause
ENCODE_ATTEMPTS = 3  # a cipher that fails now and then (KMS throttling) is tried again

T = TypeVar("T")
Call = tuple[Callable[..., Any], Sequence[Any], Mapping[str, Any]]  # fn, args, kwargs


def _how(record: EffectItem) -> str:
    """What is known of how an effect was left STARTED, for an operator."""
    raised = record.last_error
    if raised and raised.startswith(NOT_STORED):
        return (f"its call returned, so it happened, but its result could not be stored "
                f"({raised[len(NOT_STORED):]}): record it with its result")
    if raised:
        return f"its call raised {raised}"
    return (f"the attempt that started it (owner {record.owner}) ended without recording an "
            "outcome: its invocation died or timed out, or DynamoDB failed its writes")


@dataclass
class Effects:
    """The effect operations of one step (bound to its lease).

    `time_left_ms` is the invocation's remaining time (writes that settle an effect are
    retried through a short DynamoDB outage while it lasts); `reconcile_guard_ms` is how
    long past an earlier owner's lease an at-most-once effect it left STARTED is still
    treated as possibly in flight (clock skew between hosts).
    """

    table: Table
    lease: Lease
    time_left_ms: Callable[[], int] = field(default=lambda: 10_000)
    reconcile_guard_ms: int = 0
    effect_hooks: Sequence[hooks.EffectHook] = ()
    serdes: Serdes = JSON  # the job type's (serdes.py); a call may choose its own per key
    # Keys whose `fn` is running right now (a nested `once` with the same key is a bug),
    # and keys whose `fn` was called in this step but not recorded DONE (it raised, or the
    # DONE write failed): their outcome is unknown, like a crash's, so a second `once` of
    # the key in this step must not take the STARTED record for its own fresh put.
    _running: set[str] = field(default_factory=set)
    _unknown: set[str] = field(default_factory=set)
    _serdes_of: dict[str, Serdes] = field(default_factory=dict)

    def _key(self, key: str) -> dict[str, Any]:
        return schema.effect_key(self.lease.job_id, key)

    def _notify(self, event: str, key: str, sem: Semantics, **extra: Any) -> None:
        if self.effect_hooks:
            lease = self.lease
            hooks.notify(self.effect_hooks, event, {
                "job_id": lease.job_id, "job_type": lease.job_type, "step": lease.step,
                "key": key, "attempt": lease.job.attempt + 1, "semantics": sem.value, **extra})

    def _sd(self, key: str) -> Serdes:
        return self._serdes_of.get(key, self.serdes)

    def once(self, key: str, call: Call, semantics: Semantics,
             reconcile: Callable[..., Any] | None, serdes: Serdes | None = None) -> Any:
        validate_key(key)
        if serdes is not None:
            self._serdes_of[key] = serdes
        sem = Semantics(semantics)
        if key in self._running:
            raise InvalidInput(
                f"effect {key!r} is already running in this step (a ctx.once nested in its "
                "own fn?); use a distinct key per side effect."
            )
        now = self.table.clock.now_ms()
        try:
            self.table.put(started_item(self.table, self.lease, key, sem, now), absent())
        except StoreUnavailable:
            # The put may have been applied with its answer lost; `fn` was not called, so
            # take the record back, or the retry would think its outcome unknown.
            self._settle(key, self._forget, key)
            raise
        except Refused as refusal:
            # The record as the put's condition saw it (read back if the engine did not
            # return it; gone meanwhile, it is put afresh).
            raw = refusal.old or self.table.get_item(self._key(key))
            if raw is None:
                return self.once(key, call, sem, reconcile)
            old = effect_item(raw)
            if self._own_retried_put(old):
                # botocore sent our put again after its response was lost: the STARTED
                # record is this call's own, and `fn` has not run.
                return self._run(key, call, sem)
            return self._existing(old, call, sem, reconcile)
        return self._run(key, call, sem)

    def _own_retried_put(self, old: EffectItem) -> bool:
        return (old.state == STARTED and old.owner == self.lease.owner
                and old.key not in self._unknown)

    def _existing(self, old: EffectItem, call: Call, sem: Semantics,
                  reconcile: Callable[..., Any] | None) -> Any:
        if old.state == DONE:
            value = decode_result(self.table, old, self.lease.job_id, self._sd(old.key))
            self._notify(hooks.REPLAYED, old.key, sem)
            return value
        key, owner = old.key, old.owner
        # STARTED by another owner (it died mid-effect, or its fn raised), or by this one
        # earlier in the step when fn raised: it may or may not have happened.
        if sem == Semantics.AT_MOST_ONCE:
            if reconcile is None:
                job_id = self.lease.job_id
                raise EffectOutcomeUnknown(
                    f"effect {key!r} of job {job_id!r} was started but never recorded as "
                    f"done ({_how(old)}); it may or may not have happened, and at-most-once "
                    "forbids running it again. Check the external system, then run "
                    f"`jobstate effect done {job_id} '{key}' --result JSON` (it happened) or "
                    f"`jobstate effect retry {job_id} '{key}'` (it did not), and `jobstate "
                    f"resume {job_id}`. Pass reconcile=... to ctx.once to decide this "
                    "automatically, or raise jobstate.EffectNotDone from fn when a call "
                    "certainly did not happen.", job_id=job_id, key=key)
            if owner != self.lease.owner:
                self._wait_out(old)
            _, args, kwargs = call
            outcome = reconcile(*args, **kwargs)
            if outcome is not NOT_DONE:
                result_json = encode_result(self.table, outcome, key, job_id=self.lease.job_id,
                                            serdes=self._sd(key))
                self._persist(self._write_done, key, result_json, owner)
                self._unknown.discard(key)
                self._notify(hooks.SUCCEEDED, key, sem, reconciled=True)
                return outcome
        if owner != self.lease.owner:
            self._take_over(key, owner)
        self._unknown.discard(key)
        return self._run(key, call, sem)

    def _wait_out(self, old: EffectItem) -> None:
        """Before `reconcile` decides an earlier owner's at-most-once effect: that owner
        may still be running its call if its clock is behind ours. Its lease (by its own
        clock) plus the guard must be over by ours, or the step is deferred until then.

        Only a take-over can meet a live call: a step whose claim found no lease knows every
        earlier attempt ended (each released its lease after its step function returned),
        and an effect whose call raised (`last_error`) is over. A record written before
        leases were recorded on effects carries no `lease_until` and is not guarded."""
        if old.lease_until is None or not self.lease.takeover or old.last_error:
            return
        ready_at = old.lease_until + self.reconcile_guard_ms
        if self.table.clock.now_ms() > ready_at:
            return
        raise Deferred(ready_at + 1, f"effect {old.key!r} may still be in flight under its "
                                     f"earlier owner until {ready_at} ms epoch")

    def _take_over(self, key: str, old_owner: str) -> None:
        upd = take_over_update(self.lease, old_owner, self.table.clock.now_ms())
        try:
            self.table.update(self._key(key), upd)
        except Refused as refusal:
            old = effect_item(refusal.old) if refusal.old else None
            if old is not None and old.state == STARTED and old.owner == self.lease.owner:
                return  # botocore resent our take-over after its response was lost
            raise LeaseLost(
                f"effect {key!r} changed hands while this step tried to take it over; another "
                "invocation holds the job. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _call(self, key: str, call: Call, sem: Semantics) -> Any:
        """Run `fn` for a STARTED record of ours; on an exception, settle the record."""
        faults.point("effect_started", job_id=self.lease.job_id, key=key)
        observe.count("Effects")
        self._running.add(key)
        self._unknown.add(key)  # until DONE is recorded
        fn, args, kwargs = call
        self._notify(hooks.STARTED, key, sem)
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            self._notify(hooks.FAILED, key, sem, error=type(exc).__name__)
            if sem == Semantics.AT_LEAST_ONCE or isinstance(exc, EffectNotDone):
                self._settle(key, self._forget, key)  # not done (or allowed again)
            else:
                self._settle(key, self._mark_unknown, key, exc)
            raise
        # A BaseException is a kill or a cancel: leave STARTED, the outcome is unknown.
        finally:
            self._running.discard(key)

    def _run(self, key: str, call: Call, sem: Semantics) -> Any:
        result = self._call(key, call, sem)
        faults.point("effect_called", job_id=self.lease.job_id, key=key)
        result_json = self._encode(key, result)
        self._persist(self._write_done, key, result_json, self.lease.owner)
        self._unknown.discard(key)
        self._notify(hooks.SUCCEEDED, key, sem)
        return result

    def _encode(self, key: str, result: Any) -> str:
        """The result's stored form. If it cannot be had, the effect stays STARTED (it
        happened, its result is unknown here): never DONE with a result it did not give."""
        for attempt in range(1, ENCODE_ATTEMPTS + 1):
            try:
                return encode_result(self.table, result, key, job_id=self.lease.job_id,
                                     serdes=self._sd(key))
            except JobStateError as exc:  # not JSON, too large: no retry can fix it
                self._settle(key, self._mark_unknown, key, exc, NOT_STORED)
                raise
            except Exception as exc:  # the cipher (KMS throttled, access denied, ...)
                if attempt < ENCODE_ATTEMPTS:
                    self.table.clock.sleep(0.05 * 2 ** attempt)
                    continue
                self._settle(key, self._mark_unknown, key, exc, NOT_STORED)
                raise EffectResultNotStored(
                    f"effect {key!r} of job {self.lease.job_id!r} ran, but its result could "
                    f"not be encrypted ({type(exc).__name__}, {ENCODE_ATTEMPTS} tries): it "
                    "is left STARTED, so the retry asks reconcile, parks the job "
                    "(at-most-once) or runs it again (at-least-once). Fix the cipher.",
                    job_id=self.lease.job_id, key=key,
                ) from exc
        raise AssertionError("unreachable")

    def _persist(self, write: Callable[..., T], *args: Any) -> T:
        """A write that settles an effect, tried again through a short DynamoDB outage
        while the invocation has time: what it records keeps a later attempt from taking
        an effect that never ran (or whose result is known) for an unknown outcome."""
        for attempt in range(1, PERSIST_ATTEMPTS + 1):
            try:
                return write(*args)
            except StoreUnavailable:
                pause_ms = 100 * 2 ** (attempt - 1)
                if (attempt == PERSIST_ATTEMPTS
                        or self.time_left_ms() - pause_ms < PERSIST_RESERVE_MS):
                    raise
                self.table.clock.sleep(pause_ms / 1000)
        raise AssertionError("unreachable")

    def _settle(self, key: str, write: Callable[..., Any], *args: Any) -> None:
        """Settle a record on the way out of a failure (persisting through a short outage);
        the failure, not this, is what the caller raises."""
        try:
            self._persist(write, *args)
        except StoreUnavailable as exc:
            observe.event("effect_unsettled", logging.WARNING, job_id=self.lease.job_id,
                          step=self.lease.step, detail=f"effect {key!r}: {type(exc).__name__}")

    def _write_done(self, key: str, result_json: str, expect_owner: str) -> None:
        upd = done_update(self.lease, result_json, self.table.clock.now_ms(), expect_owner)
        try:
            self.table.update(self._key(key), upd)
        except Refused as refusal:
            old = effect_item(refusal.old) if refusal.old else None
            if old is not None and old.state == DONE and old.owner == self.lease.owner:
                return  # our DONE write was sent again after its response was lost
            raise LeaseLost(
                f"effect {key!r} of job {self.lease.job_id!r} is no longer owned by this "
                "invocation; its result was not recorded. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _forget(self, key: str) -> None:
        upd = mine(self.lease)
        with contextlib.suppress(Refused):
            self.table.delete(self._key(key), upd.kwargs())

    def _mark_unknown(self, key: str, exc: BaseException, prefix: str = "") -> None:
        """fn raised under at-most-once (or its result could not be stored): keep STARTED,
        note what was raised (its type only: an exception's text may carry secrets)."""
        self._unknown.add(key)
        upd = mine(self.lease).set(schema.FX.LAST_ERROR, prefix + type(exc).__name__)
        with contextlib.suppress(Refused):
            self.table.update(self._key(key), upd)

    # -- batches --------------------------------------------------------------------------

    def once_batch(self, calls: Mapping[str, Sequence[Any]], fn: Callable[..., Any],
                   semantics: Semantics, reconcile: Callable[..., Any] | None,
                   serdes: Serdes | None = None) -> dict[str, Any]:
        """Run `fn(*calls[key])` once per key, in about 3 round trips per 25 keys.

        Keys are started, run and recorded `BATCH_CHUNK` at a time, so a crash leaves at
        most one chunk's outcome unknown.
        """
        keys = [validate_key(k) for k in calls]
        if len(set(keys)) != len(keys):
            raise InvalidInput("once_batch keys must be distinct.")
        if serdes is not None:
            self._serdes_of.update(dict.fromkeys(keys, serdes))
        sem = Semantics(semantics)
        for k in keys:
            if k in self._running:
                raise InvalidInput(f"effect {k!r} is already running in this step.")
        results: dict[str, Any] = {}
        found = {r.key: r for r in map(effect_item, self.table.batch_get(
            [self._key(k) for k in keys]))}
        fresh: list[str] = []
        for k in keys:
            record = found.get(k)
            if record is None:
                fresh.append(k)
            elif record.state == DONE:
                results[k] = decode_result(self.table, record, self.lease.job_id, self._sd(k))
                self._notify(hooks.REPLAYED, k, sem)
            else:  # STARTED and not done: the single-key path knows what to do
                results[k] = self._existing(record, (fn, tuple(calls[k]), {}), sem, reconcile)
        for i in range(0, len(fresh), BATCH_CHUNK):
            self._run_chunk(fresh[i:i + BATCH_CHUNK], calls, fn, sem, reconcile, results)
        return {k: results[k] for k in keys}

    def _run_chunk(self, chunk: list[str], calls: Mapping[str, Sequence[Any]],
                   fn: Callable[..., Any], sem: Semantics,
                   reconcile: Callable[..., Any] | None, results: dict[str, Any]) -> None:
        now = self.table.clock.now_ms()
        actions = [{"Put": {"TableName": self.table.table_name,
                            "Item": started_item(self.table, self.lease, k, sem, now),
                            **absent()}} for k in chunk]
        try:
            self.table.transact(actions)
        except StoreUnavailable:
            # Maybe applied, answer lost; no fn was called: take the records back.
            self._settle(chunk[0], self._forget_all, chunk)
            raise
        except TransactionRefused:
            for k in chunk:  # something raced us: settle each key on its own
                results[k] = self.once(k, (fn, tuple(calls[k]), {}), sem, reconcile)
            return
        done: list[tuple[str, str]] = []
        failure: BaseException | None = None
        for n, k in enumerate(chunk):
            try:
                value = self._call(k, (fn, tuple(calls[k]), {}), sem)
                faults.point("effect_called", job_id=self.lease.job_id, key=k)
                done.append((k, self._encode(k, value)))  # unstorable: left STARTED
            except Exception as exc:
                failure = exc
                self._settle(k, self._forget_all, chunk[n + 1:])  # certainly not run
                break
            results[k] = value
        self._persist(self._record_done, done, now)
        for k, _ in done:
            self._unknown.discard(k)
            self._notify(hooks.SUCCEEDED, k, sem)
        if failure is not None:
            raise failure

    def _forget_all(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 100):
            part = keys[i:i + 100]
            actions = [{"Delete": {"TableName": self.table.table_name, "Key": self._key(k),
                                   **mine(self.lease).kwargs()}} for k in part]
            if not actions:
                continue
            try:
                self.table.transact(actions)
            except TransactionRefused:
                for k in part:
                    self._forget(k)

    def _record_done(self, done: list[tuple[str, str]], now: int) -> None:
        """DONE for each key, in transactions of at most 100 actions and ~3.5 MB."""
        batch: list[tuple[str, dict[str, Any]]] = []
        size = 0
        for k, rj in [*done, ("", "")]:
            item_size = codec.size_of(rj) + len(k) + 200
            if k == "" or len(batch) == 100 or (batch and size + item_size > TXN_BYTES):
                if batch:
                    self._transact_done(batch)
                batch, size = [], 0
                if k == "":
                    break
            upd = done_update(self.lease, rj, now, self.lease.owner)
            batch.append((k, {"Update": {"TableName": self.table.table_name,
                                         "Key": self._key(k), **upd.kwargs()}}))
            size += item_size

    def _transact_done(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            self.table.transact([a for _, a in batch], token=request_token())
        except TransactionRefused:
            if self._all_done_by_me([k for k, _ in batch]):
                return  # applied before; this is a resend after a lost answer
            raise LeaseLost(
                f"effects of job {self.lease.job_id!r} changed hands during a batch; "
                "their results were not recorded. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _all_done_by_me(self, keys: list[str]) -> bool:
        records = [effect_item(raw) for raw in self.table.batch_get(
            [self._key(k) for k in keys])]
        return len(records) == len(keys) and all(
            r.state == DONE and r.owner == self.lease.owner for r in records)
