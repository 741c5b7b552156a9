"""When the sweeper would next act on a job in flight, and why.

One rule, shared by the sweeper (which sends a stale step again) and by `JobView.due_at`
(which shows an operator when that will happen). A sleeping job's wake is stored (the
sparse `due` index); every other job's next send is derived from what its item already
holds, so no step writes a due time.
"""

from __future__ import annotations

from .items import JobItem
from .status import JobStatus

MAX_REDISPATCH_BACKOFF_MS = 60 * 60 * 1000  # a step sent again and again: at most hourly


def due_at(job: JobItem, timeout_ms: int) -> int | None:
    """When the sweeper next acts on the job if nothing else does (None: it will not)."""
    if job.status.terminal or job.paused_by is not None:
        return None
    if job.due_at:
        return job.due_at  # asleep until then (or its deadline, if sooner)
    kind, since = readiness(job, timeout_ms)
    times = [t for t in (job.deadline_at, None if kind in (None, "waiting_children") else since)
             if t is not None]  # past its deadline, the sweeper fails it
    if not times:
        return None
    if job.lease_owner is not None and job.lease_expires_at:
        return max(min(times), job.lease_expires_at)  # nobody acts while the lease lives
    return min(times)


def readiness(job: JobItem, timeout_ms: int) -> tuple[str | None, int]:
    """Why a job in flight would be sent again, and from when (None: it is not stale)."""
    if job.lease_owner is not None and job.lease_expires_at:
        kind, since = "expired_leases", job.lease_expires_at  # its holder died, or will have
    elif (job.pending or 0) > 0:
        return "waiting_children", 0  # each child's join is its news
    elif job.wait_reason in ("retry", "deferred") or job.status == JobStatus.WAITING:
        kind = "retries_due" if job.wait_reason == "retry" else "lost_continuations"
        since = max(job.not_before or 0, (job.updated_at or 0) + (
            timeout_ms if job.wait_reason not in ("retry", "deferred") else 0))
    elif job.not_before and job.not_before > 0 and job.wait_reason == "concurrency":
        return None, 0  # a queued child: its sibling's join releases it
    else:
        kind = "not_started" if job.status == JobStatus.PENDING else "lost_continuations"
        since = (job.updated_at or 0) + timeout_ms
    if job.swept_at is not None:  # sent before and still not claimed: back off
        backoff = min(timeout_ms * 2 ** max(job.redispatches - 1, 0), MAX_REDISPATCH_BACKOFF_MS)
        since = max(since, job.swept_at + backoff)
    return kind, since
