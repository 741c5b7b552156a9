"""Effect records (`FX#<key>` under the job): their shape, their stored results, and the
operator's hand on them (`jobstate effect list/done/retry`).

A record is put STARTED (owner = the step's lease) before its call and updated to DONE with
the result after. Results are JSON, size-checked, and encrypted with the store's cipher
when it has one (they often hold the very tokens a job keeps, such as an external job id).
"""

from __future__ import annotations

from typing import Any

from . import codec, history, redact, schema
from .dynamo import Item, Refused, Update, av, condition
from .errors import InvalidInput, JobNotFound, StateTooLarge
from .items import EffectItem, effect_item
from .lease import Lease
from .schema import FX
from .serdes import JSON, Serdes, decode, encode
from .status import Semantics
from .table import EFFECT_RESULT, Table

STARTED = "STARTED"
DONE = "DONE"
MAX_KEY_CHARS = 512
RESULT_BUDGET_BYTES = 300 * 1024
NOT_STORED = "ResultNotStored:"  # last_error of an effect whose call returned, result unstored


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


def expires_at(table: Table, deadline_at: int | None) -> int | None:
    """TTL of a job's effect records: `retention` after the job's deadline.

    The job cannot run past its deadline (a resume moves the deadline and these TTLs
    with it), so a DONE record never expires while the job can still ask for it. A job
    with no deadline keeps its effect records until they are deleted by hand.
    """
    if deadline_at is None:
        return None
    return deadline_at // 1000 + table.retention_s


