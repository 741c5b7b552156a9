"""Side effects recorded so they are not redone: `ctx.once` and `ctx.once_batch`.

An effect item `FX#<key>` is put STARTED (owner = this lease) before `fn` runs and
updated to DONE with the result after. Happy path: 2 writes, 0 reads. If a later attempt
finds it STARTED by an owner that died, the outcome is unknown: AT_LEAST_ONCE runs `fn`
again, AT_MOST_ONCE asks `reconcile` or parks the job with EffectOutcomeUnknown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from . import codec, faults, observe, schema
from .dynamo import CONDITION_FAILED, TRANSACTION_CANCELLED, av, error_code, old_item
from .errors import EffectOutcomeUnknown, InvalidInput, JobNotFound, LeaseLost, StateTooLarge
from .protocol import Lease
from .status import NOT_DONE, Semantics
from .store import JobStore

STARTED = "STARTED"
DONE = "DONE"
MAX_KEY_CHARS = 512
RESULT_BUDGET_BYTES = 300 * 1024


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


def _expires(store: JobStore, lease: Lease, now: int) -> int:
    end = max(now, lease.job.deadline_at or now)
    return end // 1000 + store.retention_s


def _started_item(store: JobStore, lease: Lease, key: str, sem: Semantics,
                  now: int) -> dict[str, Any]:
    return {
        **_key(lease.job_id, key),
        "state": av(STARTED), "owner": av(lease.owner), "step": av(lease.step),
        "started_at": av(now), "semantics": av(sem.value), "runs": av(1),
        "expires_at": av(_expires(store, lease, now)),
    }


def _encode_result(value: Any, key: str) -> str:
    text = codec.dumps(value, f"result of effect {key!r}")
    if codec.size_of(text) > RESULT_BUDGET_BYTES:
        raise StateTooLarge(
            f"result of effect {key!r} is {codec.size_of(text)} bytes; effect results are "
            f"limited to {RESULT_BUDGET_BYTES} bytes (DynamoDB items are at most 400 KB). "
            "Return an id or an S3 key instead of the data."
        )
    return text


def _done_update(lease: Lease, key: str, result_json: str, now: int,
                 expect_owner: str) -> dict[str, Any]:
    return {
        "Key": _key(lease.job_id, key),
        "UpdateExpression": "SET #state = :done, #result = :r, done_at = :now, #owner = :me",
        "ConditionExpression": "#state = :started AND #owner = :expect",
        "ExpressionAttributeNames": {"#state": "state", "#result": "result", "#owner": "owner"},
        "ExpressionAttributeValues": {
            ":done": av(DONE), ":r": av(result_json), ":now": av(now), ":me": av(lease.owner),
            ":started": av(STARTED), ":expect": av(expect_owner),
        },
    }


@dataclass
class Effects:
    """The effect operations of one step (bound to its lease)."""

    store: JobStore
    lease: Lease

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
        now = self.store.clock.now_ms()
        try:
            self.store.call(
                "put_item",
                Item=_started_item(self.store, self.lease, key, sem, now),
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            old = old_item(exc) or {}
            return self._existing(key, old, fn, args, kwargs, sem, reconcile)
        return self._run(key, fn, args, kwargs, self.lease.owner)

    def _existing(self, key: str, old: dict[str, Any], fn: Callable[..., Any],
                  args: Sequence[Any], kwargs: Mapping[str, Any], sem: Semantics,
                  reconcile: Callable[..., Any] | None) -> Any:
        state = old.get("state", {}).get("S")
        if state == DONE:
            return codec.loads(old.get("result", {}).get("S"))
        owner = old.get("owner", {}).get("S", "")
        if owner == self.lease.owner:
            raise InvalidInput(
                f"effect {key!r} is already running in this step; use a distinct key per "
                "side effect."
            )
        # STARTED by an owner that no longer holds the job: it died mid-effect.
        if sem == Semantics.AT_MOST_ONCE:
            if reconcile is None:
                raise EffectOutcomeUnknown(
                    f"effect {key!r} of job {self.lease.job_id!r} was started by an "
                    f"invocation that died (owner {owner}); it may or may not have happened, "
                    "and at-most-once forbids running it again. Check the external system, "
                    f"then run `jobstate effect done {self.lease.job_id} '{key}' --result "
                    f"JSON` (it happened) or `jobstate effect retry {self.lease.job_id} "
                    f"'{key}'` (it did not), and `jobstate resume {self.lease.job_id}`. "
                    "Pass reconcile=... to ctx.once to decide this automatically.",
                    job_id=self.lease.job_id,
                    key=key,
                )
            outcome = reconcile(*args, **kwargs)
            if outcome is not NOT_DONE:
                self._write_done(key, outcome, owner)
                return outcome
        self._take_over(key, owner)
        return self._run(key, fn, args, kwargs, self.lease.owner)

    def _take_over(self, key: str, old_owner: str) -> None:
        now = self.store.clock.now_ms()
        try:
            self.store.call(
                "update_item",
                Key=_key(self.lease.job_id, key),
                UpdateExpression="SET #owner = :me, #step = :step, started_at = :now "
                                 "ADD runs :one",
                ConditionExpression="#state = :started AND #owner = :old",
                ExpressionAttributeNames={"#owner": "owner", "#state": "state", "#step": "step"},
                ExpressionAttributeValues={
                    ":me": av(self.lease.owner), ":step": av(self.lease.step), ":now": av(now),
                    ":one": av(1), ":started": av(STARTED), ":old": av(old_owner),
                },
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            raise LeaseLost(
                f"effect {key!r} changed hands while this step tried to take it over; another "
                "invocation holds the job. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _run(self, key: str, fn: Callable[..., Any], args: Sequence[Any],
             kwargs: Mapping[str, Any], owner: str) -> Any:
        faults.point("effect_started", job_id=self.lease.job_id, key=key)
        observe.count("Effects")
        try:
            result = fn(*args, **kwargs)
        except Exception:
            # fn raised: treat the effect as not done, so a retry may run it again.
            # (A BaseException is a kill/cancel: leave STARTED, the outcome is unknown.)
            self._forget(key)
            raise
        faults.point("effect_called", job_id=self.lease.job_id, key=key)
        try:
            result_json = _encode_result(result, key)
        except Exception:
            # The effect happened but its result cannot be stored: record DONE without it.
            self._write_done_json(key, "null", owner)
            raise
        self._write_done_json(key, result_json, owner)
        return result

    def _write_done(self, key: str, result: Any, expect_owner: str) -> None:
        self._write_done_json(key, _encode_result(result, key), expect_owner)

    def _write_done_json(self, key: str, result_json: str, expect_owner: str) -> None:
        now = self.store.clock.now_ms()
        try:
            self.store.call("update_item", **_done_update(self.lease, key, result_json, now,
                                                          expect_owner))
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            raise LeaseLost(
                f"effect {key!r} of job {self.lease.job_id!r} is no longer owned by this "
                "invocation; its result was not recorded. Stop work and return.",
                job_id=self.lease.job_id,
            ) from None

    def _forget(self, key: str) -> None:
        try:
            self.store.call(
                "delete_item",
                Key=_key(self.lease.job_id, key),
                ConditionExpression="#state = :started AND #owner = :me",
                ExpressionAttributeNames={"#state": "state", "#owner": "owner"},
                ExpressionAttributeValues={":started": av(STARTED), ":me": av(self.lease.owner)},
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise

    # -- batches --------------------------------------------------------------------------

    def once_batch(
        self,
        calls: Mapping[str, Sequence[Any]],
        fn: Callable[..., Any],
        semantics: Semantics,
        reconcile: Callable[..., Any] | None,
    ) -> dict[str, Any]:
        """Run `fn(*calls[key])` once per key, with ~3 round trips per 100 keys."""
        keys = [validate_key(k) for k in calls]
        if len(set(keys)) != len(keys):
            raise InvalidInput("once_batch keys must be distinct.")
        sem = Semantics(semantics)
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
                results[k] = codec.loads(item.get("result", {}).get("S"))
            else:  # STARTED by a dead owner: the single-key path knows what to do
                results[k] = self._existing(k, item, fn, tuple(calls[k]), {}, sem, reconcile)
        now = self.store.clock.now_ms()
        started: list[str] = []
        for i in range(0, len(fresh), 100):
            chunk = fresh[i:i + 100]
            actions = [{"Put": {"TableName": self.store.table_name,
                                "Item": _started_item(self.store, self.lease, k, sem, now),
                                "ConditionExpression": "attribute_not_exists(pk)"}}
                       for k in chunk]
            try:
                self.store.call("transact_write_items", TransactItems=actions)
                started.extend(chunk)
            except ClientError as exc:
                if error_code(exc) != TRANSACTION_CANCELLED:
                    raise
                for k in chunk:  # something raced us: settle each key on its own
                    results[k] = self.once(k, fn, tuple(calls[k]), {}, sem, reconcile)
        done: dict[str, str] = {}
        failure: BaseException | None = None
        for k in started:
            if failure is not None:
                self._forget(k)
                continue
            faults.point("effect_started", job_id=self.lease.job_id, key=k)
            observe.count("Effects")
            try:
                value = fn(*tuple(calls[k]))
                faults.point("effect_called", job_id=self.lease.job_id, key=k)
            except Exception as exc:
                failure = exc
                self._forget(k)
                continue
            results[k] = value
            try:
                done[k] = _encode_result(value, k)
            except Exception as exc:
                done[k] = "null"
                failure = exc
        items = list(done.items())
        for i in range(0, len(items), 100):
            actions = [{"Update": {"TableName": self.store.table_name,
                                   **_done_update(self.lease, k, rj, now, self.lease.owner)}}
                       for k, rj in items[i:i + 100]]
            try:
                self.store.call("transact_write_items", TransactItems=actions)
            except ClientError as exc:
                if error_code(exc) != TRANSACTION_CANCELLED:
                    raise
                raise LeaseLost(
                    f"effects of job {self.lease.job_id!r} changed hands during a batch; "
                    "their results were not recorded. Stop work and return.",
                    job_id=self.lease.job_id,
                ) from None
        if failure is not None:
            raise failure
        return {k: results[k] for k in keys}


# -- operator actions (CLI: `jobstate effect ...`) ---------------------------------------------


def list_effects(store: JobStore, job_id: str) -> list[dict[str, Any]]:
    codec.validate_job_id(job_id)
    out = []
    for item in store._query_prefix(job_id, "FX#"):
        out.append({
            "key": item["sk"]["S"][3:],
            "state": item.get("state", {}).get("S"),
            "step": int(item["step"]["N"]) if "step" in item else None,
            "owner": item.get("owner", {}).get("S"),
            "runs": int(item.get("runs", {}).get("N", "1")),
            "result": codec.loads(item.get("result", {}).get("S")),
        })
    return out


def mark_effect(store: JobStore, job_id: str, key: str, *, done: bool,
                result: Any = None) -> None:
    """Settle a STARTED effect by hand: DONE with `result`, or forgotten so it runs again."""
    codec.validate_job_id(job_id)
    validate_key(key)
    if store.get_raw(job_id) is None:
        raise JobNotFound(f"no job {job_id!r}.", job_id=job_id)
    k = _key(job_id, key)
    try:
        if done:
            store.call(
                "update_item", Key=k,
                UpdateExpression="SET #state = :done, #result = :r, done_at = :now",
                ConditionExpression="#state = :started",
                ExpressionAttributeNames={"#state": "state", "#result": "result"},
                ExpressionAttributeValues={":done": av(DONE), ":started": av(STARTED),
                                           ":r": av(_encode_result(result, key)),
                                           ":now": av(store.clock.now_ms())},
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
