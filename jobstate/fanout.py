"""Fan-out: child jobs (worker chains), a concurrency cap, their outcomes, progress roll-up.

Ordering gives crash safety:
1. the parent's step creates its children idempotently (deterministic ids, put-if-absent);
2. the parent's fenced commit goes WAITING and ADDs N to `pending` (ADD, not SET, so a
   child that joined before this commit — possible after a crash and a sweep — still
   counts: the sum is exact either way);
3. a child's terminal commit joins the parent in the same transaction (joins.py); with a
   concurrency cap K, child i's join also releases child i+K, so at most K children are
   ever runnable;
4. after the join, the child reads the parent's `pending` (one strongly consistent read):
   at 0 it dispatches the parent's next step. Every join also makes the parent due, so if
   that dispatch is lost the sweeper sends it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from . import codec, completion, observe, schema, transitions
from .completion import CompletionPolicy
from .dynamo import TRANSACTION_CANCELLED, Item, Refused, TransactionRefused, error_code
from .errors import InvalidInput, JobCancelled, JobConflict, JobFinished, JobNotFound
from .events import MAX_DEPTH, step_event
from .historymode import HistoryMode
from .items import child_item, job_item
from .lease import Lease, State
from .records import JobView, Progress, child_id, child_ids_of
from .schema import J
from .signals import Suspend
from .status import JobStatus
from .store import JobStore, Limits

POLICIES = ("fail", "continue")
MAX_CHILDREN = 100_000
PUT_ROUNDS = 3  # each round puts again the children a refused transaction did not meet
NO_BOUNDS = completion.Thresholds(None, None)


def chain_ranges(total: int, chains: int) -> list[tuple[int, int]]:
    """Split [0, total) into `chains` contiguous, nearly equal ranges (none empty)."""
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise InvalidInput(f"total must be an int >= 0, got {total!r}")
    if not isinstance(chains, int) or isinstance(chains, bool) or chains < 1:
        raise InvalidInput(f"chains must be an int >= 1, got {chains!r}")
    chains = min(chains, total) or 1
    base, extra = divmod(total, chains)
    out, start = [], 0
    for i in range(chains):
        end = start + base + (1 if i < extra else 0)
        if end > start:
            out.append((start, end))
        start = end
    return out


@dataclass(frozen=True)
class Spawned:
    """The step ended by spawning children; the runtime commits the parent WAITING."""

    job_type: str
    count: int
    max_concurrency: int | None
    policy: str
    start_events: list[dict[str, Any]] = field(default_factory=list)
    custom_ids: list[str] | None = None
    reason: str = "children"
    thresholds: completion.Thresholds = NO_BOUNDS


@dataclass(frozen=True)
class ChildView:
    child_id: str
    index: int | None
    status: JobStatus
    result: Any
    error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"child_id": self.child_id, "index": self.index, "status": self.status.value,
                "result": self.result, "error": self.error}


def spawn(store: JobStore, lease: Lease, job_type: str, inputs: list[Any], *,
          limits: Limits, max_concurrency: int | None, child_ids: Sequence[str] | None,
          on_child_failure: str, completion_policy: CompletionPolicy | None = None,
          history: HistoryMode | bool = "steps") -> None:
    """Create the children (idempotently) and end the step waiting for them."""
    codec.validate_job_type(job_type)
    if on_child_failure not in POLICIES:
        raise InvalidInput(f"on_child_failure must be one of {POLICIES}, got "
                           f"{on_child_failure!r}")
    n = len(inputs)
    bounds = completion.thresholds(completion_policy, n, on_child_failure)
    if n == 0:
        return
    if n > MAX_CHILDREN:
        raise InvalidInput(f"{n} children in one spawn; the limit is {MAX_CHILDREN}.")
    if max_concurrency is not None and (not isinstance(max_concurrency, int)
                                        or isinstance(max_concurrency, bool)
                                        or max_concurrency < 1):
        raise InvalidInput(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
    if child_ids is not None:
        ids = [codec.validate_job_id(c) for c in child_ids]
        if len(ids) != n or len(set(ids)) != n:
            raise InvalidInput("child_ids must be distinct and one per input.")
        codec.check_budget({"child_ids": codec.dumps(ids, "child_ids")}, 100 * 1024)
    else:
        ids = [child_id(lease.job_id, lease.step, i) for i in range(n)]
    k = max_concurrency or n
    ancestors = [*lease.job.ancestors, lease.job_type]
    if len(ancestors) > MAX_DEPTH:
        raise InvalidInput(f"children nested more than {MAX_DEPTH} levels deep; a job tree "
                           "that deep is a runaway spawn.")
    ancestors_json = codec.dumps(ancestors, "ancestors")
    # Children of a paused type (or below a paused ancestor) are created held.
    held_by = store.pauses.holder([*ancestors, job_type])
    items, inputs_items = [], []
    # What each child's join counts down on the parent (its policy's counters).
    counted = ("s" if bounds.min_successful is not None else "") + (
        "f" if bounds.tolerated is not None else "")
    for i, (cid, inp) in enumerate(zip(ids, inputs, strict=True)):
        extra: dict[str, Any] = {J.PARENT_ID: lease.job_id, J.CHILD_INDEX: i,
                                 J.PARENT_TYPE: lease.job_type, J.ANCESTORS: ancestors_json,
                                 J.PARENT_STEP: lease.step}
        if i + k < n:
            extra[J.RELEASE_ID] = ids[i + k]
        if counted:
            extra[J.COUNTED] = counted
        new = store.new_job_item(job_type, inp, cid, limits, runnable_now=i < k,
                                 paused_by=held_by, extra=extra, history=history)
        items.append(new.item)
        if new.input is not None:
            inputs_items.append(new.input)
    for input_item in inputs_items:  # a child never exists without its input
        try:
            transitions.put_input(store, input_item)
        except Refused:
            raise JobConflict(
                f"cannot spawn child {schema.job_id_of(input_item[schema.PK]['S'])!r} of job "
                f"{lease.job_id!r}: a live job with that id has another input. Child ids must "
                "be unique among live jobs; pass other child_ids.",
                job_id=lease.job_id) from None
    _put_all_if_absent(store, items, lease.job_id, lease.step)
    route = {"parent_type": lease.job_type, "ancestors": ancestors}
    events = [step_event(ids[i], 0, job_type, **route) for i in range(min(k, n))]
    raise Suspend(Spawned(job_type, n, max_concurrency, on_child_failure, events,
                          ids if child_ids is not None else None, thresholds=bounds))


def _put_all_if_absent(store: JobStore, items: list[Item], parent_id: str,
                       spawn_step: int) -> None:
    """Create the children; keep those this spawn made before (a re-run spawn).

    An existing item with a child's id is overwritten when it has expired (TTL deletes
    late; every read treats it as absent already). A live one that this same spawn did not
    make (another parent's, another spawn's, an unrelated job) raises JobConflict before
    the parent commits: adopting it would leave the parent waiting for a child that never
    runs or joins. A refused transaction says which puts met an existing item (and returns
    it); the rest go again in one transaction: a re-run spawn costs two requests per 100.
    """
    for i in range(0, len(items), 100):
        chunk = items[i:i + 100]
        for _ in range(PUT_ROUNDS):
            if not chunk:
                break
            try:
                store.transact([transitions.create_action(store, it) for it in chunk])
                chunk = []
            except TransactionRefused as refusal:
                for n, old in refusal.parts.items():
                    _check_ours(store, chunk[n], old, parent_id, spawn_step)
                chunk = [it for n, it in enumerate(chunk) if n not in refusal.parts]
            except ClientError as exc:
                if error_code(exc) != TRANSACTION_CANCELLED:
                    raise
                break  # an engine that does not say which: one put at a time
        if chunk:
            _put_each_if_absent(store, chunk, parent_id, spawn_step)


def _check_ours(store: JobStore, item: Item, old: Item | None, parent_id: str,
                spawn_step: int) -> None:
    """The live item that kept a child's put from being written must be this spawn's own."""
    mine = job_item(item)
    if old is None:  # a backend that did not return it
        old = store.get_raw(mine.job_id)
        if old is None:  # expired or deleted meanwhile: write ours
            _put_each_if_absent(store, [item], parent_id, spawn_step)
            return
    found = job_item(old)
    if found.parent_id == parent_id and found.parent_step in (None, spawn_step):
        return  # a re-run spawn: the child is there already
    owner = (f"a child of job {found.parent_id!r}" + (
        f" (spawned at step {found.parent_step})" if found.parent_step is not None else "")
             if found.parent_id else "a job that is no child")
    raise JobConflict(
        f"cannot spawn child {mine.job_id!r} of job {parent_id!r} at step {spawn_step}: a "
        f"live job with that id exists, {owner}. Child ids must be unique among live jobs; "
        "pass other child_ids (e.g. with the step in them), or wait until the old job "
        "expires.", job_id=mine.job_id)


def _put_each_if_absent(store: JobStore, items: list[Item], parent_id: str,
                        spawn_step: int) -> None:
    for it in items:
        try:
            store.put(it, transitions.absent_or_expired(store))
        except Refused as refusal:
            _check_ours(store, it, refusal.old, parent_id, spawn_step)


def commit_spawn(store: JobStore, lease: Lease, state: State,
                 spawned: Spawned) -> tuple[int, bool]:
    """The parent's fenced commit to WAITING on its children. Returns (next step, ready)."""
    try:
        pending = transitions.spawn(
            store, lease, state, count=spawned.count, child_type=spawned.job_type,
            policy=spawned.policy, max_concurrency=spawned.max_concurrency,
            child_ids_json=None if spawned.custom_ids is None
            else codec.dumps(spawned.custom_ids, "child_ids"),
            min_successful=spawned.thresholds.min_successful,
            tolerated=spawned.thresholds.tolerated)
    except JobCancelled:
        _withdraw(store, lease, spawned)
        raise
    return lease.step + 1, pending <= 0