def started_item(table: Table, lease: Lease, key: str, sem: Semantics, now: int) -> Item:
    item = {
        **schema.effect_key(lease.job_id, key),
        FX.STATE: av(STARTED), FX.OWNER: av(lease.owner), FX.STEP: av(lease.step),
        FX.STARTED_AT: av(now), FX.SEMANTICS: av(sem.value), FX.RUNS: av(1),
        # The owner's lease expiry (its clock): an at-most-once take-over waits past it.
        FX.LEASE_UNTIL: av(lease.expires_at),
    }
    ttl = expires_at(table, lease.job.deadline_at)
    if ttl is not None:
        item[FX.EXPIRES] = av(max(ttl, now // 1000 + table.retention_s))
    return item


def absent() -> dict[str, Any]:
    """The condition of a STARTED put: no record under this key yet."""
    return condition(lambda c: c.absent(schema.PK))


def encode_result(table: Table, value: Any, key: str, *, job_id: str,
                  serdes: Serdes = JSON) -> str:
    """The stored form of an effect's result: JSON (or `serdes`' text, serdes.py),
    encrypted if the store has a cipher (bound to the job when the cipher takes a
    context)."""
    text = encode(serdes, value, f"result of effect {key!r} of job {job_id!r}")
    if table.cipher is not None and value is not None:
        text = table.seal(text, job_id=job_id, kind=EFFECT_RESULT)
    if codec.size_of(text) > RESULT_BUDGET_BYTES:
        raise StateTooLarge(
            f"result of effect {key!r} is {codec.size_of(text)} bytes stored; effect results "
            f"are limited to {RESULT_BUDGET_BYTES} bytes (DynamoDB items are at most 400 KB). "
            "Return an id or an S3 key instead of the data."
        )
    return text


def decode_result(table: Table, record: EffectItem, job_id: str,
                  serdes: Serdes = JSON) -> Any:
    text = record.result
    if text:
        text = table.decrypt(text, what=f"an effect result of job {job_id!r}", job_id=job_id,
                             kind=EFFECT_RESULT)
    return decode(serdes, text, f"result of effect {record.key!r} of job {job_id!r}")


def done_update(lease: Lease, result_json: str, now: int, expect_owner: str) -> Update:
    """STARTED by `expect_owner` -> DONE with its result, owned by this lease."""
    upd = (Update().set(FX.STATE, DONE).set(FX.RESULT, result_json).set(FX.DONE_AT, now)
           .set(FX.OWNER, lease.owner).remove(FX.LAST_ERROR))
    return upd.where(upd.eq(FX.STATE, STARTED), upd.eq(FX.OWNER, expect_owner))


def mine(lease: Lease) -> Update:
    """A condition (and no change yet): STARTED and owned by this lease."""
    upd = Update()
    return upd.where(upd.eq(FX.STATE, STARTED), upd.eq(FX.OWNER, lease.owner))


def take_over_update(lease: Lease, old_owner: str, now: int) -> Update:
    upd = (Update().set(FX.OWNER, lease.owner).set(FX.STEP, lease.step).set(FX.STARTED_AT, now)
           .set(FX.LEASE_UNTIL, lease.expires_at).add(FX.RUNS, 1))
    return upd.where(upd.eq(FX.STATE, STARTED), upd.eq(FX.OWNER, old_owner))


def records(table: Table, job_id: str) -> list[EffectItem]:
    return [effect_item(raw) for raw in table.partition(job_id, schema.EFFECT_PREFIX)]


# -- operator actions ------------------------------------------------------------------------


def list_effects(store: Table, job_id: str, *, secrets: bool = False) -> list[dict[str, Any]]:
    """A job's effect records. Results are redacted unless `secrets` (they may hold tokens,
    e.g. an external job id), and decrypted with the store's cipher when they are shown."""
    codec.validate_job_id(job_id)
    out = []
    for record in records(store, job_id):
        has_result = record.result not in (None, "null")
        out.append({
            "key": record.key, "state": record.state, "step": record.step,
            "owner": record.owner or None, "runs": record.runs,
            "last_error": record.last_error,
            "result": (decode_result(store, record, job_id) if secrets
                       else redact.REDACTED if has_result else None),
        })
    return out


def mark_effect(store: Table, job_id: str, key: str, *, done: bool,
                result: Any = None, by: str | None = None, reason: str = "") -> None:
    """Settle a STARTED effect by hand: DONE with `result`, or forgotten so it runs again.

    Refused while a step of the job holds a live lease: that step may be running the
    effect right now. Settle effects of a parked (FAILED) job, then resume it. Recorded in
    the job's history as `settled`, with `by` (who) and `reason`.
    """
    codec.validate_job_id(job_id)
    validate_key(key)
    job = store.get_job_item(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}.", job_id=job_id)
    now = store.clock.now_ms()
    if job.lease_live(now):
        # Whatever the status: a cancelled or paused job's step keeps running (and may be
        # inside this very effect) until it returns or its lease runs out.
        lease_until = job.lease_expires_at or 0
        raise InvalidInput(
            f"a step of job {job_id!r} holds its lease until {lease_until} ms epoch and may "
            "be running this effect right now; its effects cannot be settled by hand until "
            "that step has ended. Cancel the job if it should stop, wait "
            f"{max(0, (lease_until - now) // 1000) + 1} s for the lease to run out (or for "
            "the step to return), then settle and `jobstate resume` it."
        )
    k = schema.effect_key(job_id, key)
    try:
        if done:
            upd = (Update().set(FX.STATE, DONE)
                   .set(FX.RESULT, encode_result(store, result, key, job_id=job_id))
                   .set(FX.DONE_AT, now).remove(FX.LAST_ERROR))
            store.update(k, upd.where(upd.eq(FX.STATE, STARTED)))
        else:
            store.delete(k, condition(lambda c: c.eq(FX.STATE, STARTED)))
    except Refused:
        raise InvalidInput(
            f"effect {key!r} of job {job_id!r} is not STARTED (it is DONE or absent); only "
            "an effect whose outcome is unknown can be settled by hand."
        ) from None
    what = "marked DONE" if done else "forgotten (it runs again)"
    history.note(store, job, "settled", who=by,
                 detail=f"effect {key!r} {what}" + (f": {reason}" if reason else ""))


def extend_expiry(table: Table, job_id: str, deadline_at: int | None) -> int:
    """Move the TTL of a job's effect records to match a new deadline (on resume).

    Returns how many records changed. With no deadline the TTL is removed.
    """
    ttl = expires_at(table, deadline_at)
    changed = 0
    for record in records(table, job_id):
        current = record.expires_at
        if (ttl is not None and current is not None and current >= ttl) or (
                ttl is None and current is None):
            continue
        upd = Update().remove(FX.EXPIRES) if ttl is None else Update().set(FX.EXPIRES, ttl)
        try:
            table.update(schema.effect_key(job_id, record.key),
                         upd.where(upd.exists(schema.PK)))
            changed += 1
        except Refused:
            continue
    return changed
