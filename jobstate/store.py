"""JobStore: the table, reads, and the operator's writes (create, cancel, resume, pause).

The step protocol's lease-fenced writes live in `protocol.py`; both go through
`JobStore.call`, one botocore client shared with PynamoDB, so a test can count requests.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import json
import math
import os
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from . import codec, config, redact, schema
from .clock import SYSTEM_CLOCK, Clock
from .codec import Cipher
from .dynamo import (
    CANCELLED_BY_CONDITION,
    CONDITION_FAILED,
    NOT_FOUND,
    TRANSACTION_CANCELLED,
    Update,
    av,
    error_code,
    is_transient,
    old_item,
)
from .errors import (
    InvalidInput,
    JobConflict,
    JobFinished,
    JobNotFound,
    JobStateError,
    StoreUnavailable,
    TableNotFound,
    TokensUnreadable,
    TokensUnwritable,
)
from .records import HistoryEntry, JobView, Page, Progress
from .status import RUNNABLE, JobStatus

DEFAULT_TABLE = "jobstate"
ACTIVE = "ACTIVE"  # list-index bucket of every non-terminal job (see schema.py)
ENCRYPTED_PREFIX = "enc:"
TOKENS, EFFECT_RESULT = "tokens", "effect-result"  # what a ciphertext holds (its context)
KMS_KEY_ENV = "JOBSTATE_KMS_KEY_ARN"


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


def _botocore_cause(exc: BaseException) -> BotoCoreError | None:
    """The botocore error (no credentials, no connection) under a PynamoDB exception."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, BotoCoreError):
            return cause
        seen.add(id(cause))
        nested = getattr(cause, "cause", None)  # PynamoDBException keeps it here
        cause = nested if isinstance(nested, BaseException) else (
            cause.__cause__ or cause.__context__)
    return None


TXN_CONFLICT_RETRIES = 5


def _transaction_conflict(exc: ClientError) -> bool:
    """A transaction cancelled because another one was using an item (not a condition)."""
    if error_code(exc) != TRANSACTION_CANCELLED:
        return False
    reasons = exc.response.get("CancellationReasons") or []
    return any(r.get("Code") == "TransactionConflict" for r in reasons)


