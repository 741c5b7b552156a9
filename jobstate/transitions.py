"""The job record's state machine: every write to a job item is a transition here.

Each transition states its fence (the condition under which DynamoDB applies it) and its
effect on status, step, lease and due (`TRANSITIONS`, rendered into docs/concepts.md).
Other modules ask for a transition by name; none builds an update on a job item. A step's
writes are fenced by its lease (`owner = me AND step = N AND status = RUNNING`), so a stale
invocation never overwrites newer state; a refusal becomes `LeaseLost` / `JobCancelled`,
or is recognised as this invocation's own write resent after its answer was lost.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import codec, history, schema
from .dynamo import Item, Refused, TransactionRefused, Update, av, condition
from .errors import JobCancelled, LeaseLost
from .history import history_item
from .items import JobItem, job_item
from .lease import NO_OWNER, Lease, State
from .schema import ACTIVE, J
from .status import RUNNABLE, JobStatus
from .table import Table

QUEUED_UNTIL = 9_999_999_999_999  # not_before of a child waiting for a concurrency slot
ERROR_CHARS = 4000


@dataclass(frozen=True)
class Transition:
    """One named write to a job item: when it applies, and what it changes."""

    name: str
    fence: str
    status: str
    step: str
    lease: str
    due: str


STEP_FENCE = "lease_owner = me, step = N, status = RUNNING"
TRANSITIONS = (
    Transition("create", "no live item with this id", "PENDING", "0", "none",
               "now + dispatch timeout (a queued child: none)"),
    Transition("claim", "step = N, status PENDING/RUNNING/WAITING, no live lease, wait "
               "over, no pending children, its type", "RUNNING", "=", "taken",
               "lease expiry"),
    Transition("checkpoint", STEP_FENCE, "=", "=", "=", "="),
    Transition("commit", STEP_FENCE, "RUNNING", "+1", "released",
               "now + dispatch timeout"),
    Transition("wait", STEP_FENCE, "WAITING", "+1", "released", "end of the wait"),
    Transition("retry", STEP_FENCE, "=", "=", "released", "end of the backoff"),
    Transition("defer", STEP_FENCE, "=", "=", "released", "the deferral's end"),
    Transition("spawn", STEP_FENCE, "WAITING", "+1", "released", "now + dispatch timeout"),
    Transition("finish", STEP_FENCE, "SUCCEEDED/FAILED", "+1 if its result is committed",
               "released", "none"),
    Transition("release", STEP_FENCE, "=", "=", "released", "now + dispatch timeout"),
    Transition("release-cancelled", "lease_owner = me, status = CANCELLED", "=", "=",
               "released", "="),
    Transition("cancel", "status PENDING/RUNNING/WAITING", "CANCELLED", "=", "=", "none"),
    Transition("resume", "status as read (FAILED/CANCELLED)", "RUNNING", "=", "=", "now"),
    Transition("wake", "due later, no lease, wait over, no pending children", "=", "=",
               "=", "now"),
    Transition("join", "the parent exists", "=", "=", "=", "now + dispatch timeout"),
    Transition("release-sibling", "the sibling exists", "=", "=", "=",
               "now + dispatch timeout"),
    Transition("withdraw", "PENDING, no lease, this parent's spawn at step N; the parent "
               "CANCELLED at step N under the spawner's lease", "deleted", "-", "-", "-"),
    Transition("sweep-take", "step = N, due as read", "=", "=", "=",
               "now + dispatch timeout, doubled per re-dispatch"),
    Transition("sweep-postpone", "step = N, due as read", "=", "=", "=", "later"),
    Transition("sweep-undue", "status as read (finished)", "=", "=", "=", "none"),
    Transition("purge", "expired", "deleted", "-", "-", "-"),
)


def table_markdown() -> str:
    """The transitions as the table docs/concepts.md shows."""
    rows = ["| transition | fence (applied only if) | status | step | lease | due |",
            "|---|---|---|---|---|---|"]
    rows += [f"| `{t.name}` | {t.fence} | {t.status} | {t.step} | {t.lease} | {t.due} |"
             for t in TRANSITIONS]
    return "\n".join(rows)


def _job(upd: Update) -> Update:
    """The update must meet an existing item (an update never creates a job)."""
    return upd.where(upd.exists(schema.PK))


def _fenced(lease: Lease, now: int) -> Update:
    # `last_writer` lets a resent write (botocore retries one whose response was lost)
    # recognise that its first attempt was applied.
    upd = Update().set(J.UPDATED, now).set(J.LAST_WRITER, lease.owner)
    return upd.where(upd.eq(J.OWNER, lease.owner), upd.eq(J.STEP, lease.step),
                     upd.eq(J.STATUS, JobStatus.RUNNING.value))


def _state(upd: Update, state: State) -> Update:
    return upd.set(J.CURSOR, state.cursor).set(J.TOKENS, state.tokens).set(
        J.PROGRESS, state.progress)


def _due(upd: Update, job_id: str, at: int) -> Update:
    return upd.set(J.DUE, at).set(J.DUE_SHARD, schema.due_hash(job_id))


def _ran(upd: Update, lease: Lease, now: int) -> Update:
    upd.add(J.RUN_MS, max(0, now - lease.claimed_at))
    if lease.takeover:
        upd.add(J.TAKEOVERS, 1)
    return upd


def _terminal(upd: Update, job_type: str, status: JobStatus, now: int, table: Table) -> Update:
    return (upd.set(J.STATUS, status.value).set(J.STATUS_AT, now)
            .set(J.LIST_KEY, schema.list_range(job_type, status.value, now))
            .set(J.EXPIRES, now // 1000 + table.retention_s)
            .remove(J.OWNER, J.LEASE, J.DUE, J.DUE_SHARD, J.NOT_BEFORE))


def lost(table: Table, lease: Lease, old: Item | None, what: str) -> LeaseLost:
    """Why a fenced write of the step was refused: the job was cancelled, or another
    invocation holds it now."""
    item = job_item(old) if old is not None else table.get_job_item(lease.job_id)
    if item is not None and item.status == JobStatus.CANCELLED:
        return JobCancelled(
            f"job {lease.job_id!r} was cancelled while step {lease.step} ran; its {what} was "
            "not written and nothing will be dispatched.", job_id=lease.job_id)
    return LeaseLost(
        f"step {lease.step} of job {lease.job_id!r} is no longer held by this invocation "
        f"(job at step {item.step if item else None}, lease "
        f"{(item.lease_owner if item else None) or 'none'}); its {what} was not written "
        "and nothing will be dispatched. Stop work and return.", job_id=lease.job_id)


def _apply(table: Table, lease: Lease, upd: Update, what: str, *, returns: str = "NONE",
           applied: Callable[[JobItem], bool] | None = None) -> Item:
    try:
        return table.update(schema.job_key(lease.job_id), upd, returns=returns)
    except Refused as refusal:
        old = job_item(refusal.old) if refusal.old is not None else None
        if (applied is not None and old is not None and old.last_writer == lease.owner
                and applied(old)):
            # botocore resent this write after its response was lost; the first attempt
            # was applied, so it is done.
            return {}
        raise lost(table, lease, refusal.old, what) from None


def action(table: Table, key: Item, upd: Update) -> dict[str, Any]:
    """A job-item update as a transaction action (its refusal returns the item)."""
    return {"Update": {"TableName": table.table_name, "Key": key, **upd.kwargs(),
                       "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}


def fenced_transaction(table: Table, lease: Lease, actions: list[dict[str, Any]],
                       what: str) -> None:
    """A transaction whose first action is the step's fenced update of its job."""
    try:
        table.transact(actions)
    except TransactionRefused as refusal:
        if 0 not in refusal.parts:
            raise
        raise lost(table, lease, refusal.parts[0], what) from None


