"""The job table: its configuration, the one call path, typed reads and refusals.

Every request goes through `Table.call` (one botocore client, shared with PynamoDB for
`create_table`), so a test can count or fault requests in one place. Conditional writes
go through `update`/`put`/`delete`/`transact`, which turn a refused condition into
`dynamo.Refused` / `dynamo.TransactionRefused` carrying the items the conditions saw.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from . import codec, config, dynamo, kms, redact, schema
from .clock import SYSTEM_CLOCK, Clock
from .codec import Cipher
from .dynamo import Item, Update
from .errors import (
    InvalidInput,
    JobNotFound,
    JobStateError,
    StoreUnavailable,
    TableNotFound,
    TokensUnreadable,
    TokensUnwritable,
)
from .items import JobItem, expired, job_item
from .records import JobView, job_view

DEFAULT_TABLE = "jobstate"
ENCRYPTED_PREFIX = "enc:"
TOKENS, EFFECT_RESULT = "tokens", "effect-result"  # what a ciphertext holds (its context)
KMS_KEY_ENV = "JOBSTATE_KMS_KEY_ARN"
TXN_CONFLICT_RETRIES = 5
INPUT_CACHE = 256  # inputs kept per container (the oldest go first)


class Table:
    """One DynamoDB table of jobs: where it is, how long items live, how tokens are kept."""

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
            cipher = kms.cipher_from_env()  # needs the optional extra: jobstate[kms]
        self.cipher = cipher
        self.models = schema.build_models(self.table_name, self.endpoint_url,
                                          self._region.name if self._region else "")
        self._client = client
        self._lock = threading.Lock()
        self._inputs: dict[tuple[str, str | None], str] = {}  # job inputs read, by id/hash

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(table_name={self.table_name!r}, "
                f"endpoint_url={self.endpoint_url!r})")

    # -- connection ---------------------------------------------------------------------

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
        """The botocore DynamoDB client every request of this table goes through."""
        client = self._client
        if client is not None:
            return client
        with self._lock:
            if self._client is None:  # created lazily, never at import time
                model = self.models.job
                model.Meta.region = self.region  # before PynamoDB makes its connection
                try:
                    self._client = model._get_connection().connection.client
                except BotoCoreError as exc:  # a missing profile, a malformed region
                    raise self._unreachable(exc) from exc
            return self._client

    @client.setter
    def client(self, value: Any) -> None:
        self._client = value

    def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One DynamoDB request. Refused conditions come back as ClientError; throttling
        past botocore's retries, a lost connection or a missing table as StoreUnavailable
        / TableNotFound. A transaction that met a concurrent one is tried again."""
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
                if operation == "transact_write_items" and dynamo.is_conflict(exc):
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
        code = dynamo.error_code(exc)
        if code == dynamo.NOT_FOUND:
            raise TableNotFound(
                f"table {self.table_name!r} does not exist at "
                f"{self._where()}; create it with "
                "`jobstate create-table` (or store.create_table()), or set JOBSTATE_TABLE."
            ) from exc
        if dynamo.is_transient(exc):
            raise StoreUnavailable(
                f"DynamoDB kept failing with {code} after retries; the request is safe to "
                "retry later."
            ) from exc

    def _model_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        client = self.client
        self.models.job._get_connection().connection._client = client  # one client
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

    # -- the table ----------------------------------------------------------------------

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
                    TimeToLiveSpecification={"Enabled": True, "AttributeName": schema.J.EXPIRES},
                )
        except ClientError as exc:
            # DynamoDB Local rejects a second enable; the TTL is on either way.
            if dynamo.error_code(exc) != "ValidationException":
                raise
        return not existed

    def delete_table(self) -> None:
        self._model_call(self.models.job.delete_table)

    # -- requests -----------------------------------------------------------------------

    def update(self, key: Item, upd: Update, *, returns: str = "NONE") -> Item:
        """A conditional UpdateItem; the returned attributes (`returns`), or `Refused`."""
        try:
            resp = self.call("update_item", Key=key, ReturnValues=returns,
                             ReturnValuesOnConditionCheckFailure="ALL_OLD", **upd.kwargs())
        except ClientError as exc:
            raise dynamo.refused(exc) or exc from None
        return dict(resp.get("Attributes") or {})

    def put(self, item: Item, cond: dict[str, Any] | None = None) -> None:
        """A PutItem (conditional with `cond`'s keywords), or `Refused`."""
        try:
            self.call("put_item", Item=item, ReturnValuesOnConditionCheckFailure="ALL_OLD",
                      **(cond or {}))
        except ClientError as exc:
            raise dynamo.refused(exc) or exc from None

    def delete(self, key: Item, cond: dict[str, Any] | None = None) -> None:
        """A DeleteItem (conditional with `cond`'s keywords), or `Refused`."""
        try:
            self.call("delete_item", Key=key, ReturnValuesOnConditionCheckFailure="ALL_OLD",
                      **(cond or {}))
        except ClientError as exc:
            raise dynamo.refused(exc) or exc from None

    def transact(self, actions: list[dict[str, Any]], *, token: str | None = None) -> None:
        """TransactWriteItems, or `TransactionRefused` naming the refused actions."""
        kw: dict[str, Any] = {"ClientRequestToken": token} if token else {}
        try:
            self.call("transact_write_items", TransactItems=actions, **kw)
        except ClientError as exc:
            raise dynamo.transaction_refused(exc) or exc from None

    def get_item(self, key: Item, *, consistent: bool = True,
                 expired_too: bool = False) -> Item | None:
        """One item, or None if it is absent or expired (TTL deletes late)."""
        resp = self.call("get_item", Key=key, ConsistentRead=consistent)
        item = resp.get("Item")
        if not item or (self.expired(item) and not expired_too):
            return None
        return dict(item)

    def batch_get(self, keys: list[Item]) -> list[Item]:
        """BatchGetItem in chunks of 100, retrying unprocessed keys; order not kept;
        expired items left out."""
        out: list[Item] = []
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
        return [dict(item) for item in out if not self.expired(item)]

    def partition(self, job_id: str, prefix: str = "") -> Iterator[Item]:
        """The items of a job's partition (those whose sort key starts with `prefix`)."""
        values = {":pk": dynamo.av(schema.job_pk(job_id))}
        key = "pk = :pk"
        if prefix:
            values[":p"] = dynamo.av(prefix)
            key += " AND begins_with(sk, :p)"

        def fetch(start: Item | None) -> dict[str, Any]:
            page: dict[str, Any] = {}  # a literal: the IAM analysis sees no index here
            if start:
                page["ExclusiveStartKey"] = start
            return self.call("query", KeyConditionExpression=key,
                             ExpressionAttributeValues=values, ConsistentRead=True, **page)

        return dynamo.pages(fetch)

    def expired(self, raw: Item) -> bool:
        exp = raw.get(schema.J.EXPIRES, {}).get("N")
        return expired(None if exp is None else int(exp), self.clock.now_ms())

    # -- job items ----------------------------------------------------------------------

    def get_job_item(self, job_id: str) -> JobItem | None:
        raw = self.get_item(schema.job_key(job_id))
        return None if raw is None else job_item(raw)

    def view(self, item: JobItem | Item, *, secrets: bool = True) -> JobView:
        """The public view of a job (a raw item is decoded first); tokens decrypted when
        `secrets`, else redacted; an input kept in its own item read (once per container)."""
        item = item if isinstance(item, JobItem) else job_item(item)
        tokens: dict[str, Any]
        if secrets:
            tokens = self.decode_tokens(item.tokens, job_id=item.job_id)
        elif item.tokens and item.tokens.startswith(ENCRYPTED_PREFIX):
            tokens = {"encrypted": redact.REDACTED}
        else:
            tokens = redact.redact(codec.loads(item.tokens, {}) or {})
        if item.input is None and item.input_hash is not None:
            return job_view(item, tokens, codec.loads(self.input_json(item)),
                            dispatch_timeout_ms=self.dispatch_timeout_ms)
        return job_view(item, tokens, dispatch_timeout_ms=self.dispatch_timeout_ms)

    def input_json(self, item: JobItem) -> str:
        """The job's input as stored: inline, or in its input item, which is read once per
        container (it never changes: a job id names one input)."""
        if item.input is not None:
            return item.input
        key = (item.job_id, item.input_hash)
        with self._lock:
            cached = self._inputs.get(key)
        if cached is not None:
            return cached
        raw = self.get_item(schema.input_key(item.job_id))
        if raw is None or raw.get(schema.J.INPUT_HASH, {}).get("S") != item.input_hash:
            raise JobNotFound(f"the input of job {item.job_id!r} is missing from table "
                              f"{self.table_name!r} (deleted by hand?).", job_id=item.job_id)
        text = str(raw[schema.IN.INPUT]["S"])
        with self._lock:
            if len(self._inputs) >= INPUT_CACHE:
                self._inputs.pop(next(iter(self._inputs)))
            self._inputs[key] = text
        return text

    # -- tokens and sealed values -------------------------------------------------------

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

    def seal(self, text: str, *, job_id: str, kind: str) -> str:
        """`text` encrypted with the cipher (bound to the job), as it is stored."""
        assert self.cipher is not None
        return ENCRYPTED_PREFIX + self.cipher.seal(text, self.cipher_context(job_id, kind))

    def cipher_context(self, job_id: str | None, kind: str) -> dict[str, str]:
        """What a ciphertext is bound to: this table, the job, tokens or an effect result."""
        if job_id is None and self.cipher is not None and self.cipher.context:
            raise InvalidInput(f"encrypting {kind} with a context cipher needs the job id")
        return {"table": self.table_name, "job_id": job_id or "", "kind": kind}

    def decrypt(self, text: str, *, what: str, job_id: str | None = None,
                kind: str = TOKENS) -> str:
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
        text = self.decrypt(text, what=f"the tokens of job {job_id!r}", job_id=job_id,
                            kind=TOKENS)
        value = codec.loads(text, {})
        return value if isinstance(value, dict) else {}


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
