"""Fan-out: child jobs (worker chains), their join, a concurrency cap, progress roll-up.

Ordering gives crash safety:
1. the parent's step creates its children idempotently (deterministic ids, put-if-absent);
2. the parent's fenced commit goes WAITING and ADDs N to `pending` (ADD, not SET, so a
   child that joined before this commit — possible after a crash and a sweep — still
   counts: the sum is exact either way);
3. a child's terminal commit joins the parent in the same transaction: put
   `CHILD#<id>` if absent (a child finishing twice never double-counts) and ADD -1 to
   the parent's `pending`; with a concurrency cap K, child i's join also releases child
   i+K, so at most K children are ever runnable;
4. after the join, the child reads the parent's `pending` (one strongly consistent
   read): at 0 it dispatches the parent's next step. Two last children may both see 0;
   the parent's claim de-duplicates. Every join also makes the parent due, so if that
   dispatch is lost the sweeper sends it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from . import codec, observe, protocol, schema
from .dynamo import (
    CANCELLED_BY_CONDITION,
    CONDITION_FAILED,
    TRANSACTION_CANCELLED,
    Update,
    av,
    error_code,
)
from .errors import InvalidInput, JobCancelled, JobConflict, JobNotFound
from .protocol import Lease, State
from .records import JobView, Progress
from .status import JobStatus
from .store import JobStore, Limits, _job_key, routing

if TYPE_CHECKING:
    from .context import StepContext

PARENT_STEP = "parent_step"  # on a child item: the parent step that spawned it
QUEUED_UNTIL = 9_999_999_999_999  # not_before of a child waiting for a concurrency slot
POLICIES = ("fail", "continue")
MAX_CHILDREN = 100_000
MAX_DEPTH = 16


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


def child_id(parent_id: str, step: int, index: int) -> str:
    cid = f"{parent_id}.s{step}.{index}"
    if len(cid) > 200:
        cid = f"{codec.stable_id(parent_id)}.s{step}.{index}"
    return cid


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


def spawn(
    ctx: StepContext,
    job_type: str,
    inputs: list[Any],
    *,
    max_concurrency: int | None,
    child_ids: Sequence[str] | None,
    on_child_failure: str,
) -> None:
    from .app import step_event
    from .context import Suspend

    store, lease = ctx.store, ctx.lease
    codec.validate_job_type(job_type)
    if on_child_failure not in POLICIES:
        raise InvalidInput(f"on_child_failure must be one of {POLICIES}, got "
                           f"{on_child_failure!r}")
    n = len(inputs)
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
    spec = _child_limits(ctx, job_type)
    ancestors = [*lease.job.ancestors, lease.job_type]
    if len(ancestors) > MAX_DEPTH:
        raise InvalidInput(f"children nested more than {MAX_DEPTH} levels deep; a job tree "
                           "that deep is a runaway spawn.")
    ancestors_json = codec.dumps(ancestors, "ancestors")
    route = {"parent_type": lease.job_type, "ancestors": ancestors}
    items = []
    for i, (cid, inp) in enumerate(zip(ids, inputs, strict=True)):
        queued = i >= k
        extra: dict[str, Any] = {"parent_type": lease.job_type, "ancestors": ancestors_json,
                                 PARENT_STEP: lease.step}
        if i + k < n:
            extra["release_id"] = ids[i + k]
        if queued:
            extra["not_before"] = QUEUED_UNTIL
            extra["wait_reason"] = "concurrency"
        _, item = store.new_job_item(
            job_type, inp, cid, spec, parent_id=lease.job_id, child_index=i,
            runnable_now=not queued, extra=extra,
        )
        items.append(item)
    _put_all_if_absent(store, items, lease.job_id, lease.step)
    events = [step_event(ids[i], 0, job_type, **route) for i in range(min(k, n))]
    raise Suspend(Spawned(job_type, n, max_concurrency, on_child_failure, events,
                          ids if child_ids is not None else None))


def _child_limits(ctx: StepContext, job_type: str) -> Limits:
    app_specs = getattr(ctx, "_specs", None)
    if app_specs and job_type in app_specs:
        limits: Limits = app_specs[job_type].limits
        return limits
    return Limits()


def _put_all_if_absent(store: JobStore, items: list[dict[str, Any]], parent_id: str,
                       spawn_step: int) -> None:
    """Create the children; keep those this spawn made before (a re-run spawn).

    An existing item with a child's id is overwritten when it has expired (TTL deletes
    late; every read treats it as absent already). A live one that this same spawn did not
    make (another parent's, another spawn's, an unrelated job) raises JobConflict before
    the parent commits: adopting it would leave the parent waiting for a child that never
    runs or joins.

    A refused transaction says which puts met an existing item (and returns it); the rest
    go again in one transaction, so a re-run spawn costs two requests per 100 children.
    """
    for i in range(0, len(items), 100):
        chunk = items[i:i + 100]
        for _ in range(3):
            if not chunk:
                break
            try:
                store.call("transact_write_items", TransactItems=[
                    {"Put": {"TableName": store.table_name, "Item": it,
                             **_absent_or_expired(store),
                             "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
                    for it in chunk
                ])
                break
            except ClientError as exc:
                if error_code(exc) != TRANSACTION_CANCELLED:
                    raise
                reasons = exc.response.get("CancellationReasons") or []
                if len(reasons) != len(chunk):
                    _put_each_if_absent(store, chunk, parent_id, spawn_step)
                    break
                rest = []
                for it, r in zip(chunk, reasons, strict=True):
                    if r.get("Code") in (CANCELLED_BY_CONDITION, CONDITION_FAILED):
                        old: Any = r.get("Item")
                        _check_ours(store, it, dict(old) if old else None, parent_id,
                                    spawn_step)
                    else:
                        rest.append(it)
                chunk = rest
        else:
            _put_each_if_absent(store, chunk, parent_id, spawn_step)


def _absent_or_expired(store: JobStore) -> dict[str, Any]:
    # The same test as JobStore._expired: expires_at * 1000 < now_ms.
    limit = (store.clock.now_ms() - 1) // 1000
    return {"ConditionExpression": "attribute_not_exists(pk) OR expires_at <= :exp_limit",
            "ExpressionAttributeValues": {":exp_limit": av(limit)}}


def _check_ours(store: JobStore, item: dict[str, Any], old: dict[str, Any] | None,
                parent_id: str, spawn_step: int) -> None:
    """The live item that kept a child's put from being written must be this spawn's own."""
    job_id = item["job_id"]["S"]
    if old is None:  # a backend that did not return it
        old = store.get_raw(job_id)
        if old is None:  # expired or deleted meanwhile: write ours
            _put_each_if_absent(store, [item], parent_id, spawn_step)
            return
    old_parent = old.get("parent_id", {}).get("S")
    old_step = old.get(PARENT_STEP, {}).get("N")
    if old_parent == parent_id and (old_step is None or int(old_step) == spawn_step):
        return  # a re-run spawn: the child is there already
    owner = (f"a child of job {old_parent!r}" + (f" (spawned at step {old_step})"
                                                 if old_step is not None else "")
             if old_parent else "a job that is no child")
    raise JobConflict(
        f"cannot spawn child {job_id!r} of job {parent_id!r} at step {spawn_step}: a live job "
        f"with that id exists, {owner}. Child ids must be unique among live jobs; pass "
        "other child_ids (e.g. with the step in them), or wait until the old job expires.",
        job_id=job_id,
    )


def _put_each_if_absent(store: JobStore, items: list[dict[str, Any]], parent_id: str,
                        spawn_step: int) -> None:
    for it in items:
        try:
            store.call("put_item", Item=it, **_absent_or_expired(store),
                       ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ClientError as e:
            if error_code(e) != CONDITION_FAILED:
                raise
            old: Any = e.response.get("Item")
            _check_ours(store, it, dict(old) if old else None, parent_id, spawn_step)


def commit_spawn(store: JobStore, lease: Lease, state: State,
                 spawned: Spawned) -> tuple[int, bool]:
    """The parent's fenced commit to WAITING on its children. Returns (next step, ready)."""
    now = store.clock.now_ms()
    nxt = lease.step + 1
    upd = (
        protocol._fenced(lease, now)
        .set("cursor", state.cursor)
        .set("tokens", state.tokens)
        .set("progress", state.progress)
        .set("status", JobStatus.WAITING.value)
        .set("wait_reason", "children")
        .set("children_total", spawned.count)
        .set("spawn_step", lease.step)
        .set("child_type", spawned.job_type)
        .set("child_policy", spawned.policy)
        .set("attempt", 0)
        .set("due_at", now + store.dispatch_timeout_ms)
        .set("dk", schema.due_hash(lease.job_id))
        .remove("lease_owner", "lease_expires_at")
        .add("pending", spawned.count)
        .add("run_ms", max(0, now - lease.claimed_at))
    )
    # Both describe the latest spawn only: an earlier spawn's must not stay behind.
    upd.set_opt("max_concurrency", spawned.max_concurrency)
    upd.set_opt("child_ids", None if spawned.custom_ids is None
                else codec.dumps(spawned.custom_ids, "child_ids"))
    upd.sets.append(f"#step = {upd.value('next', nxt)}")
    try:
        resp = protocol._update(store, lease, upd, "spawn commit", returns="UPDATED_NEW")
    except JobCancelled:
        _cancel_spawned(store, lease, spawned)
        raise
    pending = int(resp.get("Attributes", {}).get("pending", {}).get("N", "1"))
    return nxt, pending <= 0