# -- creation -----------------------------------------------------------------------------------


def new_job(table: Table, job_id: str, job_type: str, *, input_json: str, cursor_json: str,
            max_attempts: int, max_steps: int, deadline_at: int | None,
            runnable_now: bool = True, history: bool = False,
            extra: dict[str, Any] | None = None) -> Item:
    """The item of a new PENDING job at step 0 (validated and encoded by the caller)."""
    now = table.clock.now_ms()
    item: Item = {
        **schema.job_key(job_id),
        J.JOB_ID: av(job_id), J.TYPE: av(job_type), J.STATUS: av(JobStatus.PENDING.value),
        J.STEP: av(0), J.INPUT: av(input_json),
        J.INPUT_HASH: av(codec.input_hash(job_type + "\x1f" + input_json)),
        J.CURSOR: av(cursor_json), J.ATTEMPT: av(0), J.MAX_ATTEMPTS: av(max_attempts),
        J.MAX_STEPS: av(max_steps), J.CREATED: av(now), J.UPDATED: av(now),
        J.VERSION: av(1), J.INVOCATIONS: av(0), J.LIST_SHARD: av(schema.list_hash(job_id)),
        J.LIST_KEY: av(schema.list_range(job_type, ACTIVE, now)),
    }
    if runnable_now:
        item[J.DUE] = av(now + table.dispatch_timeout_ms)
        item[J.DUE_SHARD] = av(schema.due_hash(job_id))
    else:
        item[J.NOT_BEFORE] = av(QUEUED_UNTIL)
        item[J.WAIT_REASON] = av("concurrency")
    if deadline_at is not None:
        item[J.DEADLINE] = av(deadline_at)
    if history:
        item[J.HISTORY_ON] = av(True)
    for k, v in (extra or {}).items():
        item[k] = av(v)
    return item


