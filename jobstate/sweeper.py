"""The sweeper: finds jobs that need attention through the sparse `due` index and
re-dispatches them by step number (the claim makes duplicates harmless).

Due means one of: a lease expired (lost container), a committed step never claimed (lost
continuation), a wait is over, a retry backoff ended, a job was created but never started.
Before dispatching, the sweeper moves the job's `due_at` forward with a conditional write,
so two sweepers running at once never both dispatch the same job, and a backlog larger
than one run's `limit` drains over several runs (pass `next_token` back).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from . import dynamo, faults, observe, pagetoken, protocol, schema, transitions
from .continuation import Continuation
from .dynamo import Refused, av
from .errors import DispatchFailed, InvalidInput, JobFinished, JobNotFound, LeaseLost
from .events import step_event
from .fanout import cancel_tree
from .items import JobItem, indexed_job
from .records import ancestors_of, child_ids_of
from .schema import J
from .status import JobStatus
from .store import JobStore

CHILD_RECHECK_MS = 15 * 60 * 1000
# A paused job is looked at again this much later, so a paused backlog never fills a
# sweep's budget; resuming the type makes its jobs due at once (`JobStore.set_paused`).
PAUSED_RECHECK_MS = 5 * 60 * 1000
RECURSION_HOPS = 16
# A step sent again and again without being claimed is sent at most this far apart.
MAX_REDISPATCH_BACKOFF_MS = 60 * 60 * 1000
DEADLINE_LEASE_MS = 60_000  # the sweeper's lease while it fails a job past its deadline


@dataclass
class SweepReport:
    scanned: int = 0
    dispatched: int = 0
    expired_leases: int = 0
    lost_continuations: int = 0
    waits_over: int = 0
    retries_due: int = 0
    not_started: int = 0
    failed_guards: int = 0
    paused: int = 0
    waiting_children: int = 0
    raced: int = 0
    dispatch_errors: int = 0  # those jobs were postponed by the dispatch timeout, not lost
    cleaned: int = 0  # finished jobs left in the due index (a late join), taken out
    next_token: str | None = None
    first_dispatch_error: str | None = None  # what went wrong with the first of those

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sweep(
    store: JobStore,
    continuation: Continuation,
    *,
    now: int | None = None,
    limit: int = 500,
    next_token: str | None = None,
    context: Any = None,
) -> SweepReport:
    """Re-dispatch up to `limit` due jobs; returns counts and a token if more remain."""
    if not isinstance(limit, int) or limit < 1:
        raise InvalidInput(f"limit must be a positive int, got {limit!r}")
    now = store.clock.now_ms() if now is None else now
    report = SweepReport()
    starts = pagetoken.decode(next_token or None, _token_ok,
                              "next_token is not one sweep() returned; pass it back unchanged.")
    shard0 = int(starts.get("shard", 0))
    for shard in range(shard0, schema.DUE_SHARDS):
        esk = starts.get("esk") if shard == shard0 else None
        while True:
            budget = limit - report.scanned
            if budget <= 0:
                report.next_token = pagetoken.encode({"shard": shard, "esk": esk})
                return report
            resp = store.call(
                "query", IndexName=schema.DUE_INDEX,
                KeyConditionExpression="#k = :dk AND #d <= :now",
                ExpressionAttributeNames={"#k": J.DUE_SHARD, "#d": J.DUE},
                ExpressionAttributeValues={":dk": av(schema.due_shard(shard)), ":now": av(now)},
                Limit=budget, **dynamo.start_at(esk))
            for raw in resp.get("Items", []):
                report.scanned += 1
                _handle(store, continuation, indexed_job(raw), now, report, context)
            esk = resp.get("LastEvaluatedKey")
            if not esk:
                break
    return report


def _token_ok(value: dict[str, Any]) -> bool:
    shard = value.get("shard", 0)
    return (set(value) <= {"shard", "esk"} and isinstance(shard, int)
            and not isinstance(shard, bool) and 0 <= shard < schema.DUE_SHARDS
            and (value.get("esk") is None or isinstance(value.get("esk"), dict)))


def _kind(job: JobItem) -> str:
    """Why a due job is due (the SweepReport counter it goes under)."""
    if job.lease_expires_at is not None:
        return "expired_leases"
    if job.status == JobStatus.WAITING:
        return "waits_over"
    if job.wait_reason == "retry":
        return "retries_due"
    if job.status == JobStatus.PENDING:
        return "not_started"
    return "lost_continuations"


def _handle(store: JobStore, continuation: Continuation, job: JobItem, now: int,
            report: SweepReport, context: Any) -> None:
    due_at = job.due_at or 0
    if job.status.terminal:
        with contextlib.suppress(Refused):
            transitions.sweep_undue(store, job.job_id, job.status)
            report.cleaned += 1
        return
    ancestors = ancestors_of(job)
    if any(store.is_paused(t) for t in (*ancestors, job.job_type) if t):
        _postpone(store, job, due_at, now + PAUSED_RECHECK_MS)
        report.paused += 1
        return
    # The deadline first: a parent waiting for children that never finish must not
    # wait past it.
    if job.deadline_at is not None and job.deadline_at < now:
        if _fail_past_deadline(store, job.job_id, job.step, now):
            report.failed_guards += 1
        else:
            report.raced += 1
        return
    if (job.pending or 0) > 0:
        # Waiting for children: each join makes it due again; look back later anyway.
        recheck = now + CHILD_RECHECK_MS
        if job.deadline_at is not None:  # look again when its deadline passes, if sooner
            recheck = min(recheck, job.deadline_at + 1)
        _postpone(store, job, due_at, recheck)
        report.waiting_children += 1
        return
    kind = _kind(job)
    try:
        taken = transitions.sweep_take(store, job.job_id, job.step, due_at, now)
    except Refused:
        report.raced += 1
        return
    if taken.redispatches > 1:
        # Sent before and still not claimed (a backlog, or lost again): wait twice as long
        # before the next copy. Best effort: if the job moved meanwhile, its own write
        # says when it is due.
        backoff = min(store.dispatch_timeout_ms * 2 ** (taken.redispatches - 1),
                      MAX_REDISPATCH_BACKOFF_MS)
        with contextlib.suppress(Refused):
            transitions.sweep_postpone(store, job.job_id, job.step,
                                       now + store.dispatch_timeout_ms, now + backoff,
                                       count=False)
    if kind == "lost_continuations" and taken.redispatches == 1 and taken.hop > RECURSION_HOPS:
        # The continuation that never arrived was the (RECURSION_HOPS + 1)-th invocation of
        # one chain: what Lambda's loop detection drops. A backlog (a step sent again and
        # again) or a lost event at a lower hop is something else, and is not blamed on it.
        observe.event(
            "chain_cut", logging.WARNING, job_id=job.job_id, job_type=job.job_type,
            step=job.step,
            detail=(f"step {job.step} was sent as invocation {taken.hop} of one chain and "
                    "never claimed: Lambda's recursive loop detection drops a chain's "
                    f"invocations after {RECURSION_HOPS}. Set RecursiveLoop: Allow on the "
                    "function (the template does); the sweeper re-sends the step meanwhile."),
        )
    route = {"parent_type": ancestors[-1], "ancestors": list(ancestors)} if ancestors else {}
    try:
        # The sweeper's invocation starts a new chain: the event is its first hop.
        continuation.dispatch(step_event(job.job_id, job.step, job.job_type, hop=1, **route),
                              context=context)
    except DispatchFailed as exc:
        report.dispatch_errors += 1
        if report.first_dispatch_error is None:
            report.first_dispatch_error = str(exc)
        observe.event("dispatch_failed", logging.WARNING, job_id=job.job_id, step=job.step,
                      detail=str(exc))
        return
    setattr(report, kind, getattr(report, kind) + 1)
    report.dispatched += 1


def _postpone(store: JobStore, job: JobItem, due_at: int, later: int) -> None:
    with contextlib.suppress(Refused):
        transitions.sweep_postpone(store, job.job_id, job.step, due_at, later)


def _fail_past_deadline(store: JobStore, job_id: str, step: int, now: int) -> bool:
    """Claim the job as the sweeper and fail it (joining its parent, if any).

    A parent waiting on children has them cancelled first, then is failed: a sweeper that
    dies in between leaves the parent due (past its deadline, its lease running out), so
    the next sweep finishes the job. Failed first, a dead sweeper would leave its children
    running on, since nothing looks at a FAILED job's children again.
    """
    claim = protocol.claim(store, job_id, step, request_id=f"sweeper-{uuid.uuid4().hex[:8]}",
                           lease_until_ms=now + DEADLINE_LEASE_MS, waiting_children_ok=True)
    if claim.lease is None:
        return False
    lease = claim.lease
    reason = protocol.deadline_reason(lease.job)
    for cid in child_ids_of(lease.job):
        with contextlib.suppress(JobNotFound, JobFinished):
            cancel_tree(store, cid, f"parent {job_id} failed: {reason}")
    faults.point("sweeper_children_cancelled", job_id=job_id, step=step)
    try:
        protocol.finish(store, lease, None, JobStatus.FAILED, error=reason,
                        error_type="RunawayGuard")
    except (LeaseLost, JobNotFound):
        return False
    return True
