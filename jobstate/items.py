"""Typed records of the table's items, decoded once at the edge.

The logic never reads a raw attribute value: what DynamoDB returns (GetItem, Query,
ALL_NEW, ALL_OLD, a transaction's refusal) becomes a `JobItem`, `EffectItem`, `ChildItem`
or `ControlItem` here. JSON fields (cursor, tokens, ...) stay text: they are decoded
where their meaning is known (records.py, store.py), tokens with the store's cipher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from .schema import CB, CH, CTL, FX, SK, J, job_id_of
from .status import JobStatus

T = TypeVar("T")


def _value(attr: Mapping[str, Any]) -> Any:
    if "S" in attr:
        return attr["S"]
    if "N" in attr:
        text = attr["N"]
        return int(text) if text.lstrip("-").isdigit() else float(text)
    if "BOOL" in attr:
        return bool(attr["BOOL"])
    return None


def _decode(cls: type[T], raw: Mapping[str, Any], fields_of: Mapping[str, str],
            **given: Any) -> T:
    """`cls` from the attributes of `raw` that `fields_of` maps to its fields (attribute
    name -> field, `_by_attr`); absent attributes take the field's default; `given` fields
    are taken as they are."""
    values = {}
    # Over the item's attributes, not the record's fields: a job item holds fewer than
    # half of JobItem's, and one is decoded on every claim.
    for attr, found in raw.items():
        field_name = fields_of.get(attr)
        if field_name is not None:
            values[field_name] = _value(found)
    values.update(given)
    return cls(**values)


def _by_attr(names: Mapping[str, str]) -> dict[str, str]:
    """A record's field -> attribute name map turned around (one field per attribute)."""
    out = {attr: field_name for field_name, attr in names.items()}
    if len(out) != len(names):
        raise ValueError("two fields of a record are decoded from one attribute")
    return out


@dataclass(frozen=True, slots=True)
class JobItem:
    """A job item as stored (JSON fields as text; tokens as written, maybe encrypted)."""

    job_id: str
    job_type: str
    status: JobStatus
    step: int
    input: str | None = None
    input_hash: str | None = None
    cursor: str | None = None
    tokens: str | None = None
    progress: str | None = None
    lease_owner: str | None = None
    lease_expires_at: int | None = None
    last_writer: str | None = None
    attempt: int = 0
    max_attempts: int | None = None
    max_steps: int | None = None
    deadline_at: int | None = None
    not_before: int | None = None
    wait_reason: str | None = None
    pending: int | None = None
    children_total: int | None = None
    max_concurrency: int | None = None
    parent_id: str | None = None
    child_index: int | None = None
    release_id: str | None = None
    parent_step: int | None = None
    parent_type: str | None = None
    ancestors: str | None = None
    spawn_step: int | None = None
    child_type: str | None = None
    child_policy: str | None = None
    child_ids: str | None = None
    children_ok: int | None = None
    children_failed: int | None = None
    min_successful: int | None = None
    tolerated: int | None = None
    verdict: str | None = None
    counted: str | None = None
    result: str | None = None
    error: str | None = None
    error_type: str | None = None
    created_at: int | None = None
    updated_at: int | None = None
    status_at: int | None = None
    paused_by: str | None = None
    invocations: int = 0
    takeovers: int = 0
    retries: int = 0
    run_ms: int = 0
    sweeps: int = 0
    redispatches: int = 0
    swept_at: int | None = None
    hop: int = 0
    history: bool | str | None = None  # its history mode as stored (historymode.py)
    recent: str | None = None
    due_at: int | None = None
    list_key: str | None = None
    expires_at: int | None = None

    def expired(self, now_ms: int) -> bool:
        return expired(self.expires_at, now_ms)

    def lease_live(self, now_ms: int) -> bool:
        return bool(self.lease_owner) and (self.lease_expires_at or 0) >= now_ms

    def in_bucket(self, bucket: str) -> bool:
        """Whether its by-type index entry is in `bucket` (ACTIVE, ASLEEP, PAUSED, ...)."""
        return (self.list_key or "").startswith(bucket + "#")


_JOB_RENAMED = {"job_type": J.TYPE, "lease_owner": J.OWNER, "lease_expires_at": J.LEASE,
                "deadline_at": J.DEADLINE, "created_at": J.CREATED, "updated_at": J.UPDATED,
                "due_at": J.DUE, "list_key": J.LIST_KEY, "expires_at": J.EXPIRES,
                "history": J.HISTORY_ON}
# field -> attribute name; a field with no name in schema.J fails here, at import.
_JOB_NAMES = {f.name: _JOB_RENAMED.get(f.name) or getattr(J, f.name.upper())
              for f in fields(JobItem)}
_JOB_FIELDS = _by_attr(_JOB_NAMES)


# A lease expiry or a wait of 0 is stored for "none" (the claim's condition is then one
# comparison each, not an existence test as well): read back as None.
_ZERO_IS_NONE = {J.LEASE: "lease_expires_at", J.NOT_BEFORE: "not_before"}


def job_item(raw: Mapping[str, Any]) -> JobItem:
    status = raw.get(J.STATUS, {}).get("S")
    return _decode(JobItem, raw, _JOB_FIELDS, status=JobStatus(status), **_none_for_zero(raw),
                   recent=_recent(raw))


def _recent(raw: Mapping[str, Any]) -> str | None:
    """The recent steps' records (a list, appended to step by step), space-separated."""
    records = raw.get(J.RECENT, {}).get("L")
    return None if not records else " ".join(r.get("S", "") for r in records)