def _withdraw(store: JobStore, lease: Lease, spawned: Spawned) -> None:
    """The parent was cancelled between making its children and committing the spawn.

    Those children were never counted nor dispatched: they are deleted (best effort), so
    they do not run as orphans, and a resumed parent's re-run spawn makes them afresh
    (children left CANCELLED would be adopted by it and never join). Each delete is
    conditional on the child being untouched (PENDING, unleased, this spawn's) and, in the
    same transaction, on the parent being still cancelled at this step under our lease.
    """
    ids = spawned.custom_ids or [child_id(lease.job_id, lease.step, i)
                                 for i in range(spawned.count)]
    check = transitions.withdraw_check(store, lease)
    try:
        for i in range(0, len(ids), 99):
            chunk = ids[i:i + 99]
            for _ in range(PUT_ROUNDS):  # each round drops the children that were refused
                if not chunk:
                    break
                try:
                    store.transact([check, *(transitions.withdraw_action(store, lease, c)
                                             for c in chunk)])
                    break
                except TransactionRefused as refusal:
                    if 0 in refusal.parts:
                        return  # the parent is no longer cancelled at this step: keep all
                    chunk = [c for n, c in enumerate(chunk, 1) if n not in refusal.parts]
    except Exception as exc:
        observe.event("spawn_cleanup_failed", logging.WARNING, job_id=lease.job_id,
                      step=lease.step, detail=f"{type(exc).__name__}: {exc}; children of "
                      "the cancelled spawn may start: `jobstate cancel` them")


