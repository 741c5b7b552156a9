"""The step protocol: claim, checkpoint, commit, fail — every write fenced by the lease.

Claim is one conditional UpdateItem returning ALL_NEW (the record, no extra read); when it
fails, ALL_OLD says why. Every later write of the step is conditional on
`lease_owner = me AND step = N AND status = RUNNING`, so a stale invocation (its lease
expired and was taken over, or the job was cancelled) can never overwrite newer state.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from botocore.exceptions import ClientError

from . import codec, observe, schema
from .dynamo import (
    CANCELLED_BY_CONDITION,
    CONDITION_FAILED,
    TRANSACTION_CANCELLED,
    Update,
    av,
    error_code,
    old_item,
)
from .errors import (
    InvalidEvent,
    JobCancelled,
    JobNotFound,
    LeaseLost,
    StateNotSerializable,
    StoreUnavailable,
    TokensUnreadable,
)
from .records import JobView
from .status import ClaimOutcome, JobStatus
from .store import JobStore, _job_key

NO_OWNER = "-"
FENCE = "lease_owner = :me AND #step = :n AND #status = :running"


@dataclass(frozen=True)
class Lease:
    """What an invocation holds while it runs step `step` of a job."""

    job_id: str
    job_type: str
    step: int
    owner: str
    expires_at: int
    claimed_at: int
    request_id: str
    job: JobView
    takeover: bool = False


@dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    lease: Lease | None
    job: JobView | None
    detail: str = ""

    @property
    def claimed(self) -> bool:
        return self.lease is not None


def new_owner(request_id: str) -> str:
    # Lambda may deliver one event twice with the same request id: add a nonce so two
    # deliveries never share a lease.
    return f"{request_id[:64]}/{uuid.uuid4().hex[:12]}"


def claim(
    store: JobStore,
    job_id: str,
    step: int,
    *,
    request_id: str,
    lease_until_ms: int,
    waiting_children_ok: bool = False,
    job_type: str | None = None,
) -> ClaimResult:
    """Try to take step `step` of the job. One conditional write; no reads.

    A job waiting for children is not claimable, except by the sweeper's runaway guard
    (`waiting_children_ok`), which fails a parent past its deadline. With `job_type`, a
    job of another type is not claimed (the event that named it is refused).
    """
    now = store.clock.now_ms()
    owner = new_owner(request_id)
    upd = (
        Update()
        .set("status", JobStatus.RUNNING.value)
        .set("lease_owner", owner)
        .set("lease_expires_at", lease_until_ms)
        .set_expr("prev_owner", "if_not_exists(lease_owner, :none)")
        .set("due_at", lease_until_ms)  # if this invocation dies, the sweeper finds the job
        .set("dk", schema.due_hash(job_id))
        .set("updated_at", now)
        .remove("not_before", "wait_reason", "redispatches")  # it arrived: no backoff
        .add("invocations", 1)
        .where("attribute_exists(pk)")
        .where("#step = :n")
        .where("#status IN (:pending, :running, :waiting)")
        .where("attribute_not_exists(lease_expires_at) OR lease_expires_at < :now")
        .where("attribute_not_exists(not_before) OR not_before <= :now")
    )
    if not waiting_children_ok:
        upd.where("attribute_not_exists(pending) OR pending <= :zero")
        upd.values[":zero"] = av(0)
    if job_type is not None:
        upd.where("job_type = :jt")
        upd.values[":jt"] = av(job_type)
    upd.name("step")
    upd.values.update({
        ":none": av(NO_OWNER), ":n": av(step), ":now": av(now),
        ":pending": av("PENDING"), ":running": av("RUNNING"), ":waiting": av("WAITING"),
    })
    try:
        resp = store.call(
            "update_item",
            Key=_job_key(job_id),
            ReturnValues="ALL_NEW",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
            **upd.kwargs(),
        )
    except ClientError as exc:
        if error_code(exc) != CONDITION_FAILED:
            raise
        raw = old_item(exc)
        if not _is_mine(raw, owner, step):
            return _why_not(store, job_id, step, raw, now, job_type)
        # botocore retried a claim whose first attempt was applied (its response was
        # lost): the record already names this invocation, so the claim is ours.
    else:
        raw = resp["Attributes"]
    assert raw is not None
    try:
        job = store.view(raw)
    except TokensUnreadable as exc:
        return _park_unreadable(store, raw, step, owner, lease_until_ms, now, request_id, exc)
    prev = raw.get("prev_owner", {}).get("S", NO_OWNER)
    takeover = prev != NO_OWNER
    lease = Lease(job_id, job.job_type, step, owner, lease_until_ms, now, request_id, job,
                  takeover)
    outcome = ClaimOutcome.TAKEOVER if takeover else ClaimOutcome.CLAIMED
    return ClaimResult(outcome, lease, job, f"took over from {prev}" if prev != NO_OWNER else "")


def _is_mine(raw: dict[str, Any] | None, owner: str, step: int) -> bool:
    return (raw is not None and raw.get("lease_owner", {}).get("S") == owner
            and raw.get("step", {}).get("N") == str(step)
            and raw.get("status", {}).get("S") == JobStatus.RUNNING.value)


def _park_unreadable(store: JobStore, raw: dict[str, Any], step: int, owner: str,
                     lease_until_ms: int, now: int, request_id: str,
                     exc: TokensUnreadable) -> ClaimResult:
    """The claim succeeded but this deployment cannot decrypt the job's tokens.

    Running the step without its tokens (or letting the error escape with the lease held)
    would loop through the sweeper until the deadline: fail the job instead, keeping the
    stored (encrypted) tokens untouched, so it can be resumed once the cipher is fixed.
    """
    from .fanout import join_actions

    job = store.view(raw, secrets=False)
    reason = (f"{exc} Step {step} did not run; the job is FAILED with its state intact: fix "
              f"the cipher and `jobstate resume {job.job_id}`.")
    lease = Lease(job.job_id, job.job_type, step, owner, lease_until_ms, now, request_id, job)
    state = State(raw.get("cursor", {}).get("S", "{}"), raw.get("tokens", {}).get("S", ""),
                  raw.get("progress", {}).get("S", "{}"))
    try:
        finish(store, lease, state, JobStatus.FAILED, error=reason,
               error_type="TokensUnreadable",
               extra_actions=join_actions(store, lease, "FAILED", None, reason))
    except LeaseLost:
        return ClaimResult(ClaimOutcome.IN_FLIGHT, None, job, "lost the lease while failing")
    return ClaimResult(ClaimOutcome.FINISHED, None, job, reason)


def _why_not(
    store: JobStore, job_id: str, step: int, raw: dict[str, Any] | None, now: int,
    job_type: str | None = None,
) -> ClaimResult:
    if raw is None or store._expired(raw):
        raise JobNotFound(
            f"no job {job_id!r}: the event names a job that does not exist in table "
            f"{store.table_name!r} (wrong table, or it expired).",
            job_id=job_id,
        )
    job = store.view(raw, secrets=False)
    if job_type is not None and job.job_type != job_type:
        raise InvalidEvent(
            f"the event names job type {job_type!r}, but job {job_id!r} is of type "
            f"{job.job_type!r}; nothing was run or written. Send step events as jobstate "
            "builds them (jobstate.step_event), or leave job_type out.", job_id=job_id)
    if job.status.terminal:
        return ClaimResult(ClaimOutcome.FINISHED, None, job, f"job is {job.status.value}")
    if job.step > step:
        return ClaimResult(ClaimOutcome.DUPLICATE, None, job, f"job is at step {job.step}")
    if job.step < step:
        return ClaimResult(ClaimOutcome.NOT_YET, None, job,
                           f"job is only at step {job.step}; event for step {step} is early")
    if job.lease_owner and (job.lease_expires_at or 0) >= now:
        return ClaimResult(ClaimOutcome.IN_FLIGHT, None, job,
                           f"step {step} is held by {job.lease_owner} until "
                           f"{job.lease_expires_at}")
    if (job.not_before or 0) > now:
        return ClaimResult(ClaimOutcome.NOT_YET, None, job,
                           f"step {step} waits until {job.not_before} ({job.wait_reason})")
    if (job.pending_children or 0) > 0:
        return ClaimResult(ClaimOutcome.NOT_YET, None, job,
                           f"waiting for {job.pending_children} children")
    return ClaimResult(ClaimOutcome.IN_FLIGHT, None, job, "record changed during the claim")


def _fenced(lease: Lease, now: int) -> Update:
    # `last_writer` lets a resent write (botocore retries one whose response was lost)
    # recognise that its first attempt was applied.
    upd = Update().set("updated_at", now).set("last_writer", lease.owner).where(FENCE)
    upd.name("step")
    upd.name("status")
    upd.values.update({":me": av(lease.owner), ":n": av(lease.step),
                       ":running": av(JobStatus.RUNNING.value)})
    return upd


def _lost(store: JobStore, lease: Lease, exc: ClientError, what: str) -> LeaseLost:
    raw = old_item(exc)
    if raw is None:
        raw = store.get_raw(lease.job_id)
    if raw is not None and raw.get("status", {}).get("S") == JobStatus.CANCELLED.value:
        return JobCancelled(
            f"job {lease.job_id!r} was cancelled while step {lease.step} ran; its {what} was "
            "not written and nothing will be dispatched.",
            job_id=lease.job_id,
        )
    holder = raw.get("lease_owner", {}).get("S") if raw else None
    at = raw.get("step", {}).get("N") if raw else None
    return LeaseLost(
        f"step {lease.step} of job {lease.job_id!r} is no longer held by this invocation "
        f"(job at step {at}, lease {holder or 'none'}); its {what} was not written and "
        "nothing will be dispatched. Stop work and return.",
        job_id=lease.job_id,
    )


def _update(store: JobStore, lease: Lease, upd: Update, what: str,
            returns: str = "NONE",
            applied: Callable[[Mapping[str, Any]], bool] | None = None) -> dict[str, Any]:
    try:
        return store.call(
            "update_item", Key=_job_key(lease.job_id), ReturnValues=returns,
            ReturnValuesOnConditionCheckFailure="ALL_OLD", **upd.kwargs(),
        )
    except ClientError as exc:
        if error_code(exc) != CONDITION_FAILED:
            raise
        raw = old_item(exc)
        if (applied is not None and raw is not None
                and raw.get("last_writer", {}).get("S") == lease.owner and applied(raw)):
            # botocore resent this write after its response was lost; the first attempt
            # was applied, so it is done.
            return {}
        raise _lost(store, lease, exc, what) from None


@dataclass(frozen=True)
class State:
    """Encoded user state, checked before any write."""

    cursor: str
    tokens: str = field(repr=False)  # never shown: tracebacks and debuggers print reprs
    progress: str

    @classmethod
    def encode(cls, store: JobStore, cursor: Any, tokens: Any,
               progress: dict[str, Any], *, job_id: str) -> State:
        if not isinstance(cursor, dict):
            raise StateNotSerializable(
                f"ctx.cursor must be a dict, got {type(cursor).__name__}; store positions "
                "as e.g. {'offset': 1200}."
            )
        if not isinstance(tokens, dict):
            raise StateNotSerializable(
                f"ctx.tokens must be a dict, got {type(tokens).__name__}."
            )
        state = cls(codec.dumps(cursor, "cursor"), store.encode_tokens(tokens, job_id=job_id),
                    codec.dumps(progress, "progress"))
        return state

    def check(self, input_json: str | None = None, result: str | None = None) -> None:
        codec.check_budget({"cursor": self.cursor, "tokens": self.tokens,
                            "progress": self.progress, "input": input_json, "result": result})


def checkpoint(store: JobStore, lease: Lease, state: State) -> None:
    """Persist cursor/tokens/progress mid-step (fenced)."""
    now = store.clock.now_ms()
    upd = (_fenced(lease, now).set("cursor", state.cursor).set("tokens", state.tokens)
           .set("progress", state.progress))
    _update(store, lease, upd, "checkpoint")


def _history_put(store: JobStore, lease: Lease, event: str, now: int, *,
                 detail: str | None = None, attempt: int | None = None,
                 work: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": av(schema.job_pk(lease.job_id)),
        "sk": av(f"{schema.step_sk(lease.step)}#{now:013d}#{lease.owner[-12:]}#{event}"),
        "step": av(lease.step),
        "event": av(event),
        "owner": av(lease.owner),
        "request_id": av(lease.request_id),
        "started_at": av(lease.claimed_at),
        "ended_at": av(now),
        "duration_ms": av(max(0, now - lease.claimed_at)),
        "expires_at": av(now // 1000 + store.retention_s),
    }
    if detail:
        item["detail"] = av(detail[:2000])
    if attempt is not None:
        item["attempt"] = av(attempt)
    if work:
        item["work"] = av(work)
    return item


def record_history(store: JobStore, lease: Lease, event: str, **kw: Any) -> None:
    """One unconditional PutItem: history is a log, its own key makes it unique."""
    store.call("put_item", Item=_history_put(store, lease, event, store.clock.now_ms(), **kw))


def commit(
    store: JobStore,
    lease: Lease,
    state: State,
    *,
    wait_until_ms: int | None = None,
    wait_reason: str | None = None,
    hop: int | None = None,
) -> int:
    """End step N and make step N+1 due (fenced). Returns the next step number.

    With `wait_until_ms` the job goes WAITING and step N+1 may not be claimed before then.
    `hop` is the invocation of its chain the continuation will be (see the sweeper's
    `chain_cut` warning).
    """
    now = store.clock.now_ms()
    nxt = lease.step + 1
    # Waiting: due when the wait ends. Otherwise due if the continuation is not claimed
    # within dispatch_timeout (it was lost): the sweeper re-sends it then.
    due = wait_until_ms if wait_until_ms is not None else now + store.dispatch_timeout_ms
    upd = (
        _fenced(lease, now)
        .set("cursor", state.cursor)
        .set("tokens", state.tokens)
        .set("progress", state.progress)
        .set("attempt", 0)
        .set("due_at", due)
        .set("dk", schema.due_hash(lease.job_id))
        # The step is done: an earlier attempt's error is history now (its history item).
        .remove("lease_owner", "lease_expires_at", "error", "error_type")
        .add("run_ms", max(0, now - lease.claimed_at))
    )
    if lease.takeover:
        upd.add("takeovers", 1)
    upd.sets.append(f"#step = {upd.value('next', nxt)}")
    if wait_until_ms is not None:
        upd.set("status", JobStatus.WAITING.value).set("not_before", wait_until_ms)
        upd.set("wait_reason", wait_reason or "sleep")
    elif hop is not None:
        upd.set("hop", hop)
    _update(store, lease, upd, "commit",
            applied=lambda raw: raw.get("step", {}).get("N") == str(nxt))
    if lease.job.history_on:
        record_history(store, lease, "committed")
    return nxt


def finish(
    store: JobStore,
    lease: Lease,
    state: State | None,
    status: JobStatus,
    *,
    result_json: str | None = None,
    error: str | None = None,
    error_type: str | None = None,
    extra_actions: list[dict[str, Any]] | None = None,
    advance: bool | None = None,
    attempt: int | None = None,
) -> None:
    """Terminal commit: SUCCEEDED or FAILED (fenced). `extra_actions` join a transaction.

    `state` None keeps the stored cursor/tokens/progress (the last checkpoint): a step that
    raised must not roll back what it checkpointed (e.g. an external job's token).
    The step number moves to N+1 only when step N's own result is committed (SUCCEEDED,
    or `advance=True` for `ctx.fail`): a step that failed (error, parked effect, guard)
    did not commit, so the job stays at N and `resume` re-runs it rather than skipping it
    with the state from before it. `attempt` records the failed attempt's number (a step
    that raised on its last attempt).
    """
    now = store.clock.now_ms()
    upd = _fenced(lease, now)
    if state is not None:
        upd.set("cursor", state.cursor).set("tokens", state.tokens)
        upd.set("progress", state.progress)
    (
        upd
        .set("status", status.value)
        .set("status_at", now)
        .set("ls", schema.list_range(lease.job_type, status.value, now))
        .set("expires_at", now // 1000 + store.retention_s)
        .remove("lease_owner", "lease_expires_at", "due_at", "dk", "not_before")
        .add("run_ms", max(0, now - lease.claimed_at))
    )
    if lease.takeover:
        upd.add("takeovers", 1)
    if advance is None:
        advance = status == JobStatus.SUCCEEDED
    if advance:
        upd.sets.append(f"#step = {upd.value('next', lease.step + 1)}")
    if result_json is not None:
        upd.set("result", result_json)
    if error is not None:
        upd.set("error", error[:4000])
        upd.set("error_type", error_type or "Error")
    elif status == JobStatus.SUCCEEDED:
        upd.remove("error", "error_type")  # an earlier failed attempt's, not the outcome
    if attempt is not None:
        upd.set("attempt", attempt)
    if not extra_actions:
        _update(store, lease, upd, "completion",
                applied=lambda raw: raw.get("status", {}).get("S") == status.value)
    else:
        _finish_joined(store, lease, upd, extra_actions)
    if status == JobStatus.FAILED:
        # The job is FAILED already: a history item the store cannot take now must not
        # make this invocation fail before it joins and dispatches what follows.
        try:
            record_history(store, lease, "failed", detail=error, attempt=attempt)
        except (ClientError, StoreUnavailable) as exc:
            observe.event("history_lost", logging.WARNING, job_id=lease.job_id,
                          step=lease.step, detail=f"{type(exc).__name__}: {exc}")


def _finish_joined(store: JobStore, lease: Lease, upd: Update,
                   joins: list[dict[str, Any]]) -> None:
    """The terminal update and the child's join to its parent, in one transaction.

    A child that joined before (it was resumed and finished again) must not count twice:
    its join is refused, and it finishes with its link rewritten to the new outcome
    instead (so the parent's next `ctx.children()` sees it), the pending count untouched.
    """
    from .fanout import transact_join

    action = {"Update": {"TableName": store.table_name, "Key": _job_key(lease.job_id),
                         **upd.kwargs(), "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
    transact_join(lambda actions: transact(store, lease, actions, "completion"), action,
                  joins)


def transact(store: JobStore, lease: Lease, actions: list[dict[str, Any]], what: str) -> None:
    """TransactWriteItems whose first action is the fenced job update."""
    try:
        store.call("transact_write_items", TransactItems=actions)
    except ClientError as exc:
        if error_code(exc) != TRANSACTION_CANCELLED:
            raise
        reasons = exc.response.get("CancellationReasons", [])
        first = reasons[0] if reasons else {}
        if first.get("Code") in (CANCELLED_BY_CONDITION, CONDITION_FAILED):
            fake = ClientError(cast(Any, {"Error": {"Code": CONDITION_FAILED},
                                          "Item": first.get("Item")}), "TransactWriteItems")
            raise _lost(store, lease, fake, what) from None
        raise


def fail_attempt(
    store: JobStore,
    lease: Lease,
    error: str,
    *,
    retry_in_ms: int | None,
    error_type: str = "Error",
) -> JobStatus:
    """Record a failed attempt of the step (fenced), with a history item in one transaction.

    `retry_in_ms` None means no retry is left: the job is FAILED. Otherwise the step stays
    RUNNING, unleased, not claimable before the backoff ends, and due for the sweeper then.
    """
    now = store.clock.now_ms()
    attempt = lease.job.attempt + 1
    if retry_in_ms is None:
        upd = (
            _fenced(lease, now)
            .set("status", JobStatus.FAILED.value)
            .set("status_at", now)
            .set("error", error[:4000])
            .set("error_type", error_type)
            .set("attempt", attempt)
            .set("ls", schema.list_range(lease.job_type, JobStatus.FAILED.value, now))
            .set("expires_at", now // 1000 + store.retention_s)
            .remove("lease_owner", "lease_expires_at", "due_at", "dk", "not_before")
        )
        status = JobStatus.FAILED
        event = "failed"
    else:
        at = now + retry_in_ms
        upd = (
            _fenced(lease, now)
            .set("error", error[:4000])
            .set("error_type", error_type)
            .set("attempt", attempt)
            .set("not_before", at)
            .set("wait_reason", "retry")
            .set("due_at", at)
            .set("dk", schema.due_hash(lease.job_id))
            .remove("lease_owner", "lease_expires_at")
            .add("retries", 1)
        )
        status = JobStatus.RUNNING
        event = "retry_scheduled"
    hist = _history_put(store, lease, event, now, detail=error, attempt=attempt)
    action = {"Update": {"TableName": store.table_name, "Key": _job_key(lease.job_id),
                         **upd.kwargs(), "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
    transact(store, lease, [action, {"Put": {"TableName": store.table_name, "Item": hist}}],
             "failure record")
    return status


def defer(store: JobStore, lease: Lease, until_ms: int, reason: str) -> None:
    """End the step without committing it or counting an attempt (fenced): the same step
    may be claimed again at `until_ms`, and is due for the sweeper then."""
    now = store.clock.now_ms()
    upd = (
        _fenced(lease, now)
        .set("not_before", until_ms)
        .set("wait_reason", "deferred")
        .set("due_at", until_ms)
        .set("dk", schema.due_hash(lease.job_id))
        .remove("lease_owner", "lease_expires_at")
    )
    hist = _history_put(store, lease, "deferred", now, detail=reason)
    action = {"Update": {"TableName": store.table_name, "Key": _job_key(lease.job_id),
                         **upd.kwargs(), "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
    transact(store, lease, [action, {"Put": {"TableName": store.table_name, "Item": hist}}],
             "deferral")


def release_cancelled(store: JobStore, lease: Lease) -> None:
    """The job was cancelled under this step: drop our lease, so a `resume` can run the
    job at once instead of waiting for the lease to expire. Best effort (conditional)."""
    try:
        store.call(
            "update_item", Key=_job_key(lease.job_id),
            UpdateExpression="REMOVE lease_owner, lease_expires_at",
            ConditionExpression="lease_owner = :me AND #status = :cancelled",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":me": av(lease.owner),
                                       ":cancelled": av(JobStatus.CANCELLED.value)},
        )
    except ClientError as exc:
        if error_code(exc) != CONDITION_FAILED:
            raise


def release(store: JobStore, lease: Lease) -> None:
    """Give the lease back without advancing (e.g. the type was paused mid-flight)."""
    now = store.clock.now_ms()
    upd = (_fenced(lease, now).remove("lease_owner", "lease_expires_at")
           .set("due_at", now + store.dispatch_timeout_ms))
    _update(store, lease, upd, "release")