def create(table: Table, item: Item) -> None:
    """Put a new job item if no item has its id (`Refused` with the existing one)."""
    table.put(item, condition(lambda c: c.absent(schema.PK)))


def absent_or_expired(table: Table) -> dict[str, Any]:
    """The condition of a child's put: no item, or an expired one (TTL deletes late)."""
    limit = (table.clock.now_ms() - 1) // 1000  # expired: expires_at * 1000 < now_ms
    return condition(lambda c: f"{c.absent(schema.PK)} OR {c.n(J.EXPIRES)} <= {c.v(limit)}")


def create_action(table: Table, item: Item) -> dict[str, Any]:
    """A child's put as a transaction action: absent or expired."""
    return {"Put": {"TableName": table.table_name, "Item": item, **absent_or_expired(table),
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}


def purge(table: Table, job_id: str) -> None:
    """Delete a job item only while it is still expired (`Refused` otherwise)."""
    now_s = table.clock.now_ms() // 1000
    table.delete(schema.job_key(job_id), condition(
        lambda c: f"{c.exists(J.EXPIRES)} AND {c.n(J.EXPIRES)} < {c.v(now_s)}"))


# -- the step ----------------------------------------------------------------------------------


def claim(table: Table, job_id: str, step: int, owner: str, lease_until_ms: int, *,
          waiting_children_ok: bool = False, job_type: str | None = None) -> Item:
    """Take step `step` (ALL_NEW), or `Refused` with the item as it was."""
    now = table.clock.now_ms()
    upd = (Update().set(J.STATUS, JobStatus.RUNNING.value).set(J.OWNER, owner)
           .set(J.LEASE, lease_until_ms))
    upd.set_expr(J.PREV_OWNER, f"if_not_exists({upd.n(J.OWNER)}, {upd.v(NO_OWNER)})")
    # If this invocation dies, the sweeper finds the job when its lease runs out.
    _due(upd, job_id, lease_until_ms).set(J.UPDATED, now)
    upd.remove(J.NOT_BEFORE, J.WAIT_REASON, J.REDISPATCHES).add(J.INVOCATIONS, 1)
    _job(upd).where(upd.eq(J.STEP, step),
                    upd.in_(J.STATUS, [s.value for s in (JobStatus.PENDING, JobStatus.RUNNING,
                                                          JobStatus.WAITING)]),
                    upd.absent_or(J.LEASE, "<", now), upd.absent_or(J.NOT_BEFORE, "<=", now))
    if not waiting_children_ok:
        upd.where(upd.absent_or(J.PENDING, "<=", 0))
    if job_type is not None:
        upd.where(upd.eq(J.TYPE, job_type))
    return table.update(schema.job_key(job_id), upd, returns="ALL_NEW")


def checkpoint(table: Table, lease: Lease, state: State) -> None:
    _apply(table, lease, _state(_fenced(lease, table.clock.now_ms()), state), "checkpoint")


def commit(table: Table, lease: Lease, state: State, *, wait_until_ms: int | None = None,
           wait_reason: str | None = None, hop: int | None = None) -> int:
    """Step N ends and N+1 becomes due (the `commit`, or the `wait` with `wait_until_ms`).
    Returns N+1."""
    now = table.clock.now_ms()
    nxt = lease.step + 1
    # Waiting: due when the wait ends. Otherwise due if the continuation is not claimed
    # within dispatch_timeout (it was lost): the sweeper re-sends it then.
    due = wait_until_ms if wait_until_ms is not None else now + table.dispatch_timeout_ms
    upd = _ran(_due(_state(_fenced(lease, now), state), lease.job_id, due), lease, now)
    # The step is done: an earlier attempt's error is history now (its history item).
    upd.set(J.ATTEMPT, 0).remove(J.OWNER, J.LEASE, J.ERROR, J.ERROR_TYPE)
    upd.sets.append(f"{upd.n(J.STEP)} = {upd.v(nxt)}")
    if wait_until_ms is not None:
        upd.set(J.STATUS, JobStatus.WAITING.value).set(J.NOT_BEFORE, wait_until_ms)
        upd.set(J.WAIT_REASON, wait_reason or "sleep")
    elif hop is not None:
        upd.set(J.HOP, hop)
    _apply(table, lease, upd, "commit", applied=lambda old: old.step == nxt)
    if lease.job.history_on:
        history.record(table, lease, "committed")
    return nxt


def retry(table: Table, lease: Lease, error: str, error_type: str, *, attempt: int,
          at_ms: int) -> None:
    """The attempt failed and another is due at `at_ms` (with its history item)."""
    now = table.clock.now_ms()
    upd = (_due(_fenced(lease, now), lease.job_id, at_ms).set(J.ERROR, error[:ERROR_CHARS])
           .set(J.ERROR_TYPE, error_type).set(J.ATTEMPT, attempt).set(J.NOT_BEFORE, at_ms)
           .set(J.WAIT_REASON, "retry").remove(J.OWNER, J.LEASE).add(J.RETRIES, 1))
    hist = history_item(table, lease, "retry_scheduled", now, detail=error, attempt=attempt)
    fenced_transaction(table, lease, [action(table, schema.job_key(lease.job_id), upd),
                                      {"Put": {"TableName": table.table_name, "Item": hist}}],
                       "failure record")


def fail(table: Table, lease: Lease, error: str, error_type: str, *, attempt: int) -> None:
    """The last attempt failed: the job is FAILED at step N (with its history item)."""
    now = table.clock.now_ms()
    upd = _terminal(_fenced(lease, now), lease.job_type, JobStatus.FAILED, now, table)
    upd.set(J.ERROR, error[:ERROR_CHARS]).set(J.ERROR_TYPE, error_type).set(J.ATTEMPT, attempt)
    hist = history_item(table, lease, "failed", now, detail=error, attempt=attempt)
    fenced_transaction(table, lease, [action(table, schema.job_key(lease.job_id), upd),
                                      {"Put": {"TableName": table.table_name, "Item": hist}}],
                       "failure record")


def defer(table: Table, lease: Lease, until_ms: int, reason: str) -> None:
    """End the step without committing it or counting an attempt: the same step may be
    claimed again at `until_ms`, and is due for the sweeper then."""
    now = table.clock.now_ms()
    upd = (_due(_fenced(lease, now), lease.job_id, until_ms).set(J.NOT_BEFORE, until_ms)
           .set(J.WAIT_REASON, "deferred").remove(J.OWNER, J.LEASE))
    hist = history_item(table, lease, "deferred", now, detail=reason)
    fenced_transaction(table, lease, [action(table, schema.job_key(lease.job_id), upd),
                                      {"Put": {"TableName": table.table_name, "Item": hist}}],
                       "deferral")


def finish_update(table: Table, lease: Lease, state: State | None, status: JobStatus, *,
                  result_json: str | None = None, error: str | None = None,
                  error_type: str | None = None, advance: bool | None = None,
                  attempt: int | None = None) -> Update:
    """The terminal write of the step: SUCCEEDED or FAILED.

    `state` None keeps the stored cursor/tokens/progress (the last checkpoint). The step
    number moves to N+1 only when step N's own result is committed (SUCCEEDED, or
    `advance=True` for `ctx.fail`): a step that failed did not commit, so `resume` re-runs
    it. `attempt` records the failed attempt's number.
    """
    now = table.clock.now_ms()
    upd = _fenced(lease, now)
    if state is not None:
        _state(upd, state)
    _ran(_terminal(upd, lease.job_type, status, now, table), lease, now)
    if advance is None:
        advance = status == JobStatus.SUCCEEDED
    if advance:
        upd.sets.append(f"{upd.n(J.STEP)} = {upd.v(lease.step + 1)}")
    if result_json is not None:
        upd.set(J.RESULT, result_json)
    if error is not None:
        upd.set(J.ERROR, error[:ERROR_CHARS]).set(J.ERROR_TYPE, error_type or "Error")
    elif status == JobStatus.SUCCEEDED:
        upd.remove(J.ERROR, J.ERROR_TYPE)  # an earlier failed attempt's, not the outcome
    if attempt is not None:
        upd.set(J.ATTEMPT, attempt)
    return upd


def finish(table: Table, lease: Lease, upd: Update, status: JobStatus) -> None:
    """Apply a `finish_update` on its own (a job with no parent to join)."""
    _apply(table, lease, upd, "completion", applied=lambda old: old.status == status)


def spawn(table: Table, lease: Lease, state: State, *, count: int, child_type: str,
          policy: str, max_concurrency: int | None, child_ids_json: str | None) -> int:
    """Step N ends WAITING on `count` children (ADDed, so one that joined first still
    counts). Returns the pending count after the write."""
    now = table.clock.now_ms()
    upd = _ran(_due(_state(_fenced(lease, now), state), lease.job_id,
                    now + table.dispatch_timeout_ms), lease, now)
    (upd.set(J.STATUS, JobStatus.WAITING.value).set(J.WAIT_REASON, "children")
     .set(J.CHILDREN_TOTAL, count).set(J.SPAWN_STEP, lease.step).set(J.CHILD_TYPE, child_type)
     .set(J.CHILD_POLICY, policy).set(J.ATTEMPT, 0)
     .remove(J.OWNER, J.LEASE, J.ERROR, J.ERROR_TYPE).add(J.PENDING, count))
    # Both describe the latest spawn only: an earlier spawn's must not stay behind.
    upd.set_opt(J.MAX_CONCURRENCY, max_concurrency).set_opt(J.CHILD_IDS, child_ids_json)
    upd.sets.append(f"{upd.n(J.STEP)} = {upd.v(lease.step + 1)}")
    attrs = _apply(table, lease, upd, "spawn commit", returns="UPDATED_NEW")
    pending = attrs.get(J.PENDING, {}).get("N")
    return 1 if pending is None else int(pending)


def release(table: Table, lease: Lease) -> None:
    """Give the lease back without advancing (the type was paused mid-flight)."""
    now = table.clock.now_ms()
    upd = _due(_fenced(lease, now), lease.job_id, now + table.dispatch_timeout_ms)
    _apply(table, lease, upd.remove(J.OWNER, J.LEASE), "release")


def release_cancelled(table: Table, lease: Lease) -> None:
    """The job was cancelled under this step: drop our lease, so a `resume` can run the
    job at once. Best effort: refused when the lease is no longer ours."""
    upd = Update().remove(J.OWNER, J.LEASE)
    upd.where(upd.eq(J.OWNER, lease.owner), upd.eq(J.STATUS, JobStatus.CANCELLED.value))
    with contextlib.suppress(Refused):
        table.update(schema.job_key(lease.job_id), upd)


# -- operators -----------------------------------------------------------------------------------


def cancel_update(table: Table, job_type: str, reason: str) -> Update:
    now = table.clock.now_ms()
    upd = (Update().set(J.STATUS, JobStatus.CANCELLED.value).set(J.ERROR, reason)
           .set(J.ERROR_TYPE, "Cancelled").set(J.UPDATED, now).set(J.STATUS_AT, now)
           .set(J.LIST_KEY, schema.list_range(job_type, JobStatus.CANCELLED.value, now))
           .set(J.EXPIRES, now // 1000 + table.retention_s)
           .remove(J.DUE, J.DUE_SHARD, J.NOT_BEFORE))
    return _job(upd).where(upd.in_(J.STATUS, [s.value for s in RUNNABLE]))


def cancel(table: Table, job_id: str, job_type: str, reason: str) -> Item:
    """CANCELLED (ALL_NEW), or `Refused` with the item (finished, or absent)."""
    return table.update(schema.job_key(job_id), cancel_update(table, job_type, reason),
                        returns="ALL_NEW")


def resume(table: Table, job: JobItem, *, max_steps: int | None,
           deadline_at: int | None) -> Item:
    """A FAILED or CANCELLED job RUNNING again at its step, due now (ALL_NEW), or
    `Refused` if its status changed since it was read."""
    now = table.clock.now_ms()
    upd = _due(Update(), job.job_id, now)
    (upd.set(J.STATUS, JobStatus.RUNNING.value).set(J.ATTEMPT, 0).set(J.UPDATED, now)
     .set(J.STATUS_AT, now)
     .set(J.LIST_KEY, schema.list_range(job.job_type, ACTIVE, job.created_at or now))
     .remove(J.ERROR, J.ERROR_TYPE, J.EXPIRES, J.NOT_BEFORE, J.RESULT))
    upd.where(upd.eq(J.STATUS, job.status.value))
    if max_steps is not None and max_steps != job.max_steps:
        upd.set(J.MAX_STEPS, max_steps)
    if deadline_at != job.deadline_at and deadline_at is not None:
        upd.set(J.DEADLINE, deadline_at)
    return table.update(schema.job_key(job.job_id), upd, returns="ALL_NEW")


def wake(table: Table, job_id: str) -> None:
    """Make a ready, unleased job due now (`Refused` if it is not such a job)."""
    now = table.clock.now_ms()
    upd = _due(Update(), job_id, now)
    upd.where(f"{upd.exists(J.DUE)} AND {upd.n(J.DUE)} > {upd.v(now)}", upd.absent(J.OWNER),
              upd.absent_or(J.NOT_BEFORE, "<=", now), upd.absent_or(J.PENDING, "<=", 0))
    table.update(schema.job_key(job_id), upd)


# -- fan-out -------------------------------------------------------------------------------------


def join_action(table: Table, parent_id: str) -> dict[str, Any]:
    """In a child's final transaction: one child fewer pending, the parent due."""
    now = table.clock.now_ms()
    upd = _due(Update().add(J.PENDING, -1), parent_id, now + table.dispatch_timeout_ms)
    return action(table, schema.job_key(parent_id), _job(upd))


def release_sibling_action(table: Table, sibling_id: str) -> dict[str, Any]:
    """In a child's final transaction: the queued sibling takes its concurrency slot."""
    now = table.clock.now_ms()
    upd = _due(Update().remove(J.NOT_BEFORE, J.WAIT_REASON), sibling_id,
               now + table.dispatch_timeout_ms)
    return action(table, schema.job_key(sibling_id), _job(upd))


def withdraw_check(table: Table, lease: Lease) -> dict[str, Any]:
    """Only the step that spawned may withdraw, while the parent is cancelled there."""
    return {"ConditionCheck": {
        "TableName": table.table_name, "Key": schema.job_key(lease.job_id),
        **condition(lambda c: f"{c.eq(J.OWNER, lease.owner)} AND {c.eq(J.STEP, lease.step)} "
                              f"AND {c.eq(J.STATUS, JobStatus.CANCELLED.value)}")}}


def withdraw_action(table: Table, lease: Lease, child_id: str) -> dict[str, Any]:
    """Delete a child of this spawn that nothing has touched (never counted, never run)."""
    return {"Delete": {
        "TableName": table.table_name, "Key": schema.job_key(child_id),
        **condition(lambda c: f"{c.eq(J.STATUS, JobStatus.PENDING.value)} AND "
                              f"{c.absent(J.OWNER)} AND {c.eq(J.PARENT_ID, lease.job_id)} "
                              f"AND {c.eq(J.PARENT_STEP, lease.step)}")}}


# -- the sweeper -----------------------------------------------------------------------------------


def sweep_take(table: Table, job_id: str, step: int, old_due: int, now: int) -> JobItem:
    """Take a due step for re-dispatch (one sweeper of several wins): due again after the
    dispatch timeout; counts the sweep and the step's re-dispatches (ALL_NEW)."""
    upd = Update().set(J.DUE, now + table.dispatch_timeout_ms).add(J.SWEEPS, 1)
    upd.add(J.REDISPATCHES, 1).where(upd.eq(J.STEP, step), upd.eq(J.DUE, old_due))
    return job_item(table.update(schema.job_key(job_id), upd, returns="ALL_NEW"))


def sweep_postpone(table: Table, job_id: str, step: int, old_due: int, new_due: int, *,
                   count: bool = True) -> None:
    """Move due_at iff nobody changed the job since it was read (`Refused` otherwise)."""
    upd = Update().set(J.DUE, new_due)
    if count:
        upd.add(J.SWEEPS, 1)
    upd.where(upd.eq(J.STEP, step), upd.eq(J.DUE, old_due))
    table.update(schema.job_key(job_id), upd)


def sweep_undue(table: Table, job_id: str, status: JobStatus) -> None:
    """Take a finished job out of the due index (`Refused` if it is no longer finished)."""
    upd = Update().remove(J.DUE, J.DUE_SHARD)
    table.update(schema.job_key(job_id), upd.where(upd.eq(J.STATUS, status.value)))


def request_token() -> str:
    """An idempotency token for a transaction resent by this process."""
    return uuid.uuid4().hex