def _cancel_spawned(store: JobStore, lease: Lease, spawned: Spawned) -> None:
    """The parent was cancelled between making its children and committing the spawn.

    Those children were never counted nor dispatched: they are deleted (best effort), so
    they do not run as orphans, and a resumed parent's re-run spawn makes them afresh
    (children left CANCELLED would be adopted by it and never join). Each delete is
    conditional on the child being untouched (PENDING, unleased, this spawn's) and, in the
    same transaction, on the parent being still cancelled at this step under our lease.
    """
    from .errors import JobStateError

    ids = spawned.custom_ids or [child_id(lease.job_id, lease.step, i)
                                 for i in range(spawned.count)]
    check = {"ConditionCheck": {
        "TableName": store.table_name, "Key": _job_key(lease.job_id),
        # Fenced: only the step that made these children (its lease outlives the
        # cancel) may withdraw them, and only while the parent is still cancelled there.
        "ConditionExpression": "lease_owner = :me AND #step = :n AND #status = :cancelled",
        "ExpressionAttributeNames": {"#step": "step", "#status": "status"},
        "ExpressionAttributeValues": {":me": av(lease.owner), ":n": av(lease.step),
                                      ":cancelled": av(JobStatus.CANCELLED.value)}}}

    def delete(cid: str) -> dict[str, Any]:
        return {"Delete": {
            "TableName": store.table_name, "Key": _job_key(cid),
            "ConditionExpression": ("#status = :pending AND attribute_not_exists(lease_owner)"
                                    f" AND parent_id = :p AND {PARENT_STEP} = :n"),
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":pending": av(JobStatus.PENDING.value),
                                          ":p": av(lease.job_id), ":n": av(lease.step)}}}

    try:
        for i in range(0, len(ids), 99):
            chunk = ids[i:i + 99]
            for _ in range(3):  # each round drops the children that were refused
                if not chunk:
                    break
                try:
                    store.call("transact_write_items",
                               TransactItems=[check, *(delete(c) for c in chunk)])
                    break
                except ClientError as exc:
                    if error_code(exc) != TRANSACTION_CANCELLED:
                        raise
                    codes = [r.get("Code") for r in
                             exc.response.get("CancellationReasons", [])]
                    if len(codes) != len(chunk) + 1:
                        raise  # a backend that does not say which: logged below
                    if codes[0] not in ("None", None):
                        return  # the parent is no longer cancelled at this step: keep all
                    chunk = [c for c, code in zip(chunk, codes[1:], strict=True)
                             if code in ("None", None)]
    except (ClientError, JobStateError) as exc:
        observe.event("spawn_cleanup_failed", logging.WARNING, job_id=lease.job_id,
                      step=lease.step, detail=f"{type(exc).__name__}: {exc}; children of "
                      "the cancelled spawn may start: `jobstate cancel` them")


