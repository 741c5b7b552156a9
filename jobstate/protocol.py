"""The step protocol's flows around the job record: claiming a step, and finishing a job.

Claim is one conditional write returning the record (no read); when it is refused, the
record as it was says why (`ClaimOutcome`). Finishing joins a child's parent in the same
transaction as the child's terminal write. The writes themselves are the transitions package's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from botocore.exceptions import ClientError

from . import history, joins, observe, schema, transitions
from .dynamo import Refused
from .errors import InvalidEvent, JobNotFound, LeaseLost, StoreUnavailable, TokensUnreadable
from .items import JobItem, job_item
from .lease import Lease, State, new_owner
from .records import JobView
from .status import ClaimOutcome, JobStatus
from .table import Table


@dataclass(frozen=True)
class ClaimResult:
    outcome: ClaimOutcome
    lease: Lease | None
    job: JobView | None
    detail: str = ""

    @property
    def claimed(self) -> bool:
        return self.lease is not None


def claim(
    table: Table,
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
    now = table.clock.now_ms()
    owner = new_owner(request_id)
    try:
        item, prev = transitions.claim(table, job_id, step, owner, lease_until_ms,
                                       waiting_children_ok=waiting_children_ok,
                                       job_type=job_type)
    except Refused as refusal:
        found = job_item(refusal.old) if refusal.old is not None else None
        if found is None or not _is_mine(found, owner, step):
            return _why_not(table, job_id, step, found, now, job_type)
        # botocore retried a claim whose first attempt was applied (its response was
        # lost): the record already names this invocation, so the claim is ours (whether
        # it took over from someone is not known any more).
        item, prev = found, None
    try:
        job = table.view(item)
    except TokensUnreadable as exc:
        return _park_unreadable(table, item, step, owner, lease_until_ms, now, request_id, exc)
    takeover = prev is not None
    lease = Lease(job_id, job.job_type, step, owner, lease_until_ms, now, request_id, job,
                  takeover, State.of(item.cursor, item.tokens, item.progress))
    outcome = ClaimOutcome.TAKEOVER if takeover else ClaimOutcome.CLAIMED
    return ClaimResult(outcome, lease, job, f"took over from {prev}" if takeover else "")


def _is_mine(item: JobItem, owner: str, step: int) -> bool:
    return (item.lease_owner == owner and item.step == step
            and item.status == JobStatus.RUNNING)


def _park_unreadable(table: Table, item: JobItem, step: int, owner: str,
                     lease_until_ms: int, now: int, request_id: str,
                     exc: TokensUnreadable) -> ClaimResult:
    """The claim succeeded but this deployment cannot decrypt the job's tokens.

    Running the step without its tokens (or letting the error escape with the lease held)
    would loop through the sweeper until the deadline: fail the job instead, keeping the
    stored (encrypted) tokens untouched, so it can be resumed once the cipher is fixed.
    """
    job = table.view(item, secrets=False)
    reason = (f"{exc} Step {step} did not run; the job is FAILED with its state intact: fix "
              f"the cipher and `jobstate resume {job.job_id}`.")
    lease = Lease(job.job_id, job.job_type, step, owner, lease_until_ms, now, request_id, job)
    try:
        finish(table, lease, None, JobStatus.FAILED, error=reason,
               error_type="TokensUnreadable")
    except LeaseLost:
        return ClaimResult(ClaimOutcome.IN_FLIGHT, None, job, "lost the lease while failing")
    return ClaimResult(ClaimOutcome.FINISHED, None, job, reason)


def _why_not(table: Table, job_id: str, step: int, item: JobItem | None, now: int,
             job_type: str | None) -> ClaimResult:
    if item is None or item.expired(now):
        raise JobNotFound(
            f"no job {job_id!r}: the event names a job that does not exist in table "
            f"{table.table_name!r} (wrong table, or it expired).",
            job_id=job_id,
        )
    job = table.view(item, secrets=False)
    if job_type is not None and job.job_type != job_type:
        raise InvalidEvent(
            f"the event names job type {job_type!r}, but job {job_id!r} is of type "
            f"{job.job_type!r}; nothing was run or written. Send step events as jobstate "
            "builds them (jobstate.step_event), or leave job_type out.", job_id=job_id)
    if job.status.terminal:
        return ClaimResult(ClaimOutcome.FINISHED, None, job, f"job is {job.status.value}")
    if job.paused_by is not None:
        return ClaimResult(ClaimOutcome.PAUSED, None, job,
                           f"job type {job.paused_by!r} is paused; the job is held until it "
                           "is resumed")
    if job.step > step:
        return ClaimResult(ClaimOutcome.DUPLICATE, None, job, f"job is at step {job.step}")
    if job.step < step:
        return ClaimResult(ClaimOutcome.NOT_YET, None, job,
                           f"job is only at step {job.step}; event for step {step} is early")
    if job.lease_live(now):
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


def finish(
    table: Table,
    lease: Lease,
    state: State | None,
    status: JobStatus,
    *,
    result_json: str | None = None,
    error: str | None = None,
    error_type: str | None = None,
    advance: bool | None = None,
    attempt: int | None = None,
) -> joins.Joined:
    """The job's terminal write (fenced); a child joins its parent in the same transaction.

    A child that joined before (it was resumed and finished again) must not count twice:
    its join is refused, and it finishes with its link rewritten to the new outcome
    instead (so the parent's next `ctx.children()` sees it), the pending count untouched.
    """
    upd = transitions.finish_update(table, lease, state, status, result_json=result_json,
                                    error=error, error_type=error_type, advance=advance,
                                    attempt=attempt)
    join = joins.join_actions(table, lease.job, status.value, result_json, error)
    joined = joins.Joined()
    if join is None:
        transitions.finish(table, lease, upd, status)
    else:
        first = transitions.action(table, schema.job_key(lease.job_id), upd)
        joined = joins.transact_join(
            lambda actions: transitions.fenced_transaction(table, lease, actions, "completion"),
            first, join)
        if joined.verdict is not None:
            observe.event("completion_decided", job_id=lease.job.parent_id,
                          step=lease.job.parent_step, detail=f"{joined.verdict} (decided by "
                          f"the join of child {lease.job_id}, {status.value})")
    if status == JobStatus.FAILED:
        # The job is FAILED already: a history item the store cannot take now must not
        # make this invocation fail before it joins and dispatches what follows.
        try:
            history.record(table, lease, "failed", detail=error, attempt=attempt)
        except (ClientError, StoreUnavailable) as exc:
            observe.event("history_lost", logging.WARNING, job_id=lease.job_id,
                          step=lease.step, detail=f"{type(exc).__name__}: {exc}")
    return joined


def deadline_reason(job: JobView) -> str:
    return (f"runaway guard: the job passed its deadline ({job.deadline_at} ms epoch) without "
            f"completing; give it more time with `jobstate resume {job.job_id} --deadline "
            "SECONDS` (or raise deadline= for new jobs).")


def steps_reason(job: JobView) -> str:
    return (f"runaway guard: the job reached max_steps={job.max_steps} without "
            "completing; check its stop condition, or give it more steps with "
            f"`jobstate resume {job.job_id} --max-steps N`.")


def guard(job: JobView, step: int, now: int) -> str | None:
    """Why the runaway guards stop this step (None: they do not)."""
    if job.max_steps is not None and step >= job.max_steps:
        return steps_reason(job)
    if job.deadline_at is not None and now > job.deadline_at:
        return deadline_reason(job)
    return None