def children(store: JobStore, parent_id: str, parent: JobView | None = None, *,
             loads: Callable[[str | None], Any] = codec.loads) -> list[ChildView]:
    """Finished children of the job's latest spawn (their CHILD# links), in index order.

    Links of earlier spawns are left out. A child that was resumed and finished again
    rewrites its link (without counting twice); a link that still says it did not succeed
    is checked against the child's own item too (a link written before links were
    rewritten, or a child item rewritten since), and that item's outcome is reported.
    """
    if parent is None:
        item = store.get_job_item(parent_id)
        parent = store.view(item, secrets=False) if item is not None else None
    ids = set(child_ids_of(parent)) if parent is not None else set()
    out = [ChildView(link.child_id, link.index, JobStatus(link.status),
                     loads(link.result), link.error)
           for link in map(child_item, store.partition(parent_id, schema.CHILD_PREFIX))
           if link.child_id in ids]
    out = _refresh_unsuccessful(store, out, loads)
    out.sort(key=lambda c: (c.index if c.index is not None else 1 << 60, c.child_id))
    return out


def _refresh_unsuccessful(store: JobStore, links: list[ChildView],
                          loads: Callable[[str | None], Any]) -> list[ChildView]:
    stale = {c.child_id: c for c in links if c.status != JobStatus.SUCCEEDED}
    if not stale:
        return links  # the common case costs no read
    now = {}
    for item in map(job_item, store.batch_get([schema.job_key(c) for c in stale])):
        if item.status.terminal and item.status != stale[item.job_id].status:
            view = store.view(item, secrets=False)
            now[item.job_id] = ChildView(item.job_id, stale[item.job_id].index, view.status,
                                         loads(item.result), view.error)
    return [now.get(c.child_id, c) for c in links]