def join_actions(store: JobStore, lease: Lease, status: str, result_json: str | None,
                 error: str | None) -> list[dict[str, Any]] | None:
    """Transaction actions that join a finishing child to its parent (None: no parent)."""
    return join_actions_for(store, lease.job, status, result_json, error)


def join_actions_for(store: JobStore, job: JobView, status: str, result_json: str | None,
                     error: str | None) -> list[dict[str, Any]] | None:
    if not job.parent_id:
        return None
    now = store.clock.now_ms()
    link: dict[str, Any] = {
        "pk": av(schema.job_pk(job.parent_id)),
        "sk": av(schema.child_sk(job.job_id)),
        "child_id": av(job.job_id),
        "status": av(status),
        "joined_at": av(now),
        "expires_at": av(now // 1000 + store.retention_s * 2),
    }
    if job.child_index is not None:
        link["index"] = av(job.child_index)
    if result_json is not None:
        link["result"] = av(result_json)
    if error is not None:
        link["error"] = av(error[:2000])
    parent = (Update().add("pending", -1).set("due_at", now + store.dispatch_timeout_ms)
              .set("dk", schema.due_hash(job.parent_id)).where("attribute_exists(pk)"))
    # A link exists already when this child joined before (resumed, finished again): the
    # join is refused, so it never counts twice. A link older than this child's item is
    # stale (left by an expired job that had this id): it is overwritten.
    put: dict[str, Any] = {"TableName": store.table_name, "Item": link,
                           "ConditionExpression": "attribute_not_exists(sk)"}
    if job.created_at is not None:
        put["ConditionExpression"] += " OR joined_at < :stale_before"
        put["ExpressionAttributeValues"] = {
            ":stale_before": av(job.created_at - store.retention_s * 500)}
    actions: list[dict[str, Any]] = [
        {"Put": put},
        {"Update": {"TableName": store.table_name, "Key": _job_key(job.parent_id),
                    **parent.kwargs()}},
    ]
    if job.release_id:
        rel = (Update().remove("not_before", "wait_reason")
               .set("due_at", now + store.dispatch_timeout_ms)
               .set("dk", schema.due_hash(job.release_id))
               .where("attribute_exists(pk)"))
        actions.append({"Update": {"TableName": store.table_name,
                                   "Key": _job_key(job.release_id), **rel.kwargs()}})
    return actions


def relink_actions(joins: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For a child that joined before: rewrite its link with the new outcome, and count
    nothing (the parent's pending count and a released sibling were settled then)."""
    put = joins[0]["Put"]
    return [{"Put": {"TableName": put["TableName"], "Item": put["Item"],
                     "ConditionExpression": "attribute_exists(sk)"}}]


def transact_join(run: Callable[[list[dict[str, Any]]], Any], first: dict[str, Any],
                  joins: list[dict[str, Any]]) -> None:
    """Run the child's own terminal write `first` and its `joins` as one transaction.

    When only part of the join is refused, the transaction is redone without that part,
    so the child's own write never waits on its parent's bookkeeping:
    the link exists (the child joined before: it was resumed and finished again) → the
    link is rewritten, nothing counted; the link vanished meanwhile, or the parent is gone
    (expired and deleted) → no join; the released sibling is gone → join, release nothing.
    A refusal of `first` itself is the caller's (re-raised).
    """
    actions, relinked = joins, False
    for _ in range(4):  # each round drops a part (or relinks once): 4 rounds at most
        try:
            run([first, *actions])
            return
        except ClientError as exc:
            if error_code(exc) != TRANSACTION_CANCELLED:
                raise
            codes = [r.get("Code") for r in exc.response.get("CancellationReasons", [])]
            refused = {i for i, c in enumerate(codes)
                       if c in (CANCELLED_BY_CONDITION, CONDITION_FAILED)}
            if not actions or not refused or 0 in refused:
                raise
            if 1 in refused:
                actions = [] if relinked else relink_actions(joins)
                relinked = True
            elif 2 in refused:
                actions = []
            elif 3 in refused and len(actions) == 3:
                actions = actions[:2]
            else:
                raise
    raise AssertionError("unreachable: every round drops a part of the join")


def after_join(store: JobStore, lease: Lease) -> list[dict[str, Any]]:
    """Events to send after a child's terminal commit: the released child, the parent."""
    return after_join_for(store, lease.job)


def after_join_for(store: JobStore, job: JobView) -> list[dict[str, Any]]:
    from .app import step_event

    if not job.parent_id:
        return []
    events = []
    if job.release_id:  # a sibling: same parent, same ancestors
        events.append(step_event(job.release_id, 0, job.job_type, **routing(job)))
    resp = store.call(
        "get_item", Key=_job_key(job.parent_id), ConsistentRead=True,
        ProjectionExpression="pending, #step, job_type, #status",
        ExpressionAttributeNames={"#step": "step", "#status": "status"},
    )
    item = resp.get("Item")
    if item and int(item.get("pending", {}).get("N", "1")) <= 0 and item.get(
        "status", {}
    ).get("S") == JobStatus.WAITING.value:
        up = job.ancestors[:-1]  # the parent's own ancestors
        route = {"parent_type": up[-1], "ancestors": list(up)} if up else {}
        events.append(step_event(job.parent_id, int(item["step"]["N"]),
                                 item["job_type"]["S"], **route))
    return events


def children(store: JobStore, parent_id: str,
             parent: JobView | None = None) -> list[ChildView]:
    """Finished children of the job's latest spawn (their CHILD# links), in index order.

    Links of earlier spawns are left out. A child that was resumed and finished again
    rewrites its link (without counting twice); a link that still says it did not succeed
    is checked against the child's own item too (a link written before links were
    rewritten, or a child item rewritten since), and that item's outcome is reported.
    """
    if parent is None:
        raw = store.get_raw(parent_id)
        parent = store.view(raw, secrets=False) if raw is not None else None
    ids = set(child_ids_of(parent)) if parent is not None else set()
    out = []
    for item in store._query_prefix(parent_id, "CHILD#"):
        if item["child_id"]["S"] not in ids:
            continue
        out.append(ChildView(
            child_id=item["child_id"]["S"],
            index=int(item["index"]["N"]) if "index" in item else None,
            status=JobStatus(item["status"]["S"]),
            result=codec.loads(item.get("result", {}).get("S")),
            error=item.get("error", {}).get("S"),
        ))
    out = _refresh_unsuccessful(store, out)
    out.sort(key=lambda c: (c.index if c.index is not None else 1 << 60, c.child_id))
    return out


def _refresh_unsuccessful(store: JobStore, links: list[ChildView]) -> list[ChildView]:
    stale = {c.child_id: c for c in links if c.status != JobStatus.SUCCEEDED}
    if not stale:
        return links  # the common case costs no read
    now = {}
    for raw in store.batch_get_raw([_job_key(c) for c in stale]):
        if store._expired(raw):
            continue
        view = store.view(raw, secrets=False)
        if view.status.terminal and view.status != stale[view.job_id].status:
            now[view.job_id] = ChildView(view.job_id, stale[view.job_id].index, view.status,
                                         view.result, view.error)
    return [now.get(c.child_id, c) for c in links]


def before_step(store: JobStore, lease: Lease) -> str | None:
    """On the step after a spawn: a 'fail' policy fails the parent if a child failed."""
    job = lease.job
    if job.spawn_step is None or lease.step != job.spawn_step + 1 or job.child_policy != "fail":
        return None
    failed = [c for c in children(store, job.job_id, job) if c.status != JobStatus.SUCCEEDED]
    if not failed:
        return None
    first = failed[0]
    return (f"{len(failed)} of {job.children_total} children did not succeed (first: "
            f"{first.child_id} {first.status.value}: {first.error}); spawn with "
            "on_child_failure='continue' to handle failed children in the next step.")


def child_ids_of(job: JobView) -> list[str]:
    if job.spawn_step is None or not job.children_total:
        return []
    if job.child_ids:
        return list(job.child_ids)
    return [child_id(job.job_id, job.spawn_step, i) for i in range(job.children_total)]


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
    for raw in store.batch_get_raw([_job_key(c) for c in ids]):
        view = store.view(raw, secrets=False)
        p = view.progress
        unit = unit or p.unit
        if p.total:
            total += p.total
            done += p.total if view.status == JobStatus.SUCCEEDED else min(p.done, p.total)
        else:
            total += 1
            done += 1 if view.status.terminal else 0
    return Progress(done, total, unit or "items")


def cancel_tree(store: JobStore, job_id: str, reason: str = "cancelled by operator") -> int:
    """Cancel a job and, recursively, its unfinished children. Returns how many changed."""
    from .errors import JobFinished

    try:
        view = store.cancel(job_id, reason)
    except JobNotFound:
        raise
    count = 1
    for cid in child_ids_of(view):
        try:
            child = store.get(cid)
        except JobNotFound:
            continue
        if child.status.terminal:
            continue
        with contextlib.suppress(JobFinished):  # it finished meanwhile
            count += cancel_tree(store, cid, f"parent {job_id} cancelled")
    return count
