"""Side effects recorded so they are not redone: `ctx.once` and `ctx.once_batch`.

An effect item `FX#<key>` is put STARTED (owner = this lease) before `fn` runs and
updated to DONE with the result after. Happy path: 2 writes, 0 reads. If a later attempt
finds it STARTED by another owner (one that died, or whose `fn` raised), the outcome is
unknown: AT_LEAST_ONCE runs `fn` again, AT_MOST_ONCE asks `reconcile` or parks the job
with EffectOutcomeUnknown. Under AT_MOST_ONCE an exception from `fn` leaves the outcome
unknown too (a timeout after the far side acted is an exception); `fn` raises
`EffectNotDone` to say "this did not happen" and be run again by the retry.

Results are JSON, size-checked, and encrypted with the store's cipher when it has one
(they often hold the very tokens a job keeps, such as an external job id).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from . import codec, faults, observe, redact, schema
from .dynamo import CONDITION_FAILED, TRANSACTION_CANCELLED, av, error_code, old_item
from .errors import (
    EffectNotDone,
    EffectOutcomeUnknown,
    EffectResultNotStored,
    InvalidInput,
    JobNotFound,
    JobStateError,
    LeaseLost,
    StateTooLarge,
    StoreUnavailable,
)
from .protocol import Lease
from .signals import Deferred
from .status import NOT_DONE, Semantics
from .store import EFFECT_RESULT, JobStore

STARTED = "STARTED"
DONE = "DONE"
MAX_KEY_CHARS = 512
RESULT_BUDGET_BYTES = 300 * 1024
BATCH_CHUNK = 25  # once_batch: keys started, run and recorded together (crash blast radius)
TXN_BYTES = 3_500_000  # a DONE transaction stays under TransactWriteItems' 4 MB
ENCRYPTED_PREFIX = "enc:"
NOT_STORED = "ResultNotStored:"  # last_error of an effect whose call returned, result unstored
PERSIST_ATTEMPTS = 6  # a settling write is tried this often through a short outage ...
PERSIST_RESERVE_MS = 1_000  # ... while this much of the invocation is left after the pause
ENCODE_ATTEMPTS = 3  # a cipher that fails now and then (KMS throttling) is tried again

T = TypeVar("T")


def validate_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidInput(f"effect key must be a non-empty string, got {key!r:.80}")
    if len(key) > MAX_KEY_CHARS or len(key.encode("utf-8", "surrogatepass")) > 1000:
        raise InvalidInput(
            f"effect key is {len(key)} characters; keep it under {MAX_KEY_CHARS} (hash long "
            "natural keys, e.g. jobstate.stable_id(...))."
        )
    if not key.isprintable():
        raise InvalidInput(f"effect key {key!r:.80} has non-printable characters; use plain text.")
    return key


def _key(job_id: str, key: str) -> dict[str, Any]:
    return {"pk": av(schema.job_pk(job_id)), "sk": av(schema.effect_sk(key))}


def expires_at(store: JobStore, deadline_at: int | None) -> int | None:
    """TTL of a job's effect records: `retention` after the job's deadline.

    The job cannot run past its deadline (a resume moves the deadline and these TTLs
    with it), so a DONE record never expires while the job can still ask for it. A job
    with no deadline keeps its effect records until they are deleted by hand.
    """
    if deadline_at is None:
        return None
    return deadline_at // 1000 + store.retention_s


def _started_item(store: JobStore, lease: Lease, key: str, sem: Semantics,
                  now: int) -> dict[str, Any]:
    item = {
        **_key(lease.job_id, key),
        "state": av(STARTED), "owner": av(lease.owner), "step": av(lease.step),
        "started_at": av(now), "semantics": av(sem.value), "runs": av(1),
        # The owner's lease expiry (its clock): an at-most-once take-over waits past it.
        "lease_until": av(lease.expires_at),
    }
    ttl = expires_at(store, lease.job.deadline_at)
    if ttl is not None:
        item["expires_at"] = av(max(ttl, now // 1000 + store.retention_s))
    return item


def encode_result(store: JobStore, value: Any, key: str, *, job_id: str) -> str:
    """The stored form of an effect's result: JSON, encrypted if the store has a cipher
    (bound to the job when the cipher takes a context)."""
    text = codec.dumps(value, f"result of effect {key!r}")
    if store.cipher is not None and value is not None:
        text = ENCRYPTED_PREFIX + store.cipher.seal(
            text, store.cipher_context(job_id, EFFECT_RESULT))
    if codec.size_of(text) > RESULT_BUDGET_BYTES:
        raise StateTooLarge(
            f"result of effect {key!r} is {codec.size_of(text)} bytes stored; effect results "
            f"are limited to {RESULT_BUDGET_BYTES} bytes (DynamoDB items are at most 400 KB). "
            "Return an id or an S3 key instead of the data."
        )
    return text


def decode_result(store: JobStore, item: Mapping[str, Any], job_id: str) -> Any:
    text = item.get("result", {}).get("S")
    if text:
        text = store._decrypt(text, what=f"an effect result of job {job_id!r}", job_id=job_id,
                              kind=EFFECT_RESULT)
    return codec.loads(text)


def _done_update(lease: Lease, key: str, result_json: str, now: int,
                 expect_owner: str) -> dict[str, Any]:
    return {
        "Key": _key(lease.job_id, key),
        "UpdateExpression": "SET #state = :done, #result = :r, done_at = :now, #owner = :me "
                            "REMOVE last_error",
        "ConditionExpression": "#state = :started AND #owner = :expect",
        "ExpressionAttributeNames": {"#state": "state", "#result": "result", "#owner": "owner"},
        "ExpressionAttributeValues": {
            ":done": av(DONE), ":r": av(result_json), ":now": av(now), ":me": av(lease.owner),
            ":started": av(STARTED), ":expect": av(expect_owner),
        },
    }


def _mine(lease: Lease, key: str) -> dict[str, Any]:
    """Condition: the effect is STARTED and owned by this lease."""
    return {
        "Key": _key(lease.job_id, key),
        "ConditionExpression": "#state = :started AND #owner = :me",
        "ExpressionAttributeNames": {"#state": "state", "#owner": "owner"},
        "ExpressionAttributeValues": {":started": av(STARTED), ":me": av(lease.owner)},
    }


def _how(old: Mapping[str, Any], owner: str) -> str:
    """What is known of how an effect was left STARTED, for an operator."""
    raised = old.get("last_error", {}).get("S")
    if raised and raised.startswith(NOT_STORED):
        return (f"its call returned, so it happened, but its result could not be stored "
                f"({raised[len(NOT_STORED):]}): record it with its result")
    if raised:
        return f"its call raised {raised}"
    return (f"the attempt that started it (owner {owner}) ended without recording an "
            "outcome: its invocation died or timed out, or DynamoDB failed its writes")


@dataclass
class Effects:
    """The effect operations of one step (bound to its lease).

    `time_left_ms` is the invocation's remaining time (writes that settle an effect are
    retried through a short DynamoDB outage while it lasts); `reconcile_guard_ms` is how
    long past an earlier owner's lease an at-most-once effect it left STARTED is still
    treated as possibly in flight (clock skew between hosts).
    """

    store: JobStore
    lease: Lease
    time_left_ms: Callable[[], int] = field(default=lambda: 10_000)
    reconcile_guard_ms: int = 0
    # Keys whose `fn` is running right now (a nested `once` with the same key is a bug),
    # and keys whose `fn` was called in this step but not recorded DONE (it raised, or the
    # DONE write failed): their outcome is unknown, like a crash's, so a second `once` of
    # the key in this step must not take the STARTED record for its own fresh put.
    _running: set[str] = field(default_factory=set)
    _unknown: set[str] = field(default_factory=set)

    def once(
        self,
        key: str,
        fn: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        semantics: Semantics,
        reconcile: Callable[..., Any] | None,
    ) -> Any:
        validate_key(key)
        sem = Semantics(semantics)
        if key in self._running:
            raise InvalidInput(
                f"effect {key!r} is already running in this step (a ctx.once nested in its "
                "own fn?); use a distinct key per side effect."
            )
        now = self.store.clock.now_ms()
        try:
            self.store.call(
                "put_item",
                Item=_started_item(self.store, self.lease, key, sem, now),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except StoreUnavailable:
            # The put may have been applied with its answer lost; `fn` was not called, so
            # take the record back, or the retry would think its outcome unknown.
            self._settle(key, self._forget, key)
            raise
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            old = old_item(exc) or {}
            if self._own_retried_put(key, old):
                # botocore sent our put again after its response was lost: the STARTED
                # record is this call's own, and `fn` has not run.
                return self._run(key, fn, args, kwargs, sem)
            return self._existing(key, old, fn, args, kwargs, sem, reconcile)
        return self._run(key, fn, args, kwargs, sem)

    def _own_retried_put(self, key: str, old: Mapping[str, Any]) -> bool:
        return (old.get("state", {}).get("S") == STARTED
                and old.get("owner", {}).get("S") == self.lease.owner
                and key not in self._unknown)

    def _existing(self, key: str, old: Mapping[str, Any], fn: Callable[..., Any],
                  args: Sequence[Any], kwargs: Mapping[str, Any], sem: Semantics,
                  reconcile: Callable[..., Any] | None) -> Any:
        if old.get("state", {}).get("S") == DONE:
            return decode_result(self.store, old, self.lease.job_id)
        owner = old.get("owner", {}).get("S", "")
        # STARTED by another owner (it died mid-effect, or its fn raised), or by this one
        # earlier in the step when fn raised: it may or may not have happened.
        if sem == Semantics.AT_MOST_ONCE:
            if reconcile is None:
                raise EffectOutcomeUnknown(
                    f"effect {key!r} of job {self.lease.job_id!r} was started but never "
                    f"recorded as done ({_how(old, owner)}); it may or may not have "
                    "happened, and at-most-once forbids running it again. Check the "
                    f"external system, then run `jobstate effect done {self.lease.job_id} "
                    f"'{key}' --result JSON` (it happened) or `jobstate effect retry "
                    f"{self.lease.job_id} '{key}'` (it did not), and `jobstate resume "
                    f"{self.lease.job_id}`. Pass reconcile=... to ctx.once to decide this "
                    "automatically, or raise jobstate.EffectNotDone from fn when a call "
                    "certainly did not happen.",
                    job_id=self.lease.job_id,
                    key=key,
                )
            if owner != self.lease.owner:
                self._wait_out(key, old)
            outcome = reconcile(*args, **kwargs)
            if outcome is not NOT_DONE:
                self._write_done(key, outcome, owner)
                self._unknown.discard(key)
                return outcome
        if owner != self.lease.owner:
            self._take_over(key, owner)
        self._unknown.discard(key)
        return self._run(key, fn, args, kwargs, sem)

    def _wait_out(self, key: str, old: Mapping[str, Any]) -> None:
        """Before `reconcile` decides an earlier owner's at-most-once effect: that owner
        may still be running its call if its clock is behind ours. Its lease (by its own
        clock) plus the guard must be over by ours, or the step is deferred until then.

        Only a take-over can meet a live call: a step whose claim found no lease knows every
        earlier attempt ended (each released its lease after its step function returned),
        and an effect whose call raised (`last_error`) is over. A record written before
        leases were recorded on effects carries no `lease_until` and is not guarded."""
        until = old.get("lease_until", {}).get("N")
        if until is None or not self.lease.takeover or "last_error" in old:
            return
        ready_at = int(until) + self.reconcile_guard_ms
        now = self.store.clock.now_ms()
        if now > ready_at:
            return
        raise Deferred(ready_at + 1, f"effect {key!r} may still be in flight under its "
                                     f"earlier owner until {ready_at} ms epoch")

    def _take_over(self, key: str, old_owner: str) -> None:
        now = self.store.clock.now_ms()
        try:
            self.store.call(
                "update_item",
                Key=_key(self.lease.job_id, key),
                UpdateExpression="SET #owner = :me, #step = :step, started_at = :now, "
                                 "lease_until = :until ADD runs :one",
                ConditionExpression="#state = :started AND #owner = :old",
                ExpressionAttributeNames={"#owner": "owner", "#state": "state", "#step": "step"},
                ExpressionAttributeValues={
                    ":me": av(self.lease.owner), ":step": av(self.lease.step), ":now": av(now),
                    ":until": av(self.lease.expires_at), ":one": av(1),
                    ":started": av(STARTED), ":old": av(old_owner),
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            old = old_item(exc) or {}
            if (old.get("state", {}).get("S") == STARTED
                    and old.get("owner", {}).get("S") == self.lease.owner):
                return  # botocore resent our take-over after its response was lost
            raise LeaseLost(
                f"effect {key!r} changed hands while this step tried to take it over; another "
                "invocation holds the job. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _call(self, key: str, fn: Callable[..., Any], args: Sequence[Any],
              kwargs: Mapping[str, Any], sem: Semantics) -> Any:
        """Run `fn` for a STARTED record of ours; on an exception, settle the record."""
        faults.point("effect_started", job_id=self.lease.job_id, key=key)
        observe.count("Effects")
        self._running.add(key)
        self._unknown.add(key)  # until DONE is recorded
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if sem == Semantics.AT_LEAST_ONCE or isinstance(exc, EffectNotDone):
                # Not done (or allowed again): a retry runs it.
                self._settle(key, self._forget, key)
            else:
                self._settle(key, self._mark_unknown, key, exc)
            raise
        # A BaseException is a kill or a cancel: leave STARTED, the outcome is unknown.
        finally:
            self._running.discard(key)

    def _run(self, key: str, fn: Callable[..., Any], args: Sequence[Any],
             kwargs: Mapping[str, Any], sem: Semantics) -> Any:
        result = self._call(key, fn, args, kwargs, sem)
        faults.point("effect_called", job_id=self.lease.job_id, key=key)
        result_json = self._encode(key, result)
        self._persist(self._write_done_json, key, result_json, self.lease.owner)
        self._unknown.discard(key)
        return result

    def _encode(self, key: str, result: Any) -> str:
        """The result's stored form. If it cannot be had, the effect stays STARTED (it
        happened, its result is unknown here): never DONE with a result it did not give."""
        for attempt in range(1, ENCODE_ATTEMPTS + 1):
            try:
                return encode_result(self.store, result, key, job_id=self.lease.job_id)
            except JobStateError as exc:  # not JSON, too large: no retry can fix it
                self._not_stored(key, exc)
                raise
            except Exception as exc:  # the cipher (KMS throttled, access denied, ...)
                if attempt < ENCODE_ATTEMPTS:
                    self.store.clock.sleep(0.05 * 2 ** attempt)
                    continue
                self._not_stored(key, exc)
                raise EffectResultNotStored(
                    f"effect {key!r} of job {self.lease.job_id!r} ran, but its result could "
                    f"not be encrypted ({type(exc).__name__}, {ENCODE_ATTEMPTS} tries): it "
                    "is left STARTED, so the retry asks reconcile, parks the job "
                    "(at-most-once) or runs it again (at-least-once). Fix the cipher.",
                    job_id=self.lease.job_id, key=key,
                ) from exc
        raise AssertionError("unreachable")

    def _not_stored(self, key: str, exc: BaseException) -> None:
        self._settle(key, self._mark_unknown, key, exc, NOT_STORED)

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
                self.store.clock.sleep(pause_ms / 1000)
        raise AssertionError("unreachable")

    def _settle(self, key: str, write: Callable[..., Any], *args: Any) -> None:
        """Settle a record on the way out of a failure (persisting through a short outage);
        the failure, not this, is what the caller raises."""
        try:
            self._persist(write, *args)
        except (StoreUnavailable, ClientError) as exc:
            observe.event("effect_unsettled", logging.WARNING, job_id=self.lease.job_id,
                          step=self.lease.step, detail=f"effect {key!r}: {type(exc).__name__}")

    def _write_done(self, key: str, result: Any, expect_owner: str) -> None:
        result_json = encode_result(self.store, result, key, job_id=self.lease.job_id)
        self._persist(self._write_done_json, key, result_json, expect_owner)

    def _write_done_json(self, key: str, result_json: str, expect_owner: str) -> None:
        now = self.store.clock.now_ms()
        try:
            self.store.call("update_item", **_done_update(self.lease, key, result_json, now,
                                                          expect_owner),
                            ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            old = old_item(exc) or {}
            if (old.get("state", {}).get("S") == DONE
                    and old.get("owner", {}).get("S") == self.lease.owner):
                # Our DONE write was sent again after its response was lost: it applied.
                return
            raise LeaseLost(
                f"effect {key!r} of job {self.lease.job_id!r} is no longer owned by this "
                "invocation; its result was not recorded. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _forget(self, key: str) -> None:
        try:
            self.store.call("delete_item", **_mine(self.lease, key))
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise

    def _mark_unknown(self, key: str, exc: BaseException, prefix: str = "") -> None:
        """fn raised under at-most-once (or its result could not be stored): keep STARTED,
        note what was raised (its type only: an exception's text may carry secrets)."""
        self._unknown.add(key)
        kw = _mine(self.lease, key)
        kw["UpdateExpression"] = "SET last_error = :e"
        kw["ExpressionAttributeValues"][":e"] = av(prefix + type(exc).__name__)
        try:
            self.store.call("update_item", **kw)
        except ClientError as err:
            if error_code(err) != CONDITION_FAILED:
                raise

    # -- batches --------------------------------------------------------------------------

    def once_batch(
        self,
        calls: Mapping[str, Sequence[Any]],
        fn: Callable[..., Any],
        semantics: Semantics,
        reconcile: Callable[..., Any] | None,
    ) -> dict[str, Any]:
        """Run `fn(*calls[key])` once per key, in about 3 round trips per 25 keys.

        Keys are started, run and recorded `BATCH_CHUNK` at a time, so a crash leaves at
        most one chunk's outcome unknown.
        """
        keys = [validate_key(k) for k in calls]
        if len(set(keys)) != len(keys):
            raise InvalidInput("once_batch keys must be distinct.")
        sem = Semantics(semantics)
        for k in keys:
            if k in self._running:
                raise InvalidInput(f"effect {k!r} is already running in this step.")
        results: dict[str, Any] = {}
        found = {
            item["sk"]["S"][3:]: item
            for item in self.store.batch_get_raw([_key(self.lease.job_id, k) for k in keys])
        }
        fresh: list[str] = []
        for k in keys:
            item = found.get(k)
            if item is None:
                fresh.append(k)
            elif item.get("state", {}).get("S") == DONE:
                results[k] = decode_result(self.store, item, self.lease.job_id)
            else:  # STARTED and not done: the single-key path knows what to do
                results[k] = self._existing(k, item, fn, tuple(calls[k]), {}, sem, reconcile)
        for i in range(0, len(fresh), BATCH_CHUNK):
            self._run_chunk(fresh[i:i + BATCH_CHUNK], calls, fn, sem, reconcile, results)
        return {k: results[k] for k in keys}

    def _run_chunk(self, chunk: list[str], calls: Mapping[str, Sequence[Any]],
                   fn: Callable[..., Any], sem: Semantics,
                   reconcile: Callable[..., Any] | None, results: dict[str, Any]) -> None:
        now = self.store.clock.now_ms()
        actions = [{"Put": {"TableName": self.store.table_name,
                            "Item": _started_item(self.store, self.lease, k, sem, now),
                            "ConditionExpression": "attribute_not_exists(pk)"}}
                   for k in chunk]
        try:
            self.store.call("transact_write_items", TransactItems=actions)
        except StoreUnavailable:
            # Maybe applied, answer lost; no fn was called: take the records back.
            self._settle(chunk[0], self._forget_all, chunk)
            raise
        except ClientError as exc:
            if error_code(exc) != TRANSACTION_CANCELLED:
                raise
            for k in chunk:  # something raced us: settle each key on its own
                results[k] = self.once(k, fn, tuple(calls[k]), {}, sem, reconcile)
            return
        done: list[tuple[str, str]] = []
        failure: BaseException | None = None
        for n, k in enumerate(chunk):
            try:
                value = self._call(k, fn, tuple(calls[k]), {}, sem)
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
        if failure is not None:
            raise failure

    def _forget_all(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 100):
            actions = [{"Delete": {"TableName": self.store.table_name, **_mine(self.lease, k)}}
                       for k in keys[i:i + 100]]
            if actions:
                try:
                    self.store.call("transact_write_items", TransactItems=actions)
                except ClientError as exc:
                    if error_code(exc) != TRANSACTION_CANCELLED:
                        raise
                    for k in keys[i:i + 100]:
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
            batch.append((k, {"Update": {"TableName": self.store.table_name,
                                         **_done_update(self.lease, k, rj, now,
                                                        self.lease.owner)}}))
            size += item_size

    def _transact_done(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            self.store.call("transact_write_items", TransactItems=[a for _, a in batch],
                            ClientRequestToken=uuid.uuid4().hex)
        except ClientError as exc:
            if error_code(exc) != TRANSACTION_CANCELLED:
                raise
            if self._all_done_by_me([k for k, _ in batch]):
                return  # applied before; this is a resend after a lost answer
            raise LeaseLost(
                f"effects of job {self.lease.job_id!r} changed hands during a batch; "
                "their results were not recorded. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _all_done_by_me(self, keys: list[str]) -> bool:
        items = self.store.batch_get_raw([_key(self.lease.job_id, k) for k in keys])
        return len(items) == len(keys) and all(
            i.get("state", {}).get("S") == DONE
            and i.get("owner", {}).get("S") == self.lease.owner for i in items)


# -- operator actions (CLI: `jobstate effect ...`) ---------------------------------------------


def list_effects(store: JobStore, job_id: str, *, secrets: bool = False) -> list[dict[str, Any]]:
    """A job's effect records. Results are redacted unless `secrets` (they may hold tokens,
    e.g. an external job id), and decrypted with the store's cipher when they are shown."""
    codec.validate_job_id(job_id)
    out = []
    for item in store._query_prefix(job_id, "FX#"):
        has_result = "result" in item and item["result"].get("S") not in (None, "null")
        out.append({
            "key": item["sk"]["S"][3:],
            "state": item.get("state", {}).get("S"),
            "step": int(item["step"]["N"]) if "step" in item else None,
            "owner": item.get("owner", {}).get("S"),
            "runs": int(item.get("runs", {}).get("N", "1")),
            "last_error": item.get("last_error", {}).get("S"),
            "result": (decode_result(store, item, job_id) if secrets
                       else redact.REDACTED if has_result else None),
        })
    return out


def mark_effect(store: JobStore, job_id: str, key: str, *, done: bool,
                result: Any = None) -> None:
    """Settle a STARTED effect by hand: DONE with `result`, or forgotten so it runs again.

    Refused while a step of the job holds a live lease: that step may be running the
    effect right now. Settle effects of a parked (FAILED) job, then resume it.
    """
    codec.validate_job_id(job_id)
    validate_key(key)
    raw = store.get_raw(job_id)
    if raw is None:
        raise JobNotFound(f"no job {job_id!r}.", job_id=job_id)
    now = store.clock.now_ms()
    lease_until = int(raw.get("lease_expires_at", {}).get("N", "0"))
    if raw.get("lease_owner", {}).get("S") and lease_until >= now:
        # Whatever the status: a cancelled or paused job's step keeps running (and may be
        # inside this very effect) until it returns or its lease runs out.
        raise InvalidInput(
            f"a step of job {job_id!r} holds its lease until {lease_until} ms epoch and may "
            "be running this effect right now; its effects cannot be settled by hand until "
            "that step has ended. Cancel the job if it should stop, wait "
            f"{max(0, (lease_until - now) // 1000) + 1} s for the lease to run out (or for "
            "the step to return), then settle and `jobstate resume` it."
        )
    k = _key(job_id, key)
    try:
        if done:
            store.call(
                "update_item", Key=k,
                UpdateExpression="SET #state = :done, #result = :r, done_at = :now "
                                 "REMOVE last_error",
                ConditionExpression="#state = :started",
                ExpressionAttributeNames={"#state": "state", "#result": "result"},
                ExpressionAttributeValues={":done": av(DONE), ":started": av(STARTED),
                                           ":r": av(encode_result(store, result, key,
                                                                  job_id=job_id)),
                                           ":now": av(now)},
            )
        else:
            store.call(
                "delete_item", Key=k, ConditionExpression="#state = :started",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":started": av(STARTED)},
            )
    except ClientError as exc:
        if error_code(exc) != CONDITION_FAILED:
            raise
        raise InvalidInput(
            f"effect {key!r} of job {job_id!r} is not STARTED (it is DONE or absent); only "
            "an effect whose outcome is unknown can be settled by hand."
        ) from None


def extend_expiry(store: JobStore, job_id: str, deadline_at: int | None) -> int:
    """Move the TTL of a job's effect records to match a new deadline (on resume).

    Returns how many records changed. With no deadline the TTL is removed.
    """
    ttl = expires_at(store, deadline_at)
    changed = 0
    for item in store._query_prefix(job_id, "FX#"):
        current = item.get("expires_at", {}).get("N")
        if ttl is not None and current is not None and int(current) >= ttl:
            continue
        if ttl is None and current is None:
            continue
        kw: dict[str, Any] = {"Key": {"pk": item["pk"], "sk": item["sk"]},
                              "ConditionExpression": "attribute_exists(pk)"}
        if ttl is None:
            kw["UpdateExpression"] = "REMOVE expires_at"
        else:
            kw["UpdateExpression"] = "SET expires_at = :t"
            kw["ExpressionAttributeValues"] = {":t": av(ttl)}
        try:
            store.call("update_item", **kw)
            changed += 1
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
    return changed
