"""The sweeper: finds jobs that need attention through the sparse `due` index and
re-dispatches them by step number (the claim makes duplicates harmless).

Due means one of: a lease expired (lost container), a committed step never claimed (lost
continuation), a wait is over, a retry backoff ended, a job was created but never started.
Before dispatching, the sweeper moves the job's `due_at` forward with a conditional write,
so two sweepers running at once never both dispatch the same job, and a backlog larger
than one run's `limit` drains over several runs (pass `next_token` back).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from botocore.exceptions import ClientError

from . import faults, observe, protocol, schema
from .continuation import Continuation
from .dynamo import CONDITION_FAILED, av, error_code
from .errors import DispatchFailed, InvalidInput, JobNotFound, LeaseLost
from .protocol import State
from .status import JobStatus
from .store import JobStore, _ancestors, _job_key

CHILD_RECHECK_MS = 15 * 60 * 1000
# A paused job is looked at again this much later, so a paused backlog never fills a
# sweep's budget; resuming the type makes its jobs due at once (`JobStore.set_paused`).
PAUSED_RECHECK_MS = 5 * 60 * 1000
RECURSION_HOPS = 16


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
    from .app import step_event

    if not isinstance(limit, int) or limit < 1:
        raise InvalidInput(f"limit must be a positive int, got {limit!r}")
    now = store.clock.now_ms() if now is None else now
    report = SweepReport()
    starts = _decode(next_token)
    shard0 = int(starts.get("shard", 0))
    for shard in range(shard0, schema.DUE_SHARDS):
        esk = starts.get("esk") if shard == shard0 else None
        while True:
            budget = limit - report.scanned
            if budget <= 0:
                report.next_token = _encode({"shard": shard, "esk": esk})
                return report
            kw: dict[str, Any] = {
                "IndexName": schema.DUE_INDEX,
                "KeyConditionExpression": "dk = :dk AND due_at <= :now",
                "ExpressionAttributeValues": {":dk": av(f"D#{shard}"), ":now": av(now)},
                "Limit": budget,
            }
            if esk:
                kw["ExclusiveStartKey"] = esk
            resp = store.call("query", **kw)
            for item in resp.get("Items", []):
                report.scanned += 1
                _handle(store, continuation, item, now, report, context, step_event)
            esk = resp.get("LastEvaluatedKey")
            if not esk:
                break
    return report


def _handle(store: JobStore, continuation: Continuation, item: dict[str, Any], now: int,
            report: SweepReport, context: Any, step_event: Any) -> None:
    job_id = item["pk"]["S"].removeprefix("JOB#")
    status = item.get("status", {}).get("S", "")
    step = int(item.get("step", {}).get("N", "0"))
    job_type = item.get("job_type", {}).get("S", "")
    parent_type = item.get("parent_type", {}).get("S")
    ancestors = _ancestors(item.get("ancestors", {}).get("S"), parent_type)
    due_at = int(item["due_at"]["N"])
    if status in {s.value for s in JobStatus if s.terminal}:
        if _undue(store, job_id, status):
            report.cleaned += 1
        return
    if any(store.is_paused(t) for t in (*ancestors, job_type) if t):
        _bump(store, job_id, step, due_at, now + PAUSED_RECHECK_MS)
        report.paused += 1
        return
    # The deadline first: a parent waiting for children that never finish must not
    # wait past it.
    deadline = item.get("deadline_at", {}).get("N")
    if deadline is not None and int(deadline) < now:
        if _fail_past_deadline(store, job_id, step, now, context):
            report.failed_guards += 1
        else:
            report.raced += 1
        return
    if int(item.get("pending", {}).get("N", "0")) > 0:
        # Waiting for children: each join makes it due again; look back later anyway.
        recheck = now + CHILD_RECHECK_MS
        if deadline is not None:  # look again when its deadline passes, if that is sooner
            recheck = min(recheck, int(deadline) + 1)
        _bump(store, job_id, step, due_at, recheck)
        report.waiting_children += 1
        return
    lease = item.get("lease_expires_at", {}).get("N")
    if lease is not None:
        kind = "expired_leases"
    elif status == JobStatus.WAITING.value:
        kind = "waits_over"
    elif item.get("wait_reason", {}).get("S") == "retry":
        kind = "retries_due"
    elif status == JobStatus.PENDING.value:
        kind = "not_started"
    else:
        kind = "lost_continuations"
    if not _bump(store, job_id, step, due_at, now + store.dispatch_timeout_ms):
        report.raced += 1
        return
    if kind == "lost_continuations" and step >= RECURSION_HOPS:
        observe.event(
            "chain_cut", logging.WARNING, job_id=job_id, job_type=job_type, step=step,
            detail=("a committed step was never claimed. If this keeps happening near every "
                    f"{RECURSION_HOPS} steps, Lambda's recursive loop detection is dropping "
                    "the chain: set RecursiveLoop: Allow on the function (the template does)."),
        )
    extra = {"parent_type": ancestors[-1], "ancestors": list(ancestors)} if ancestors else {}
    try:
        continuation.dispatch(step_event(job_id, step, job_type, **extra), context=context)
    except DispatchFailed as exc:
        report.dispatch_errors += 1
        if report.first_dispatch_error is None:
            report.first_dispatch_error = str(exc)
        observe.event("dispatch_failed", logging.WARNING, job_id=job_id, step=step,
                      detail=str(exc))
        return
    setattr(report, kind, getattr(report, kind) + 1)
    report.dispatched += 1


def _bump(store: JobStore, job_id: str, step: int, old_due: int, new_due: int) -> bool:
    """Move due_at forward iff nobody else changed the job since we read the index."""
    try:
        store.call(
            "update_item", Key=_job_key(job_id),
            UpdateExpression="SET due_at = :new ADD sweeps :one",
            ConditionExpression="#step = :n AND due_at = :old",
            ExpressionAttributeNames={"#step": "step"},
            ExpressionAttributeValues={":new": av(new_due), ":n": av(step),
                                       ":old": av(old_due), ":one": av(1)},
        )
        return True
    except ClientError as exc:
        if error_code(exc) != CONDITION_FAILED:
            raise
        return False


def _undue(store: JobStore, job_id: str, status: str) -> bool:
    """Take a finished job out of the due index (a child's join after the parent was
    cancelled puts it back); conditional on it still being finished."""
    try:
        store.call(
            "update_item", Key=_job_key(job_id), UpdateExpression="REMOVE due_at, dk",
            ConditionExpression="#status = :s",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues={":s": av(status)},
        )
        return True
    except ClientError as exc:
        if error_code(exc) != CONDITION_FAILED:
            raise
        return False


def _fail_past_deadline(store: JobStore, job_id: str, step: int, now: int,
                        context: Any) -> bool:
    """Claim the job as the sweeper and fail it (joining its parent, if any).

    A parent waiting on children has them cancelled first, then is failed: a sweeper that
    dies in between leaves the parent due (past its deadline, its lease running out), so
    the next sweep finishes the job. Failed first, a dead sweeper would leave its children
    running on, since nothing looks at a FAILED job's children again.
    """
    from .app import deadline_reason
    from .errors import JobFinished
    from .fanout import cancel_tree, child_ids_of, join_actions

    claim = protocol.claim(store, job_id, step,
                           request_id=f"sweeper-{uuid.uuid4().hex[:8]}",
                           lease_until_ms=now + 60_000, waiting_children_ok=True)
    if claim.lease is None:
        return False
    lease = claim.lease
    job = lease.job
    reason = deadline_reason(job)
    for cid in child_ids_of(job):
        with contextlib.suppress(JobNotFound, JobFinished):
            cancel_tree(store, cid, f"parent {job_id} failed: {reason}")
    faults.point("sweeper_children_cancelled", job_id=job_id, step=step)
    state = State.encode(store, job.cursor, job.tokens, job.progress.to_dict(),
                         job_id=job_id)
    try:
        protocol.finish(store, lease, state, JobStatus.FAILED, error=reason,
                        error_type="RunawayGuard",
                        extra_actions=join_actions(store, lease, "FAILED", None, reason))
    except (LeaseLost, JobNotFound):
        return False
    return True


def _encode(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _decode(token: str | None) -> dict[str, Any]:
    if not token:
        return {}
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()).decode())
        if not isinstance(value, dict) or not isinstance(value.get("shard", 0), int):
            raise ValueError
        return value
    except Exception:
        raise InvalidInput("next_token is not one sweep() returned; pass it back unchanged.") \
            from None