def indexed_job(raw: Mapping[str, Any]) -> JobItem:
    """A job as an index projects it: its id from the key, what is not projected unset."""
    status = raw.get(J.STATUS, {}).get("S")
    return _decode(JobItem, raw, _JOB_FIELDS, job_id=pk_job_id(raw), status=JobStatus(status),
                   **_none_for_zero(raw))


def _none_for_zero(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {f: None for attr, f in _ZERO_IS_NONE.items() if raw.get(attr) == {"N": "0"}}


@dataclass(frozen=True, slots=True)
class EffectItem:
    """An effect record (`FX#<key>`)."""

    key: str
    state: str
    owner: str = ""
    step: int | None = None
    result: str | None = None
    started_at: int | None = None
    done_at: int | None = None
    semantics: str | None = None
    runs: int = 1
    lease_until: int | None = None
    last_error: str | None = None
    expires_at: int | None = None


_EFFECT_NAMES = {"state": FX.STATE, "owner": FX.OWNER, "step": FX.STEP, "result": FX.RESULT,
                 "started_at": FX.STARTED_AT, "done_at": FX.DONE_AT,
                 "semantics": FX.SEMANTICS, "runs": FX.RUNS, "lease_until": FX.LEASE_UNTIL,
                 "last_error": FX.LAST_ERROR, "expires_at": FX.EXPIRES}
_EFFECT_FIELDS = _by_attr(_EFFECT_NAMES)


def effect_item(raw: Mapping[str, Any]) -> EffectItem:
    key = str(raw[SK]["S"]).split("#", 1)[1]
    return _decode(EffectItem, raw, _EFFECT_FIELDS, key=key)


@dataclass(frozen=True, slots=True)
class ChildItem:
    """A child's link under its parent (`CHILD#<id>`), written when the child joined."""

    child_id: str
    status: str
    index: int | None = None
    result: str | None = None
    error: str | None = None
    joined_at: int | None = None
    expires_at: int | None = None


_CHILD_NAMES = {"child_id": CH.CHILD_ID, "status": CH.STATUS, "index": CH.INDEX,
                "result": CH.RESULT, "error": CH.ERROR, "joined_at": CH.JOINED_AT,
                "expires_at": CH.EXPIRES}
_CHILD_FIELDS = _by_attr(_CHILD_NAMES)


def child_item(raw: Mapping[str, Any]) -> ChildItem:
    return _decode(ChildItem, raw, _CHILD_FIELDS)


@dataclass(frozen=True, slots=True)
class ControlItem:
    """A job type's control item (its pause flag)."""

    job_type: str
    paused: bool = False
    reason: str | None = None
    updated_at: int | None = None
    waking: str | None = None


def control_item(raw: Mapping[str, Any]) -> ControlItem:
    job_type = str(raw["pk"]["S"]).split("#", 1)[1]
    return _decode(ControlItem, raw, _CONTROL_FIELDS, job_type=job_type)


_CONTROL_FIELDS = _by_attr({"paused": CTL.PAUSED, "reason": CTL.REASON,
                            "updated_at": CTL.UPDATED, "waking": CTL.WAKING})


@dataclass(frozen=True, slots=True)
class CallbackItem:
    """A callback record (`CB#<name>` under its job): open, or its one answer."""

    job_id: str
    name: str
    state: str
    secret_hash: str = ""
    result: str | None = None
    error: str | None = None
    timeout_at: int = 0
    heartbeat_s: int | None = None
    heartbeat_due: int | None = None
    job_type: str = ""
    job_created: int = 0
    created_at: int | None = None
    answered_at: int | None = None
    expires_at: int | None = None
    plain: bool = False  # its result is plain JSON, whatever its job type's serdes

    def expired(self, now_ms: int) -> bool:
        return expired(self.expires_at, now_ms)

    def due(self) -> int:
        """When it times out if no answer (or heartbeat) comes."""
        return min(self.timeout_at, self.heartbeat_due or self.timeout_at)


_CALLBACK_NAMES = {"state": CB.STATE, "secret_hash": CB.SECRET_HASH, "result": CB.RESULT,
                   "error": CB.ERROR, "timeout_at": CB.TIMEOUT_AT,
                   "heartbeat_s": CB.HEARTBEAT_S, "heartbeat_due": CB.HEARTBEAT_DUE,
                   "job_type": CB.JOB_TYPE, "job_created": CB.JOB_CREATED,
                   "created_at": CB.CREATED, "answered_at": CB.ANSWERED_AT,
                   "expires_at": CB.EXPIRES, "plain": CB.PLAIN}
_CALLBACK_FIELDS = _by_attr(_CALLBACK_NAMES)


def callback_item(raw: Mapping[str, Any]) -> CallbackItem:
    name = str(raw[SK]["S"]).split("#", 1)[1]
    return _decode(CallbackItem, raw, _CALLBACK_FIELDS, job_id=pk_job_id(raw), name=name)


def pk_job_id(raw: Mapping[str, Any]) -> str:
    """The job id in a raw item's partition key."""
    return job_id_of(str(raw["pk"]["S"]))


def expired(expires_at_s: int | None, now_ms: int) -> bool:
    """TTL deletes late (up to days): an item past its `expires_at` reads as absent."""
    return expires_at_s is not None and expires_at_s * 1000 < now_ms