class JobStore:
    """Durable job records in one DynamoDB table (see schema.py for the layout)."""

    def __init__(
        self,
        table_name: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        *,
        client: Any = None,
        clock: Clock | None = None,
        cipher: Cipher | None = None,
        retention_days: float | None = None,
        dispatch_timeout_s: float = 120.0,
        pause_cache_s: float = 10.0,
    ) -> None:
        self.table_name = table_name or os.environ.get("JOBSTATE_TABLE") or DEFAULT_TABLE
        self.endpoint_url = config.endpoint_url(endpoint_url)
        # From the argument or environment now; from the AWS config files (or an error
        # naming the setting) when the first request needs it. See config.py.
        self._region = config.given_region(region, client)
        if retention_days is None:
            retention_days = float(os.environ.get("JOBSTATE_RETENTION_DAYS", "30"))
        if retention_days <= 0:
            raise InvalidInput(f"retention_days must be positive, got {retention_days!r}")
        self.retention_s = int(retention_days * 86400)
        self.dispatch_timeout_ms = int(dispatch_timeout_s * 1000)
        self.pause_cache_ms = int(pause_cache_s * 1000)
        self.clock: Clock = clock or SYSTEM_CLOCK
        if cipher is None and os.environ.get(KMS_KEY_ENV, "").strip():
            from .kms import cipher_from_env  # the optional extra: jobstate[kms]

            cipher = cipher_from_env()
        self.cipher = cipher
        self.models = schema.build_models(self.table_name, self.endpoint_url,
                                          self._region.name if self._region else "")
        self._client = client
        self._pause_cache: dict[str, tuple[int, bool]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JobStore(table_name={self.table_name!r}, endpoint_url={self.endpoint_url!r})"

    # -- connection -------------------------------------------------------------------

    @property
    def region(self) -> str:
        """The AWS region requests go to (ConfigurationError if nothing configures one)."""
        if self._region is None:
            self._region = config.resolve_region(None, endpoint=self.endpoint_url)
        return self._region.name

    def _where(self) -> str:
        return self.endpoint_url or f"AWS {self._region.name if self._region else '(no region)'}"

    @property
    def client(self) -> Any:
        """The botocore DynamoDB client every request of this store goes through."""
        with self._lock:
            if self._client is None:  # created lazily, never at import time
                region = self.region
                for model in self._all_models():  # before PynamoDB makes its connection
                    model.Meta.region = region
                try:
                    self._client = self.models.job._get_connection().connection.client
                except BotoCoreError as exc:  # a missing profile, a malformed region
                    raise self._unreachable(exc) from exc
            # Share one client between PynamoDB models and raw calls.
            for model in self._all_models():
                model._get_connection().connection._client = self._client
            return self._client

    def _all_models(self) -> tuple[Any, ...]:
        m = self.models
        return (m.job, m.history, m.effect, m.child, m.control)

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One DynamoDB request. Conditional failures are re-raised as ClientError."""
        if "TableName" not in kwargs and operation not in {
            "transact_write_items", "batch_get_item", "batch_write_item"
        }:
            kwargs["TableName"] = self.table_name
        attempt = 0
        while True:
            try:
                result: dict[str, Any] = getattr(self.client, operation)(**kwargs)
                return result
            except ClientError as exc:
                if operation == "transact_write_items" and _transaction_conflict(exc):
                    if attempt >= TXN_CONFLICT_RETRIES:
                        raise StoreUnavailable(
                            "a DynamoDB transaction kept conflicting with concurrent ones "
                            f"({attempt + 1} attempts); nothing was written and the "
                            "request is safe to retry."
                        ) from None
                    # Another transaction held one of the items (siblings joining one
                    # parent at once): nothing was applied and botocore does not retry
                    # this, so try again after a short, jittered pause.
                    attempt += 1
                    self.clock.sleep(random.uniform(0.01, 0.05) * 2 ** attempt)
                    continue
                self._raise_unavailable(exc)
                raise
            except BotoCoreError as exc:
                raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BotoCoreError) -> JobStateError:
        misconfigured = config.explain(exc, self._region, self.endpoint_url)
        if misconfigured is not None:
            return misconfigured
        where = self._where()
        if isinstance(exc, NoCredentialsError):
            return StoreUnavailable(
                f"no AWS credentials found for DynamoDB at {where}: configure them (env "
                "vars, AWS_PROFILE, an instance/Lambda role); a local engine (DynamoDB "
                "Local, moto) accepts any dummy values, e.g. AWS_ACCESS_KEY_ID=testing "
                "AWS_SECRET_ACCESS_KEY=testing."
            )
        return StoreUnavailable(
            f"DynamoDB at {where} could not be reached ({type(exc).__name__}); the request "
            "is safe to retry."
        )

    def _raise_unavailable(self, exc: BaseException) -> None:
        code = error_code(exc)
        if code == NOT_FOUND:
            raise TableNotFound(
                f"table {self.table_name!r} does not exist at "
                f"{self._where()}; create it with "
                "`jobstate create-table` (or store.create_table()), or set JOBSTATE_TABLE."
            ) from exc
        if is_transient(exc):
            raise StoreUnavailable(
                f"DynamoDB kept failing with {code} after retries; the request is safe to "
                "retry later."
            ) from exc

    def _model_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self.client  # noqa: B018 - make sure the models share our client
        try:
            return fn(*args, **kwargs)
        except JobStateError:
            raise
        except Exception as exc:  # PynamoDB wraps botocore errors in its own types
            self._raise_unavailable(exc)
            botocore_error = _botocore_cause(exc)
            if botocore_error is not None:
                raise self._unreachable(botocore_error) from exc
            raise

    # -- table --------------------------------------------------------------------------

    def create_table(self, *, wait: bool = True) -> bool:
        """Create the table with its GSIs and TTL if missing. Returns True if created."""
        job = self.models.job
        existed = self._model_call(job.exists)
        if not existed:
            self._model_call(
                job.create_table, wait=wait, billing_mode="PAY_PER_REQUEST",
                ignore_update_ttl_errors=True,
            )
        try:
            desc = self.call("describe_time_to_live")
            status = desc.get("TimeToLiveDescription", {}).get("TimeToLiveStatus")
            if status not in ("ENABLED", "ENABLING"):
                self.call(
                    "update_time_to_live",
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
                )
        except ClientError as exc:
            # DynamoDB Local rejects a second enable; the TTL is on either way.
            if error_code(exc) != "ValidationException":
                raise
        return not existed

    def delete_table(self) -> None:
        self._model_call(self.models.job.delete_table)

    # -- encoding -----------------------------------------------------------------------

    def encode_tokens(self, tokens: dict[str, Any], *, job_id: str | None = None) -> str:
        """The stored form of a job's tokens: JSON, encrypted if the store has a cipher
        (bound to `job_id` when the cipher takes a context)."""
        text = codec.dumps(tokens, "tokens")
        if self.cipher is not None and tokens:
            try:
                return ENCRYPTED_PREFIX + self.cipher.seal(
                    text, self.cipher_context(job_id, TOKENS))
            except Exception as exc:
                # Its text may quote what it was given: only its type is kept.
                raise TokensUnwritable(
                    f"the cipher could not encrypt the tokens ({type(exc).__name__}); "
                    "nothing was written. Check the key and the role's permission to use "
                    "it (e.g. kms:GenerateDataKey).") from None
        return text

    def cipher_context(self, job_id: str | None, kind: str) -> dict[str, str]:
        """What a ciphertext is bound to: this table, the job, tokens or an effect result."""
        if job_id is None and self.cipher is not None and self.cipher.context:
            raise InvalidInput(f"encrypting {kind} with a context cipher needs the job id")
        return {"table": self.table_name, "job_id": job_id or "", "kind": kind}

    def _decrypt(self, text: str, *, what: str, job_id: str | None = None,
                 kind: str = "tokens") -> str:
        """`text` as written: decrypted with the cipher if it was stored encrypted."""
        if not text.startswith(ENCRYPTED_PREFIX):
            return text
        if self.cipher is None:
            raise TokensUnreadable(
                f"{what} is encrypted; create the JobStore with the same "
                "cipher=jobstate.Cipher(encrypt, decrypt) that wrote it (for the KMS "
                "cipher: set JOBSTATE_KMS_KEY_ARN).", job_id=job_id)
        try:
            return self.cipher.open(text[len(ENCRYPTED_PREFIX):],
                                    self.cipher_context(job_id, kind))
        except Exception as exc:
            raise TokensUnreadable(
                f"the cipher could not decrypt {what} ({type(exc).__name__}); is it the one "
                "that encrypted it, and was it written for this job and table?",
                job_id=job_id) from None

    def decode_tokens(self, text: str | None, *, job_id: str | None = None) -> dict[str, Any]:
        if not text:
            return {}
        text = self._decrypt(text, what=f"the tokens of job {job_id!r}", job_id=job_id,
                             kind=TOKENS)
        value = codec.loads(text, {})
        return value if isinstance(value, dict) else {}

    def view(self, raw: dict[str, Any], *, secrets: bool = True) -> JobView:
        """A JobView from a raw DynamoDB item (as returned by ALL_NEW / ALL_OLD / GetItem)."""
        m = self.models.job.from_raw_data(raw)
        return self._view_from_model(m, secrets=secrets)

    def _view_from_model(self, m: Any, *, secrets: bool) -> JobView:
        prog = codec.loads(m.progress, {}) or {}
        tokens: dict[str, Any]
        if secrets:
            tokens = self.decode_tokens(m.tokens, job_id=m.job_id)
        elif m.tokens and m.tokens.startswith(ENCRYPTED_PREFIX):
            tokens = {"encrypted": redact.REDACTED}
        else:
            tokens = redact.redact(codec.loads(m.tokens, {}) or {})

        def n(x: Any) -> int | None:
            return None if x is None else int(x)

        return JobView(
            job_id=m.job_id,
            job_type=m.job_type,
            status=JobStatus(m.status),
            step=int(m.step),
            input=codec.loads(m.input),
            cursor=codec.loads(m.cursor, {}) or {},
            tokens=tokens,
            progress=Progress(prog.get("done", 0), prog.get("total"), prog.get("unit")),
            result=codec.loads(m.result),
            error=m.error,
            error_type=m.error_type,
            attempt=int(m.attempt or 0),
            max_attempts=n(m.max_attempts),
            max_steps=n(m.max_steps),
            deadline_at=n(m.deadline_at),
            lease_owner=m.lease_owner,
            lease_expires_at=n(m.lease_expires_at),
            not_before=n(m.not_before),
            due_at=n(m.due_at),
            wait_reason=m.wait_reason,
            parent_id=m.parent_id,
            pending_children=n(m.pending),
            children_total=n(m.children_total),
            created_at=n(m.created_at),
            updated_at=n(m.updated_at),
            invocations=int(m.invocations or 0),
            takeovers=int(m.takeovers or 0),
            retries=int(m.retries or 0),
            run_ms=int(m.run_ms or 0),
            expires_at=int(m.expires_at.timestamp()) if m.expires_at else None,
            history_on=bool(m.history_on),
            child_index=n(m.child_index),
            release_id=m.release_id,
            parent_type=m.parent_type,
            ancestors=_ancestors(m.ancestors, m.parent_type),
            spawn_step=n(m.spawn_step),
            child_type=m.child_type,
            child_policy=m.child_policy,
            child_ids=codec.loads(m.child_ids),
        )

    def _expired(self, raw: dict[str, Any]) -> bool:
        exp = raw.get("expires_at", {}).get("N")
        return exp is not None and int(exp) * 1000 < self.clock.now_ms()

    # -- reads --------------------------------------------------------------------------

    def get_raw(self, job_id: str) -> dict[str, Any] | None:
        resp = self.call(
            "get_item",
            Key={"pk": av(schema.job_pk(job_id)), "sk": av(schema.JOB_SK)},
            ConsistentRead=True,
        )
        item = resp.get("Item")
        if not item or self._expired(item):  # TTL deletes late: expired means absent
            return None
        return dict(item)

    def get(self, job_id: str, *, secrets: bool = False) -> JobView:
        """The job's current record (strongly consistent). Tokens redacted unless `secrets`."""
        codec.validate_job_id(job_id)
        raw = self.get_raw(job_id)
        if raw is None:
            raise JobNotFound(
                f"no job {job_id!r} in table {self.table_name!r} (it may never have existed "
                "or have expired); check the id with `jobstate list`.",
                job_id=job_id,
            )
        return self.view(raw, secrets=secrets)

    def batch_get_raw(self, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """BatchGetItem in chunks of 100, retrying unprocessed keys; order not preserved."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(keys), 100):
            pending: dict[str, Any] = {
                self.table_name: {"Keys": keys[i:i + 100], "ConsistentRead": True}
            }
            for _ in range(10):
                resp = self.call("batch_get_item", RequestItems=pending)
                out.extend(resp.get("Responses", {}).get(self.table_name, []))
                pending = resp.get("UnprocessedKeys") or {}
                if not pending:
                    break
                self.clock.sleep(0.05)
            if pending:
                raise StoreUnavailable("BatchGetItem kept returning unprocessed keys; retry.")
        return [dict(item) for item in out if not self._expired(item)]

    def list(
        self,
        job_type: str | None = None,
        status: JobStatus | str | None = None,
        *,
        limit: int = 50,
        next_token: str | None = None,
    ) -> Page:
        """Jobs by type and status through the sharded `by-type` GSI, newest first.

        The index holds non-terminal jobs under one ACTIVE bucket (ordered by creation) and
        finished jobs by their final status (ordered by finish time), so it is written only
        twice in a job's life; RUNNING/WAITING/PENDING are told apart on the base item.
        """
        if job_type is not None:
            codec.validate_job_type(job_type)
        st = parse_status(status)
        if not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InvalidInput(f"limit must be an int from 1 to 1000, got {limit!r}")
        prefix = ""
        if job_type is not None:
            prefix = job_type + "#"
            if st is not None:
                prefix += (st.value if st.terminal else ACTIVE) + "#"
        starts = _decode_token(next_token, prefix)
        heads: list[tuple[str, dict[str, Any]]] = []
        exhausted: dict[str, bool] = {}
        for shard in range(schema.LIST_SHARDS):
            lk = f"L#{shard}"
            if starts.get(lk) == "done":
                exhausted[lk] = True
                continue
            kw: dict[str, Any] = {
                "IndexName": schema.LIST_INDEX,
                "KeyConditionExpression": "lk = :lk"
                + (" AND begins_with(ls, :p)" if prefix else ""),
                "ExpressionAttributeValues": {":lk": av(lk),
                                              **({":p": av(prefix)} if prefix else {})},
                "ScanIndexForward": False,
                "Limit": limit,
            }
            if starts.get(lk):
                kw["ExclusiveStartKey"] = starts[lk]
            resp = self.call("query", **kw)
            for item in resp.get("Items", []):
                heads.append((lk, dict(item)))
            exhausted[lk] = "LastEvaluatedKey" not in resp
        heads.sort(key=lambda h: _list_order(h[1]["ls"]["S"]), reverse=True)
        taken = heads[:limit]
        new_starts: dict[str, Any] = dict(starts)
        for lk, item in taken:
            new_starts[lk] = {k: item[k] for k in ("pk", "sk", "lk", "ls")}
        for lk, done in exhausted.items():
            if done and not any(h[0] == lk for h in heads[limit:]):
                new_starts[lk] = "done"
        more = len(heads) > limit or not all(exhausted.get(f"L#{s}", True)
                                             for s in range(schema.LIST_SHARDS))
        keys = [{"pk": item["pk"], "sk": item["sk"]} for _, item in taken]
        by_pk = {raw["pk"]["S"]: raw for raw in self.batch_get_raw(keys)}
        jobs = []
        for _, item in taken:
            raw = by_pk.get(item["pk"]["S"])
            if raw is None:
                continue
            view = self.view(raw, secrets=False)
            if st is not None and view.status != st:
                continue
            if job_type is not None and view.job_type != job_type:
                continue
            jobs.append(view)
        return Page(jobs=jobs, next_token=_encode_token(new_starts) if more else None)

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
        """Step history items (failures, retries and takeovers always; every step if on)."""
        codec.validate_job_id(job_id)
        items = self._query_prefix(job_id, "STEP#")
        return [
            HistoryEntry(
                step=int(i["step"]["N"]),
                event=i["event"]["S"],
                owner=i.get("owner", {}).get("S"),
                request_id=i.get("request_id", {}).get("S"),
                started_at=_n(i, "started_at"),
                ended_at=_n(i, "ended_at"),
                duration_ms=_n(i, "duration_ms"),
                attempt=_n(i, "attempt"),
                detail=i.get("detail", {}).get("S"),
                work=codec.loads(i.get("work", {}).get("S")),
            )
            for i in items
        ]

    def _query_prefix(self, job_id: str, prefix: str) -> builtins.list[dict[str, Any]]:
        items: builtins.list[dict[str, Any]] = []
        kw: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :p)",
            "ExpressionAttributeValues": {":pk": av(schema.job_pk(job_id)), ":p": av(prefix)},
            "ConsistentRead": True,
        }
        while True:
            resp = self.call("query", **kw)
            items.extend(dict(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return items
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    # -- operator writes ------------------------------------------------------------------

    def new_job_item(
        self,
        job_type: str,
        input: Any,
        job_id: str | None,
        limits: Limits,
        *,
        parent_id: str | None = None,
        child_index: int | None = None,
        history: bool = False,
        cursor: dict[str, Any] | None = None,
        runnable_now: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Validate and encode a new job item; raises before anything is written."""
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
        item: dict[str, Any] = {
            "pk": av(schema.job_pk(job_id)),
            "sk": av(schema.JOB_SK),
            "job_id": av(job_id),
            "job_type": av(job_type),
            "status": av(JobStatus.PENDING.value),
            "step": av(0),
            "input": av(input_json),
            "input_hash": av(codec.input_hash(job_type + "\x1f" + input_json)),
            "cursor": av(cursor_json),
            "attempt": av(0),
            "max_attempts": av(limits.max_attempts),
            "max_steps": av(limits.max_steps),
            "created_at": av(now),
            "updated_at": av(now),
            "version": av(1),
            "invocations": av(0),
            "lk": av(schema.list_hash(job_id)),
            "ls": av(schema.list_range(job_type, ACTIVE, now)),
        }
        if runnable_now:
            item["due_at"] = av(now + self.dispatch_timeout_ms)
            item["dk"] = av(schema.due_hash(job_id))
        if limits.deadline_s is not None:
            item["deadline_at"] = av(now + int(limits.deadline_s * 1000))
        if parent_id is not None:
            item["parent_id"] = av(parent_id)
        if child_index is not None:
            item["child_index"] = av(child_index)
        if history:
            item["history_on"] = av(True)
        for k, v in (extra or {}).items():
            item[k] = av(v)
        return job_id, item

    def create(
        self,
        job_type: str,
        input: Any = None,
        job_id: str | None = None,
        limits: Limits | None = None,
        *,
        history: bool = False,
        cursor: dict[str, Any] | None = None,
        _purged: bool = False,
    ) -> tuple[JobView, bool]:
        """Create a PENDING job at step 0. Returns (job, created).

        Idempotent for a given job id: the same type and input return the existing job
        (created=False); a different type or input raises JobConflict. An id whose job
        finished and expired (retention passed) names a new job.
        """
        job_id, item = self.new_job_item(
            job_type, input, job_id, limits or Limits(), history=history, cursor=cursor
        )
        try:
            self.call(
                "put_item",
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            existing = old_item(exc)
            if existing is not None and self._expired(existing) and not _purged:
                # Expired (TTL deletes late): that job is gone; clear what is left of it
                # (its effect records must not answer for the new job) and create anew.
                self._purge_expired(job_id, existing)
                return self.create(job_type, input, job_id, limits, history=history,
                                   cursor=cursor, _purged=True)
            existing = existing or self.get_raw(job_id)
            if existing is None:  # expired copy raced with us: treat as a conflict to retry
                raise JobConflict(
                    f"job {job_id!r} exists but could not be read back; retry.", job_id=job_id
                ) from None
            if existing.get("input_hash") != item["input_hash"]:
                raise JobConflict(
                    f"job {job_id!r} already exists with a different type or input; a job id "
                    "names one unit of work. Use a new id, or pass job_id=None for a "
                    "generated one.",
                    job_id=job_id,
                ) from None
            return self.view(existing, secrets=False), False
        return self.view(item, secrets=False), True

    def _purge_expired(self, job_id: str, old: dict[str, Any]) -> None:
        """Delete what is left of a finished job whose record expired (TTL deletes late).

        Each delete is conditional, so a job re-created with this id meanwhile loses
        nothing: the job item only while it is still expired, every other item only if it
        predates the old job's last write.
        """
        now_s = self.clock.now_ms() // 1000
        cut = int(old.get("updated_at", {}).get("N", "0"))
        newer = " AND ".join(f"NOT (attribute_exists({a}) AND {a} > :cut)"
                             for a in ("started_at", "ended_at", "joined_at", "done_at"))
        kw: dict[str, Any] = {
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": av(schema.job_pk(job_id))},
            "ProjectionExpression": "pk, sk", "ConsistentRead": True,
        }
        while True:
            resp = self.call("query", **kw)
            for item in resp.get("Items", []):
                if item["sk"]["S"] == schema.JOB_SK:
                    cond = "attribute_exists(expires_at) AND expires_at < :now"
                    values = {":now": av(now_s)}
                else:
                    cond, values = newer, {":cut": av(cut)}
                try:
                    self.call("delete_item", Key={"pk": item["pk"], "sk": item["sk"]},
                              ConditionExpression=cond, ExpressionAttributeValues=values)
                except ClientError as exc:
                    if error_code(exc) != CONDITION_FAILED:
                        raise
            if "LastEvaluatedKey" not in resp:
                return
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def cancel(self, job_id: str, reason: str = "cancelled by operator") -> JobView:
        """Cancel a job: its next claim (or its running step's commit) sees it and stops.

        Cancelling an already-cancelled job is a no-op; a finished job raises JobFinished.
        """
        codec.validate_job_id(job_id)
        reason = validate_reason(reason)
        now = self.clock.now_ms()
        raw = self.get_raw(job_id)
        if raw is None:
            raise JobNotFound(f"no job {job_id!r} to cancel.", job_id=job_id)
        job_type = raw["job_type"]["S"]
        upd = (
            Update()
            .set("status", JobStatus.CANCELLED.value)
            .set("error", reason)
            .set("error_type", "Cancelled")
            .set("updated_at", now)
            .set("status_at", now)
            .set("ls", schema.list_range(job_type, JobStatus.CANCELLED.value, now))
            .set("expires_at", now // 1000 + self.retention_s)
            .remove("due_at", "dk", "not_before")
            .where("attribute_exists(pk)")
            .where(_status_in(["PENDING", "RUNNING", "WAITING"]))
        )
        for i, s in enumerate(RUNNABLE):
            upd.values[f":st{i}"] = av(s.value)
        if "parent_id" in raw:
            return self._cancel_child(job_id, raw, upd, reason)
        try:
            resp = self.call(
                "update_item", Key=_job_key(job_id), ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD", **upd.kwargs(),
            )
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            return self._cancel_refused(job_id, old_item(exc))
        return self.view(resp["Attributes"], secrets=False)

    def _cancel_child(self, job_id: str, raw: dict[str, Any], upd: Update,
                      reason: str) -> JobView:
        """A cancelled child still joins its parent (and releases its queued sibling) in
        the same transaction, or the parent would wait for it forever. A child that
        joined before gets its link rewritten to CANCELLED, counted once only."""
        from .fanout import join_actions_for, transact_join

        joins = join_actions_for(self, self.view(raw, secrets=False), "CANCELLED", None,
                                 reason) or []
        action = {"Update": {"TableName": self.table_name, "Key": _job_key(job_id),
                             **upd.kwargs(), "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
        try:
            transact_join(lambda actions: self.call("transact_write_items",
                                                    TransactItems=actions), action, joins)
        except ClientError as exc:
            if error_code(exc) != TRANSACTION_CANCELLED:
                raise
            first = (exc.response.get("CancellationReasons") or [{}])[0]
            if first.get("Code") not in (CANCELLED_BY_CONDITION, CONDITION_FAILED):
                raise
            item: Any = first.get("Item")
            return self._cancel_refused(job_id, dict(item) if item else None)
        return self.get(job_id)

    def _cancel_refused(self, job_id: str, old: dict[str, Any] | None) -> JobView:
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
               deadline_s: float | None = None) -> JobView:
        """Make a FAILED or CANCELLED job runnable again from its last committed step.

        The attempt budget starts afresh and the job becomes due now, so the caller (or the
        sweeper) dispatches its step. `max_steps` raises the job's step guard (a job that
        failed it needs a larger one); `deadline_s` gives it a new deadline from now (a
        job past its deadline otherwise gets a fresh window as long as its first). The
        effect records' expiry moves with the deadline.
        """
        codec.validate_job_id(job_id)
        if max_steps is not None or deadline_s is not None:
            Limits(max_steps=max_steps or 1, deadline_s=deadline_s)  # validates both
        raw = self.get_raw(job_id)
        if raw is None:
            raise JobNotFound(f"no job {job_id!r} to resume.", job_id=job_id)
        view = self.view(raw, secrets=False)
        if view.status in RUNNABLE:
            return view
        if view.status == JobStatus.SUCCEEDED:
            raise JobFinished(f"job {job_id!r} succeeded; there is nothing to resume.",
                              job_id=job_id)
        guard = view.max_steps
        if max_steps is not None:
            if max_steps <= view.step:
                raise InvalidInput(
                    f"max_steps={max_steps} would stop job {job_id!r} again at once: it is at "
                    f"step {view.step}; pass a larger one."
                )
            guard = max_steps
        elif guard is not None and view.step >= guard:
            raise InvalidInput(
                f"job {job_id!r} is at step {view.step}, its max_steps guard ({guard}); "
                "resuming it as is would fail it again. Pass a larger max_steps "
                "(`jobstate resume JOB --max-steps N`) if its stop condition is right."
            )
        now = self.clock.now_ms()
        upd = (
            Update()
            .set("status", JobStatus.RUNNING.value)
            .set("attempt", 0)
            .set("updated_at", now)
            .set("status_at", now)
            .set("due_at", now)
            .set("dk", schema.due_hash(job_id))
            .set("ls", schema.list_range(view.job_type, ACTIVE, view.created_at or now))
            .remove("error", "error_type", "expires_at", "not_before", "result")
            .where("#status = :old")
        )
        upd.values[":old"] = av(view.status.value)
        if guard is not None and guard != view.max_steps:
            upd.set("max_steps", guard)
        deadline = view.deadline_at
        if deadline_s is not None:
            deadline = now + int(deadline_s * 1000)
        elif view.deadline_at is not None and view.deadline_at <= now:
            # A resumed job gets a fresh deadline window of the same length.
            span = view.deadline_at - (view.created_at or now)
            deadline = now + max(span, 60_000)
        if deadline != view.deadline_at:
            upd.set("deadline_at", deadline)
        try:
            resp = self.call("update_item", Key=_job_key(job_id), ReturnValues="ALL_NEW",
                             **upd.kwargs())
        except ClientError as exc:
            if error_code(exc) != CONDITION_FAILED:
                raise
            return self.get(job_id)
        if deadline != view.deadline_at:
            from .effects import extend_expiry

            extend_expiry(self, job_id, deadline)
        return self.view(resp["Attributes"], secrets=False)

    # -- pause / resume a job type ------------------------------------------------------------

    def set_paused(self, job_type: str, paused: bool, reason: str = "") -> int:
        """Pause or resume a job type. Resuming makes its jobs (and their children, which
        a paused ancestor paused too) due now, so the next sweep dispatches them.

        Returns how many jobs were made due (0 when pausing). Both are idempotent:
        resuming a type that is not paused writes nothing and wakes nothing (its jobs were
        not held), so a repeated resume is a no-op — except after a resume that died
        while waking the jobs (the control item names that wake until it is done): then
        resuming again wakes them (a resume meeting a live wake wakes again: harmless).
        """
        codec.validate_job_type(job_type)
        if reason:
            validate_reason(reason)
        key = _control_key(job_type)
        now = self.clock.now_ms()
        wake = uuid.uuid4().hex  # this resume's wake: only it may say the wake is done
        if paused:
            self.call("put_item", Item={
                **key, "paused": av(True), "reason": av(reason or "paused by operator"),
                "updated_at": av(now)})
        else:
            try:
                self.call(
                    "update_item", Key=key,
                    UpdateExpression=("SET paused = :f, reason = :r, updated_at = :now, "
                                      "waking = :wake"),
                    ConditionExpression="paused = :t OR attribute_exists(waking)",
                    ExpressionAttributeValues={":f": av(False), ":t": av(True),
                                               ":r": av(reason or "resumed"),
                                               ":now": av(now), ":wake": av(wake)},
                )
            except ClientError as exc:
                if error_code(exc) != CONDITION_FAILED:
                    raise
                # Not paused (or never was): none of its jobs were held.
                with self._lock:
                    self._pause_cache[job_type] = (now + self.pause_cache_ms, False)
                return 0
        with self._lock:
            self._pause_cache[job_type] = (now + self.pause_cache_ms, paused)
        if paused:
            return 0
        woken = self._wake_type(job_type)
        # Refused: paused again since, or another resume's wake runs now (it clears its
        # own). Not written: the next resume wakes again, which is harmless.
        with contextlib.suppress(ClientError, StoreUnavailable):
            self.call("update_item", Key=key, UpdateExpression="REMOVE waking",
                      ConditionExpression="waking = :wake",
                      ExpressionAttributeValues={":wake": av(wake)})
        return woken

    def pause_state(self, job_type: str) -> bool | None:
        """True if the type is paused, False if it was paused and resumed since, None if
        it was never paused (no control item: an unknown or mistyped type). A strong read,
        for operators; steps use the cached `is_paused`."""
        codec.validate_job_type(job_type)
        return self._control(job_type, consistent=True)

    def _control(self, job_type: str, *, consistent: bool) -> bool | None:
        """The type's pause flag as stored; None without a control item."""
        resp = self.call("get_item", Key=_control_key(job_type), ConsistentRead=consistent)
        item = resp.get("Item")
        return None if item is None else bool(item.get("paused", {}).get("BOOL", False))

    def _wake_type(self, job_type: str) -> int:
        """Make every ready, unleased job of the type, and of its job trees, due now."""
        ids: list[str] = []
        for shard in range(schema.LIST_SHARDS):
            kw: dict[str, Any] = {
                "IndexName": schema.LIST_INDEX,
                "KeyConditionExpression": "lk = :lk AND begins_with(ls, :p)",
                "ExpressionAttributeValues": {":lk": av(f"L#{shard}"),
                                              ":p": av(f"{job_type}#{ACTIVE}#")},
            }
            while True:
                resp = self.call("query", **kw)
                ids.extend(item["pk"]["S"].removeprefix("JOB#") for item in resp["Items"])
                if "LastEvaluatedKey" not in resp:
                    break
                kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return self._wake(ids, seen=set())

    def _wake(self, ids: builtins.list[str], *, seen: set[str]) -> int:
        from .fanout import child_ids_of

        now = self.clock.now_ms()
        woken = 0
        todo = [i for i in dict.fromkeys(ids) if i not in seen]
        seen.update(todo)
        children: builtins.list[str] = []
        for raw in self.batch_get_raw([_job_key(i) for i in todo]):
            view = self.view(raw, secrets=False)
            if view.status.terminal:
                continue
            if view.children_total and view.status == JobStatus.WAITING:
                children.extend(child_ids_of(view))  # paused with their ancestor
            try:
                self.call(
                    "update_item", Key=_job_key(view.job_id),
                    UpdateExpression="SET due_at = :now, dk = :dk",
                    ConditionExpression=(
                        "attribute_exists(due_at) AND due_at > :now AND "
                        "attribute_not_exists(lease_owner) AND "
                        "(attribute_not_exists(not_before) OR not_before <= :now) AND "
                        "(attribute_not_exists(pending) OR pending <= :zero)"),
                    ExpressionAttributeValues={":now": av(now), ":zero": av(0),
                                               ":dk": av(schema.due_hash(view.job_id))},
                )
                woken += 1
            except ClientError as exc:
                if error_code(exc) != CONDITION_FAILED:
                    raise
        if children:
            woken += self._wake(children, seen=seen)
        return woken

    def is_paused(self, job_type: str, *, fresh: bool = False) -> bool:
        """Whether the type is paused; cached per container for `pause_cache_s`."""
        now = self.clock.now_ms()
        with self._lock:
            hit = self._pause_cache.get(job_type)
        if hit is not None and hit[0] > now and not fresh:
            return hit[1]
        # A kill switch may take a second to be seen: half the price of a strong read.
        paused = bool(self._control(job_type, consistent=fresh))
        with self._lock:
            self._pause_cache[job_type] = (now + self.pause_cache_ms, paused)
        return paused

    def paused_types(self) -> dict[str, bool]:
        """Control items of every type that was ever paused (a small Scan; operator use)."""
        out: dict[str, bool] = {}
        kw: dict[str, Any] = {
            "FilterExpression": "sk = :c",
            "ExpressionAttributeValues": {":c": av(schema.CONTROL_SK)},
        }
        while True:
            resp = self.call("scan", **kw)
            for item in resp.get("Items", []):
                out[item["pk"]["S"].removeprefix("TYPE#")] = item.get("paused", {}).get(
                    "BOOL", False
                )
            if "LastEvaluatedKey" not in resp:
                return out
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


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


def _ancestors(text: str | None, parent_type: str | None) -> tuple[str, ...]:
    value = codec.loads(text, None)
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(value)
    return (parent_type,) if parent_type else ()


def routing(job: JobView) -> dict[str, Any]:
    """Event fields that let a step's type (and its ancestors' types) pause it unread."""
    if not job.ancestors:
        return {}
    return {"parent_type": job.ancestors[-1], "ancestors": list(job.ancestors)}


def _job_key(job_id: str) -> dict[str, Any]:
    return {"pk": av(schema.job_pk(job_id)), "sk": av(schema.JOB_SK)}


def _control_key(job_type: str) -> dict[str, Any]:
    return {"pk": av(schema.type_pk(job_type)), "sk": av(schema.CONTROL_SK)}


def _status_in(statuses: builtins.list[str]) -> str:
    return "#status IN (" + ", ".join(f":st{i}" for i in range(len(statuses))) + ")"


def _n(item: dict[str, Any], name: str) -> int | None:
    v = item.get(name, {}).get("N")
    return None if v is None else int(v)


def _list_order(ls: str) -> str:
    # Newest first across shards: order by the timestamp, then the rest of the key.
    _, _, ts = ls.rpartition("#")
    return ts + ls


def _encode_token(starts: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(starts, sort_keys=True).encode()).decode()


MAX_TOKEN_CHARS = 8192  # a page's token: at most 8 start keys of ~400 bytes, base64


def _decode_token(token: str | None, prefix: str = "") -> dict[str, Any]:
    """The per-shard start keys of a `list` token, checked to be what `list` writes: a
    crafted token must be refused here, not reach DynamoDB as an ExclusiveStartKey."""
    if token is None:
        return {}
    bad = InvalidInput(
        "next_token is not one this store returned for this listing; pass the "
        "Page.next_token unchanged, with the same job type and status."
    )
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise bad
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
    except Exception:  # not base64, not UTF-8, not JSON, or nested too deeply
        raise bad from None
    if not isinstance(value, dict):
        raise bad
    shards = {f"L#{s}" for s in range(schema.LIST_SHARDS)}
    for lk, start in value.items():
        if lk not in shards:
            raise bad
        if start != "done" and not _start_key_ok(start, lk, prefix):
            raise bad
    return value


def _start_key_ok(start: Any, lk: str, prefix: str) -> bool:
    """A start key of the by-type index as `list` keeps it: a job item's keys, in this
    shard, inside the listed type's (and status's) key range."""
    if not isinstance(start, dict) or set(start) != {"pk", "sk", "lk", "ls"}:
        return False
    text = {}
    for name, attr in start.items():
        if not (isinstance(attr, dict) and set(attr) == {"S"} and isinstance(attr["S"], str)
                and 0 < len(attr["S"]) <= 512):
            return False
        text[name] = attr["S"]
    return (text["lk"] == lk and text["sk"] == schema.JOB_SK
            and text["pk"].startswith(schema.job_pk("")) and text["ls"].startswith(prefix))
