"""Callbacks (issue 18): a step waits for an outside system's answer, at no invocation.

A callback is a record `CB#<name>` under its job: open, then its one answer (SUCCEEDED,
FAILED, TIMED_OUT). Its token is `jscb1.<job id>.<name>.<secret>` (each part base64url);
the record stores only the secret's SHA-256, and every answer is one write conditioned on
that hash, so a forged or unknown token writes nothing. The token itself is kept in the
job's tokens (encrypted with them when a cipher is set; redacted wherever tokens are), so
a re-run step hands out the same one.

Waiting is the `sleep` transition with `wait_reason = callback:<name>` and the wake at
the callback's deadline (its timeout, or the heartbeat's): the sweeper times it out on
time through the `due` index. An answer is one write on the record, then
`cbtransitions.callback_wake` if the job waits on it. A step that read the record open
reads it once more after its wait is written, and wakes itself if the answer landed in
between, so no answer is lost whichever write comes first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from . import codec, faults, history, observe, schema
from . import serdes as serdes_mod
from .dynamo import Item, Refused, Update, av, condition
from .errors import (
    CallbackClosed,
    CallbackFailed,
    CallbackNotFound,
    CallbackTimedOut,
    InvalidInput,
    JobStateError,
)
from .items import CallbackItem, JobItem, callback_item
from .lease import Lease
from .schema import CB
from .signals import Suspend
from .table import Table
from .transitions import callbacks as cbtransitions

OPEN, SUCCEEDED, FAILED, TIMED_OUT = "OPEN", "SUCCEEDED", "FAILED", "TIMED_OUT"
TOKENS_KEY = "__jobstate_callbacks__"  # in ctx.tokens: name -> token
TOKEN_PREFIX = "jscb1"
SECRET_BYTES = 24  # 192 random bits
MAX_RESULT_BYTES = 64 * 1024
MAX_ERROR_CHARS = 4000
MAX_TIMEOUT_S = 366 * 24 * 3600
NO_HEARTBEAT_MS = 2 * MAX_TIMEOUT_S * 1000  # a heartbeat due never reached
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class CallbackWait:
    """A step's return value (through `Suspend`): it waits on callback `name` until
    `until_ms` (its deadline), or until the answer wakes it."""

    until_ms: int
    name: str

    @property
    def reason(self) -> str:
        return cbtransitions.wait_reason(self.name)


@dataclass(frozen=True)
class CallbackAnswer:
    """What an answer did: `woke` says the waiting job was made ready by it; `repeated`
    that the same answer was already recorded (nothing changed)."""

    job_id: str
    name: str
    woke: bool = False
    repeated: bool = False
    step: int | None = None
    job_type: str | None = None


# -- tokens ------------------------------------------------------------------------------------


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(part: str) -> str:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


def new_token(job_id: str, name: str) -> str:
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return ".".join((TOKEN_PREFIX, _b64(job_id), _b64(name), secret))


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: object) -> tuple[str, str, str]:
    """(job id, name, secret hash); `CallbackNotFound` (quoting nothing of it) if it is not
    a callback token."""
    if isinstance(token, str) and len(token) <= 2048:
        parts = token.strip().split(".")
        if len(parts) == 4 and parts[0] == TOKEN_PREFIX and parts[3]:
            try:
                job_id, name = _unb64(parts[1]), _unb64(parts[2])
            except (binascii.Error, UnicodeDecodeError, ValueError):
                job_id = name = ""
            if job_id and _NAME.fullmatch(name):
                return job_id, name, secret_hash(parts[3])
    raise CallbackNotFound(
        "that is not a callback token (it is shown nowhere: tokens are credentials); pass "
        "the token `cb.token` gave, whole. Nothing was written.")


# -- validation --------------------------------------------------------------------------------


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(f"a callback name is 1-64 characters of letters, digits and "
                           f"_.:- (got {name!r}); use one name per thing the job waits for.")
    return name


def _seconds(what: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 < value <= MAX_TIMEOUT_S):
        raise InvalidInput(f"callback {what} must be a number of seconds > 0 and at most "
                           f"{MAX_TIMEOUT_S} (a year), got {value!r}.")
    return max(1, math.ceil(value * 1000))


def result_json(result: Any, serdes: serdes_mod.Serdes = serdes_mod.JSON) -> str:
    """The stored text of an answer's result, by the job type's `serdes` (JSON unless
    `App.job(..., serdes=)` set one; a `JobStore` answer, which knows no job types, is
    JSON, marked so: the step reads it as JSON whatever its type's serdes)."""
    text = serdes_mod.encode(serdes, result, "callback result")
    if codec.size_of(text) > MAX_RESULT_BYTES:
        raise InvalidInput(
            f"a callback result is at most {MAX_RESULT_BYTES} bytes of JSON, this one is "
            f"{codec.size_of(text)}; store a big result elsewhere (S3) and send its "
            "location. Nothing was written.")
    return text


def error_text(error: object) -> str:
    if not isinstance(error, str) or not error.strip():
        raise InvalidInput("a callback failure needs a non-empty error string.")
    if len(error) > MAX_ERROR_CHARS:
        raise InvalidInput(f"a callback error is at most {MAX_ERROR_CHARS} characters, this "
                           f"one is {len(error)}. Nothing was written.")
    return error


# -- the step's side ---------------------------------------------------------------------------


class Callback:
    """A callback of the running step's job (`ctx.callback`): hand `token` to the sender,
    then `result()` returns its answer or ends the step waiting for it."""

    def __init__(self, table: Table, lease: Lease, item: CallbackItem, token: str,
                 serdes: serdes_mod.Serdes = serdes_mod.JSON) -> None:
        self._serdes = serdes
        self._table = table
        self._lease = lease
        self._item = item
        self._token = token
        self.name = item.name
        self.job_id = item.job_id

    def __repr__(self) -> str:  # never the token
        return f"Callback(job_id={self.job_id!r}, name={self.name!r}, state={self.state!r})"

    @property
    def token(self) -> str:
        """The credential the sender answers with (keep it out of logs)."""
        return self._token

    @property
    def state(self) -> str:
        """OPEN, SUCCEEDED, FAILED or TIMED_OUT, as last read."""
        return self._item.state

    @property
    def timeout_at(self) -> int:
        return self._item.timeout_at

    def result(self) -> Any:
        """The answer's result; `CallbackFailed` / `CallbackTimedOut`; or, with no answer
        yet, the step ends here waiting for it (its state committed)."""
        item = read(self._table, self.job_id, self.name) or self._item
        now = self._table.clock.now_ms()
        if item.state == OPEN and now >= item.due():
            item = _time_out(self._table, item, now)
        self._item = item
        if item.state == OPEN:
            raise Suspend(CallbackWait(item.due(), self.name))
        return outcome(item, self._serdes)


def outcome(item: CallbackItem, serdes: serdes_mod.Serdes = serdes_mod.JSON) -> Any:
    if item.state == SUCCEEDED:
        return serdes_mod.decode(serdes_mod.JSON if item.plain else serdes, item.result or "null",
                                 f"result of callback {item.name!r}")
    if item.state == FAILED:
        raise CallbackFailed(f"callback {item.name!r} of job {item.job_id!r} failed: "
                             f"{item.error}", job_id=item.job_id, name=item.name,
                             error=item.error or "")
    hb = item.heartbeat_due
    missed = ("a heartbeat was missed" if hb is not None and hb < item.timeout_at
              else "no answer came before its timeout")
    raise CallbackTimedOut(f"callback {item.name!r} of job {item.job_id!r} timed out: "
                           f"{missed}.", job_id=item.job_id, name=item.name)


def read(table: Table, job_id: str, name: str) -> CallbackItem | None:
    raw = table.get_item(schema.callback_key(job_id, name), expired_too=True)
    return None if raw is None else callback_item(raw)


def _time_out(table: Table, item: CallbackItem, now: int) -> CallbackItem:
    """Close an open callback past its deadline (a late answer is refused from now on);
    the record as it is if an answer won the race."""
    upd = Update().set(CB.STATE, TIMED_OUT).set(CB.ANSWERED_AT, now)
    upd.where(upd.eq(CB.STATE, OPEN))
    try:
        return callback_item(table.update(schema.callback_key(item.job_id, item.name), upd,
                                          returns="ALL_NEW"))
    except Refused as refusal:
        return callback_item(refusal.old) if refusal.old else item


def open_callback(table: Table, lease: Lease, tokens: MutableMapping[str, Any], name: str,
                  *, timeout_s: float, heartbeat_s: float | None,
                  checkpoint: Callable[[], None],
                  serdes: serdes_mod.Serdes = serdes_mod.JSON) -> Callback:
    """The job's callback `name`, created on first use (durable: a re-run step gets the
    same record and token). A new token is checkpointed with the job's tokens before its
    record is written, so a token handed out is never lost with the step."""
    validate_name(name)
    timeout_ms = _seconds("timeout_s", timeout_s)
    heartbeat_ms = _seconds("heartbeat_s", heartbeat_s, optional=True)
    assert timeout_ms is not None
    held = tokens.get(TOKENS_KEY)
    if held is not None and not isinstance(held, dict):
        raise InvalidInput(f"ctx.tokens[{TOKENS_KEY!r}] holds the job's callback tokens; "
                           "leave it alone.")
    token = (held or {}).get(name)
    found = read(table, lease.job_id, name)
    if token is None:
        if found is not None and not found.expired(table.clock.now_ms()):
            raise JobStateError(
                f"callback {name!r} of job {lease.job_id!r} exists but its token is no "
                f"longer in ctx.tokens[{TOKENS_KEY!r}]; a step must not remove it.",
                job_id=lease.job_id)
        token = new_token(lease.job_id, name)
        tokens[TOKENS_KEY] = {**(held or {}), name: token}
        checkpoint()
    if found is not None and not found.expired(table.clock.now_ms()):
        return Callback(table, lease, found, token, serdes)
    item = _new_item(table, lease, name, token, timeout_ms, heartbeat_ms)
    limit = (table.clock.now_ms() - 1) // 1000
    try:
        table.put(item, condition(
            lambda c: f"{c.absent(schema.PK)} OR {c.n(CB.EXPIRES)} <= {c.v(limit)}"))
    except Refused as refusal:  # created meanwhile (a resent put): the stored one holds
        raw = refusal.old
        if raw is None or callback_item(raw).secret_hash != item[CB.SECRET_HASH]["S"]:
            raise
        item = raw
    return Callback(table, lease, callback_item(item), token, serdes)


def _new_item(table: Table, lease: Lease, name: str, token: str, timeout_ms: int,
              heartbeat_ms: int | None) -> dict[str, Any]:
    now = table.clock.now_ms()
    timeout_at = now + timeout_ms
    item = {**schema.callback_key(lease.job_id, name), CB.STATE: av(OPEN),
            CB.SECRET_HASH: av(parse_token(token)[2]), CB.TIMEOUT_AT: av(timeout_at),
            CB.JOB_TYPE: av(lease.job_type), CB.JOB_CREATED: av(lease.job.created_at or now),
            CB.CREATED: av(now),
            CB.EXPIRES: av(timeout_at // 1000 + table.retention_s)}
    if heartbeat_ms is not None:
        item[CB.HEARTBEAT_S] = av(heartbeat_ms)
        item[CB.HEARTBEAT_DUE] = av(now + heartbeat_ms)
    return item


def after_wait(table: Table, job_id: str, name: str) -> bool:
    """Right after the step's wait is written: if the answer landed while it was being
    written (its wake found the job not waiting yet), wake the job now. True: it is
    ready, the caller sends its step."""
    item = read(table, job_id, name)
    if item is None or item.state == OPEN:
        return False
    return cbtransitions.callback_wake(table, item, dispatching=True) is not None


# -- the sender's side -------------------------------------------------------------------------


def complete(table: Table, token: object, result: Any = None, *,
             dispatching: bool = False,
             serdes: serdes_mod.Serdes = serdes_mod.JSON) -> CallbackAnswer:
    """Record a success (first answer wins; the same answer again is a no-op)."""
    text = result_json(result, serdes)
    return _answer(table, token, SUCCEEDED, text, dispatching,
                   plain=isinstance(serdes, serdes_mod.JsonSerdes))


def fail(table: Table, token: object, error: object, *,
         dispatching: bool = False) -> CallbackAnswer:
    """Record a failure: the step's `cb.result()` raises `CallbackFailed(error)`."""
    return _answer(table, token, FAILED, error_text(error), dispatching)


def heartbeat(table: Table, token: object) -> CallbackAnswer:
    """The sender is still at work: the heartbeat deadline starts again from now (one
    write; with `heartbeat_s` unset it only proves the callback is open)."""
    job_id, name, digest = parse_token(token)
    now = table.clock.now_ms()
    upd = Update().set(CB.ANSWERED_AT, now)
    upd.set_expr(CB.HEARTBEAT_DUE, f"{upd.v(now)} + if_not_exists({upd.n(CB.HEARTBEAT_S)}, "
                                   f"{upd.v(NO_HEARTBEAT_MS)})")
    _open_with(upd, digest, now)
    try:
        raw = table.update(schema.callback_key(job_id, name), upd, returns="ALL_NEW")
    except Refused as refusal:
        err = _refused(_as_seen(table, refusal, job_id, name), digest, job_id, name,
                       "heartbeat", None)
        assert err is not None  # a heartbeat is never "the same answer again"
        raise err from None
    item = callback_item(raw)
    if item.heartbeat_s is not None:
        cbtransitions.callback_extend(table, item, item.due())
    return CallbackAnswer(job_id, name)


def _open_with(upd: Update, digest: str, now: int) -> None:
    upd.where(upd.exists(schema.PK), upd.eq(CB.SECRET_HASH, digest), upd.eq(CB.STATE, OPEN),
              f"{upd.n(CB.TIMEOUT_AT)} > {upd.v(now)}",
              upd.absent_or(CB.HEARTBEAT_DUE, ">", now))


def _answer(table: Table, token: object, state: str, payload: str,
            dispatching: bool, *, plain: bool = False) -> CallbackAnswer:
    job_id, name, digest = parse_token(token)
    now = table.clock.now_ms()
    upd = Update().set(CB.STATE, state).set(CB.ANSWERED_AT, now)
    upd.set(CB.RESULT if state == SUCCEEDED else CB.ERROR, payload)
    if plain:  # read back as JSON even by a job type with a serdes of its own
        upd.set(CB.PLAIN, True)
    _open_with(upd, digest, now)
    repeated = False
    try:
        raw = table.update(schema.callback_key(job_id, name), upd, returns="ALL_NEW")
    except Refused as refusal:
        old = _as_seen(table, refusal, job_id, name)
        err = _refused(old, digest, job_id, name, state, payload)
        if err is not None or old is None:
            raise (err or _not_found(job_id, name)) from None
        raw, repeated = old, True
    # A resent answer does the rest again: a sender that died between recording the answer
    # and waking the job (or noting it) finishes the job on its retry. Both are idempotent:
    # the wake is fenced on the job waiting on this callback, the note's key is the answer's.
    cb = callback_item(raw)
    faults.point("callback_answered", job_id=job_id, callback=name)
    woken = cbtransitions.callback_wake(table, cb, dispatching=dispatching)
    faults.point("callback_woken", job_id=job_id, callback=name)
    _note(table, cb, woken)
    if woken is None:
        return CallbackAnswer(job_id, name, repeated=repeated)
    return CallbackAnswer(job_id, name, woke=True, repeated=repeated, step=woken.step,
                          job_type=woken.job_type)


def _note(table: Table, cb: CallbackItem, woken: JobItem | None) -> None:
    """The answer in the job's history (never its payload: a result may be large or
    sensitive), keyed by the answer so a resent answer puts it only if it is missing. Best
    effort: the answer itself is already recorded, so a failed note is logged, not raised
    (the sender retries; its retry notes it)."""
    try:  # not woken (not waiting yet, or woken before): no step to name, and no read
        history.note(table, _Answered(cb.job_id, woken.step if woken else 0,
                                      woken.deadline_at if woken else None),
                     f"callback_{cb.state.lower()}", detail=f"callback {cb.name!r}",
                     at_ms=cb.answered_at, once=True)
    except Exception as exc:  # a history write must not undo an answer
        observe.event("history_note_failed", logging.WARNING, job_id=cb.job_id,
                      detail=f"{type(exc).__name__}: the answer to callback {cb.name!r} is "
                             "recorded, its history note is not (a resent answer adds it)")


@dataclass(frozen=True)
class _Answered:
    """The job an answer is recorded under in its history (`history.note`)."""

    job_id: str
    step: int
    deadline_at: int | None


def _as_seen(table: Table, refusal: Refused, job_id: str, name: str) -> Item | None:
    """The record as the refused condition saw it (read back from an engine that does not
    return it)."""
    return refusal.old or table.get_item(schema.callback_key(job_id, name), expired_too=True)


def _not_found(job_id: str, name: str) -> CallbackNotFound:
    return CallbackNotFound(
        f"no callback answers to that token (job {job_id!r}, callback {name!r}): it was "
        "never issued, or it is forged, or its job expired. Nothing was written.",
        job_id=job_id)


def _refused(raw: Item | None, digest: str, job_id: str, name: str, state: str,
             payload: str | None) -> JobStateError | None:
    """Why an answer was refused: no such callback (or not this secret), the same answer
    already recorded (None: a no-op), or the callback ended otherwise."""
    old = callback_item(raw) if raw is not None else None
    if old is None or not hmac.compare_digest(old.secret_hash, digest):
        return _not_found(job_id, name)
    if old.state == state and payload == (old.result if state == SUCCEEDED else old.error):
        return None
    if old.state in (OPEN, TIMED_OUT):
        why = "it timed out (no answer, or no heartbeat, in time)"
    else:
        why = f"it was already answered ({old.state})"
    what = "heartbeat" if state == "heartbeat" else f"answer ({state})"
    return CallbackClosed(f"callback {name!r} of job {job_id!r} is closed: {why}; this "
                          f"{what} was not recorded.", job_id=job_id)