def failed_children(store: JobStore, lease: Lease) -> str | None:
    """On the step after a spawn: a 'fail' policy fails the parent if a child failed
    beyond the spawn's tolerance (none, unless its completion policy tolerates some)."""
    job = lease.job
    if job.spawn_step is None or lease.step != job.spawn_step + 1 or job.child_policy != "fail":
        return None
    kids = children(store, job.job_id, job)
    failed = [c for c in kids if c.status != JobStatus.SUCCEEDED]
    if not failed:
        return None
    reason = _reason(job, kids)
    if job.tolerated is not None and reason != completion.FAILURE_TOLERANCE_EXCEEDED:
        return None  # within its tolerance (or min_successful reached)
    first = next((c for c in failed if c.status == JobStatus.FAILED), failed[0])
    return (f"{len(failed)} of {job.children_total} children did not succeed ({reason}; "
            f"first: {first.child_id} {first.status.value}: {first.error}); spawn with "
            "on_child_failure='continue' to handle failed children in the next step.")


def completion_reason(store: JobStore, job: JobView) -> str | None:
    """The latest spawn's verdict (completion.REASONS): decided by a join before every
    child finished, or else from the children's outcomes (None: no spawn)."""
    if job.spawn_step is None:
        return None
    return job.completion_reason or _reason(job, children(store, job.job_id, job))


def _reason(job: JobView, kids: list[ChildView]) -> str:
    if job.completion_reason is not None:
        return job.completion_reason
    ok = sum(c.status == JobStatus.SUCCEEDED for c in kids)
    return completion.final_reason(ok, len(kids) - ok,
                                   completion.Thresholds(job.min_successful, job.tolerated))


def settle_decided(store: JobStore, lease: Lease) -> int:
    """On the step after a spawn its policy decided early: cancel the children that have
    not finished (queued ones never start; running ones stop at their next step). Each
    cancel joins as CANCELLED, as a link only (the spawn is decided), so `children()`
    reports it. Idempotent (a re-run of the step cancels nothing twice). Returns how many."""
    job = lease.job
    if (job.completion_reason is None or job.spawn_step is None
            or lease.step != job.spawn_step + 1):
        return 0
    done = {c.child_id for c in children(store, job.job_id, job)}
    count = 0
    for cid in child_ids_of(job):
        if cid not in done:
            with contextlib.suppress(JobFinished, JobNotFound):  # finished meanwhile
                count += cancel_tree(store, cid, f"parent {job.job_id} decided "
                                     f"{job.completion_reason} at step {job.spawn_step}")
    if count:
        observe.event("children_cancelled", job_id=job.job_id, step=lease.step,
                      detail=f"{count} unfinished children of a decided spawn")
    return count


def rollup(store: JobStore, parent: JobView) -> Progress:
    """The parent's progress from its children's own items (no hot parent item).

    Reads each child (BatchGetItem, 100 per request): done/total summed over children
    that report totals; finished children count as complete.
    """
    ids = child_ids_of(parent)
    if not ids:
        return parent.progress
    done = total = 0.0
    unit = None
    for item in map(job_item, store.batch_get([schema.job_key(c) for c in ids])):
        p = store.view(item, secrets=False).progress
        unit = unit or p.unit
        if p.total:
            total += p.total
            done += p.total if item.status == JobStatus.SUCCEEDED else min(p.done, p.total)
        else:
            total += 1
            done += 1 if item.status.terminal else 0
    return Progress(done, total, unit or "items")


def cancel_tree(store: JobStore, job_id: str, reason: str = "cancelled by operator", *,
                by: str | None = None) -> int:
    """Cancel a job and, recursively, its unfinished children. Returns how many changed.
    `by` (who) goes into each job's history."""
    view = store.cancel(job_id, reason, by=by)
    count = 1
    for cid in child_ids_of(view):
        try:
            child = store.get(cid)
        except JobNotFound:
            continue
        if child.status.terminal:
            continue
        with contextlib.suppress(JobFinished):  # it finished meanwhile
            count += cancel_tree(store, cid, f"parent {job_id} cancelled", by=by)
    return count
