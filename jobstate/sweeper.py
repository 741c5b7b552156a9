"""The sweeper: finds jobs that need attention and re-dispatches them by step number (the
claim makes duplicates harmless). No step writes anything for it: it reads what the steps
left.

Each sweep makes two passes:
- the `due` index: jobs asleep until a time (a sleep, a poll's backoff) whose wake or
  deadline has come — moved back to the ACTIVE bucket and dispatched;
- the ACTIVE bucket of the `by-type` index: every job in flight, read (eventually
  consistent) and dispatched when it is stale — a lease expired (a dead invocation), a
  committed step not claimed within the dispatch timeout (a lost continuation), a retry
  backoff or a deferral over, a job created but never started, a parent whose last child
  joined — or failed when past its deadline.

Before dispatching, a conditional write (`sweep-take`, `sweep-wake`) claims the re-dispatch,
so two sweepers never both send one job, and a step sent again and not claimed is sent
twice as late the next time (a backlog is not flooded with copies). A sweep larger than
`limit` items resumes from `next_token`.
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
from .items import JobItem, indexed_job, job_item, pk_job_id
from .readiness import readiness
from .records import ancestors_of, child_ids_of
from .schema import J
from .status import JobStatus
from .store import JobStore

RECURSION_HOPS = 16
DEADLINE_LEASE_MS = 60_000  # the sweeper's lease while it fails a job past its deadline
PASSES = ("due", "active")


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
    cleaned: int = 0  # kept for the report's shape: finished jobs need no cleaning now
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
    resume: bool = False,
) -> SweepReport:
    """Wake due sleepers and re-dispatch stale jobs in flight, up to `limit` items read;
    returns counts and a token if more remain.

    With `resume`, a sweep called without a token starts where the last incomplete one
    stopped (each page that leaves work behind saves its token in the table; finishing
    clears it), so runs cut short by their time budget still reach every job in turn.
    """
    if not isinstance(limit, int) or limit < 1:
        raise InvalidInput(f"limit must be a positive int, got {limit!r}")
    now = store.clock.now_ms() if now is None else now
    continued = next_token is not None
    if resume and next_token is None:
        next_token = _resume_point(store)
    report = _sweep(store, continuation, now, limit, next_token, context)
    if resume and (report.next_token is not None or continued or next_token is not None):
        store.put({**schema.sweep_resume_key(), schema.RESUME_AT: av(report.next_token or "")})
    return report


def _resume_point(store: JobStore) -> str | None:
    """The token an incomplete sweep saved (None: start at the beginning)."""
    item = store.get_item(schema.sweep_resume_key(), consistent=False)
    token = (item or {}).get(schema.RESUME_AT, {}).get("S") or None
    try:
        pagetoken.decode(token, _token_ok, "")
    except InvalidInput:
        return None  # saved by another version: start again at the beginning
    return token


def _sweep(store: JobStore, continuation: Continuation, now: int, limit: int,
           next_token: str | None, context: Any) -> SweepReport:
    report = SweepReport()
    start = pagetoken.decode(next_token or None, _token_ok,
                             "next_token is not one sweep() returned; pass it back unchanged.")
    sweep_ = _Sweep(store, continuation, now, report, context)
    first = PASSES.index(start.get("pass", PASSES[0]))
    for pass_ in PASSES[first:]:
        shard0 = int(start.get("shard", 0)) if pass_ == start.get("pass", PASSES[0]) else 0
        for shard in range(shard0, schema.DUE_SHARDS if pass_ == "due" else schema.LIST_SHARDS):
            esk = start.get("esk") if pass_ == start.get("pass") and shard == shard0 else None
            while True:
                budget = limit - report.scanned
                if budget <= 0:
                    report.next_token = pagetoken.encode(
                        {"pass": pass_, "shard": shard, "esk": esk})
                    return report
                page = sweep_.page(pass_, shard, budget, esk)
                esk = page.get("LastEvaluatedKey")
                if not esk:
                    break
    return report


def _token_ok(value: dict[str, Any]) -> bool:
    shard = value.get("shard", 0)
    return (set(value) <= {"pass", "shard", "esk"} and value.get("pass", "due") in PASSES
            and isinstance(shard, int) and not isinstance(shard, bool)
            and 0 <= shard < max(schema.DUE_SHARDS, schema.LIST_SHARDS)
            and (value.get("esk") is None or isinstance(value.get("esk"), dict)))


class _Sweep:
    """One sweep's passes, with the pause flags it read (once per type per sweep)."""

    def __init__(self, store: JobStore, continuation: Continuation, now: int,
                 report: SweepReport, context: Any) -> None:
        self.store, self.continuation, self.now = store, continuation, now
        self.report, self.context = report, context
        self.flags: dict[str, bool] = {}

    def page(self, pass_: str, shard: int, budget: int, esk: Any) -> dict[str, Any]:
        if pass_ == "due":
            resp = self.store.call(
                "query", IndexName=schema.DUE_INDEX,
                KeyConditionExpression="#k = :dk AND #d <= :now",
                ExpressionAttributeNames={"#k": J.DUE_SHARD, "#d": J.DUE},
                ExpressionAttributeValues={":dk": av(schema.due_shard(shard)),
                                           ":now": av(self.now)},
                Limit=budget, **dynamo.start_at(esk))
            for raw in resp.get("Items", []):
                self.report.scanned += 1
                self.due(indexed_job(raw))
            return resp
        resp = self.store.call(
            "query", IndexName=schema.LIST_INDEX,
            KeyConditionExpression="#k = :lk AND begins_with(#r, :p)",
            ExpressionAttributeNames={"#k": J.LIST_SHARD, "#r": J.LIST_KEY},
            ExpressionAttributeValues={":lk": av(schema.list_shards()[shard]),
                                       ":p": av(schema.list_prefix(schema.ACTIVE))},
            Limit=budget, **dynamo.start_at(esk))
        ids = [pk_job_id(raw) for raw in resp.get("Items", [])]
        self.report.scanned += len(ids)
        for job in self._read(ids):
            self.active(job)
        return resp

    def _read(self, ids: list[str]) -> list[JobItem]:
        if not ids:
            return []
        # Eventually consistent (half the price): a stale copy only makes the conditional
        # take below fail; the job is looked at again next sweep.
        out: list[JobItem] = []
        for i in range(0, len(ids), 100):
            resp = self.store.call("batch_get_item", RequestItems={self.store.table_name: {
                "Keys": [schema.job_key(j) for j in ids[i:i + 100]], "ConsistentRead": False}})
            out.extend(job_item(raw) for raw in
                       resp.get("Responses", {}).get(self.store.table_name, []))
            # Unprocessed keys are left for the next sweep.
        return out

    def holder(self, job: JobItem) -> str | None:
        """The type among the job's own and its ancestors' that is paused, if any."""
        for t in (*ancestors_of(job), job.job_type):
            if t not in self.flags:
                self.flags[t] = self.store.is_paused(t, fresh=True)  # once a sweep
            if self.flags[t]:
                return t
        return None

    # -- the two kinds of entries --------------------------------------------------------

    def due(self, job: JobItem) -> None:
        """A sleeper whose wake (or deadline) has come: back in flight, and dispatched."""
        holder = job.paused_by or self.holder(job)
        if holder is not None:
            # Held: out of the due index into the PAUSED bucket, not sent; the resume lets
            # it go. (One whose pause missed it is held first.)
            if job.paused_by is None:
                self.store.pauses.hold(holder, [job.job_id])
            else:
                with contextlib.suppress(Refused):
                    transitions.sweep_wake(self.store, job, self.now)
            self.report.paused += 1
            return
        if job.deadline_at is not None and job.deadline_at < self.now:
            self.fail_past_deadline(job)
            return
        try:
            taken = transitions.sweep_wake(self.store, job, self.now)
        except Refused:
            self.report.raced += 1
            return
        self.dispatch(taken, "waits_over")

    def active(self, job: JobItem) -> None:
        """A job in flight: send its step again if it is stale, fail it past its deadline."""
        if job.status.terminal:
            return  # finished after the index entry was read
        if job.paused_by is not None:
            self.report.paused += 1
            return
        holder = self.holder(job)
        if holder is not None:  # a job the pause's listing missed
            self.store.pauses.hold(holder, [job.job_id])
            self.report.paused += 1
            return
        if job.deadline_at is not None and job.deadline_at < self.now:
            self.fail_past_deadline(job)
            return
        kind, ready_at = readiness(job, self.store.dispatch_timeout_ms)
        if kind == "waiting_children":
            self.report.waiting_children += 1  # each child's join is its news
            return
        if kind is None or ready_at > self.now:
            return
        try:
            taken = transitions.sweep_take(self.store, job, self.now)
        except Refused:
            self.report.raced += 1
            return
        self.dispatch(taken, kind)

    def dispatch(self, job: JobItem, kind: str) -> None:
        if kind == "lost_continuations" and job.redispatches == 1 and job.hop > RECURSION_HOPS:
            # The continuation that never arrived was the (RECURSION_HOPS + 1)-th invocation
            # of one chain: what Lambda's loop detection drops. A backlog (a step sent again
            # and again) or a lost event at a lower hop is something else, and is not
            # blamed on it.
            observe.event(
                "chain_cut", logging.WARNING, job_id=job.job_id, job_type=job.job_type,
                step=job.step,
                detail=(f"step {job.step} was sent as invocation {job.hop} of one chain and "
                        "never claimed: Lambda's recursive loop detection drops a chain's "
                        f"invocations after {RECURSION_HOPS}. Set RecursiveLoop: Allow on the "
                        "function (the template does); the sweeper re-sends the step "
                        "meanwhile."),
            )
        ancestors = ancestors_of(job)
        route = {"parent_type": ancestors[-1], "ancestors": list(ancestors)} if ancestors else {}
        try:
            # The sweeper's invocation starts a new chain: the event is its first hop.
            self.continuation.dispatch(step_event(job.job_id, job.step, job.job_type, hop=1,
                                                  **route), context=self.context)
        except DispatchFailed as exc:
            self.report.dispatch_errors += 1
            if self.report.first_dispatch_error is None:
                self.report.first_dispatch_error = str(exc)
            observe.event("dispatch_failed", logging.WARNING, job_id=job.job_id,
                          step=job.step, detail=str(exc))
            return
        setattr(self.report, kind, getattr(self.report, kind) + 1)
        self.report.dispatched += 1

    def fail_past_deadline(self, job: JobItem) -> None:
        if _fail_past_deadline(self.store, job.job_id, job.step, self.now):
            self.report.failed_guards += 1
        else:
            self.report.raced += 1


def _fail_past_deadline(store: JobStore, job_id: str, step: int, now: int) -> bool:
    """Claim the job as the sweeper and fail it (joining its parent, if any).

    A parent waiting on children has them cancelled first, then is failed: a sweeper that
    dies in between leaves the parent in flight (past its deadline, its lease running
    out), so the next sweep finishes the job. Failed first, a dead sweeper would leave its
    children running on, since nothing looks at a FAILED job's children again.
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


__all__ = ["SweepReport", "sweep"]
