"""The job record's state machine: every write to a job item is a transition here.

Each transition states its fence (the condition under which DynamoDB applies it) and its
effect on status, step, lease and due (`statemachine.TRANSITIONS`, rendered into
docs/concepts.md).
Other modules ask for a transition by name; none builds an update on a job item. A step's
writes are fenced by its lease (`owner = me AND step = N AND status = RUNNING`), so a stale
invocation never overwrites newer state; a refusal becomes `LeaseLost` / `JobCancelled`,
or is recognised as this invocation's own write resent after its answer was lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from .. import history, schema
from ..dynamo import Item, Refused, Slot, TransactionRefused, Update, condition
from ..dynamo import request_token as request_token  # re-exported: effects, callbacks
from ..errors import JobCancelled, LeaseLost
from ..history import history_item
from ..items import JobItem, job_item
from ..lease import Lease, State
from ..newjob import QUEUED_UNTIL  # noqa: F401  (fan-out reads it here)
from ..schema import J
from ..status import RUNNABLE, JobStatus
from ..table import Table
from . import claims

ERROR_CHARS = 4000


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
    return upd.set_all(state.changed(J.CURSOR, J.TOKENS, J.PROGRESS))  # the rest is stored


def _unleased(upd: Update) -> Update:
    """The lease given back: no owner, an expiry of 0 (the claim compares it to now)."""
    return upd.remove(J.OWNER).set(J.LEASE, 0)


def _ran(upd: Update, lease: Lease, now: int) -> Update:
    upd.add(J.RUN_MS, max(0, now - lease.claimed_at))
    if lease.takeover:
        upd.add(J.TAKEOVERS, 1)
    return upd


def _fresh_attempts(upd: Update, lease: Lease) -> Update:
    """The step is done: an earlier attempt's count and error are history now (its history
    item); written only when there is one, so a clean step's commit carries neither."""
    if lease.job.attempt:
        upd.set(J.ATTEMPT, 0)
    if lease.job.error is not None:
        upd.remove(J.ERROR, J.ERROR_TYPE)
    return upd


def _record(table: Table, lease: Lease, upd: Update, event: str, now: int) -> Update:
    """This step's record in the job item's recent steps (on the write that happens
    anyway); a full set moves to its history item first (history.ring)."""
    mine, append, full = history.ring(table, lease, event, now)
    if full is not None:
        table.call("put_item", Item=full)  # its key follows from its content: idempotent
    if append:
        upd.sets.append(f"{upd.n(J.RECENT)} = list_append({upd.n(J.RECENT)}, {upd.v((mine,))})")
        return upd
    return upd.set(J.RECENT, (mine,))


def _terminal(upd: Update, job_type: str, status: JobStatus, now: int, table: Table) -> Update:
    return _unleased(upd.set(J.STATUS, status.value).set(J.STATUS_AT, now)
                     .set(J.LIST_KEY, schema.list_range(job_type, status.value, now))
                     .set(J.EXPIRES, now // 1000 + table.retention_s))


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


def create(table: Table, item: Item, input: Item | None = None) -> None:
    """Put a new job item if no item has its id (`Refused` with the existing one). Its
    input item, if any, goes first, so a job never exists without its input."""
    if input is not None:
        put_input(table, input)
    table.put(item, condition(lambda c: c.absent(schema.PK)))


def put_input(table: Table, input: Item) -> None:
    """Put a job's input item over nothing or the same input, never over another job's
    (`Refused` with that one)."""
    table.put(input, condition(
        lambda c: f"{c.absent(schema.PK)} OR {c.eq(J.INPUT_HASH, input[J.INPUT_HASH]['S'])}"))


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
          waiting_children_ok: bool = False, job_type: str | None = None
          ) -> tuple[JobItem, str | None]:
    """Take step `step`: the job as the claim left it (ALL_OLD with its changes: no read) and
    who held it before (a takeover); or `Refused` with the item as it was."""
    now = table.clock.now_ms()
    upd = claims.update(waiting_children_ok, job_type is not None, lease_over).bind(
        owner=owner, lease=lease_until_ms, now=now, step=step, type=job_type)
    old = table.update(schema.job_key(job_id), upd, returns="ALL_OLD")
    return claims.claimed(old, owner, lease_until_ms, now), old.get(J.OWNER, {}).get("S")


def lease_over(upd: Update, now: int | Slot) -> str:
    """The claim's lease clause: no live lease (an expiry of 0 is no lease)."""
    return f"{upd.n(J.LEASE)} < {upd.v(now)}"


def checkpoint(table: Table, lease: Lease, state: State) -> None:
    _apply(table, lease, _state(_fenced(lease, table.clock.now_ms()), state), "checkpoint")


def commit(table: Table, lease: Lease, state: State, *, hop: int | None = None) -> int:
    """Step N ends and N+1 is ready (its event is sent next; if it is lost, the sweeper
    finds the job stale). Returns N+1."""
    now = table.clock.now_ms()
    nxt = lease.step + 1
    upd = _fresh_attempts(_ran(_unleased(_state(_fenced(lease, now), state)), lease, now),
                          lease)
    upd.sets.append(f"{upd.n(J.STEP)} = {upd.v(nxt)}")
    if hop is not None:
        upd.set(J.HOP, hop)
    _record(table, lease, upd, "committed", now)
    _apply(table, lease, upd, "commit", applied=lambda old: old.step == nxt)
    if lease.job.history_mode == "step-items":
        history.record(table, lease, "committed")
    return nxt


def sleep(table: Table, lease: Lease, state: State, *, until_ms: int, reason: str) -> int:
    """Step N ends asleep until `until_ms`: WAITING, out of the sweeper's ACTIVE bucket and
    in the `due` index (at the wake, or the job's deadline if sooner). Returns N+1."""
    now = table.clock.now_ms()
    nxt = lease.step + 1
    job = lease.job
    due = until_ms if job.deadline_at is None else min(until_ms, job.deadline_at)
    upd = _fresh_attempts(_ran(_unleased(_state(_fenced(lease, now), state)), lease, now),
                          lease)
    upd.sets.append(f"{upd.n(J.STEP)} = {upd.v(nxt)}")
    (upd.set(J.STATUS, JobStatus.WAITING.value).set(J.NOT_BEFORE, until_ms)
     .set(J.WAIT_REASON, reason).set(J.DUE, due).set(J.DUE_SHARD, schema.due_hash(job.job_id))
     .set(J.LIST_KEY, schema.list_range(job.job_type, schema.ASLEEP, job.created_at or now)))
    _record(table, lease, upd, "waited", now)
    _apply(table, lease, upd, "commit", applied=lambda old: old.step == nxt)
    if job.history_mode == "step-items":
        history.record(table, lease, "committed")
    return nxt


def retry(table: Table, lease: Lease, error: str, error_type: str, *, attempt: int,
          at_ms: int) -> None:
    """The attempt failed and another may start at `at_ms` (with its history item)."""
    now = table.clock.now_ms()
    upd = (_unleased(_fenced(lease, now)).set(J.ERROR, error[:ERROR_CHARS])
           .set(J.ERROR_TYPE, error_type).set(J.ATTEMPT, attempt).set(J.NOT_BEFORE, at_ms)
           .set(J.WAIT_REASON, "retry").add(J.RETRIES, 1))
    hist = history_item(table, lease, "retry_scheduled", now, detail=error, attempt=attempt)
    fenced_transaction(table, lease, [action(table, schema.job_key(lease.job_id), upd),
                                      {"Put": {"TableName": table.table_name, "Item": hist}}],
                       "failure record")


def defer(table: Table, lease: Lease, until_ms: int, reason: str) -> None:
    """End the step without committing it or counting an attempt: the same step may be
    claimed again at `until_ms` (the sweeper sends it then)."""
    now = table.clock.now_ms()
    upd = (_unleased(_fenced(lease, now)).set(J.NOT_BEFORE, until_ms)
           .set(J.WAIT_REASON, "deferred"))
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
    if status == JobStatus.SUCCEEDED:  # a failure gets its own history item (protocol)
        _record(table, lease, upd, "succeeded", now)
    if result_json is not None:
        upd.set(J.RESULT, result_json)
    if error is not None:
        upd.set(J.ERROR, error[:ERROR_CHARS]).set(J.ERROR_TYPE, error_type or "Error")
    elif status == JobStatus.SUCCEEDED and lease.job.error is not None:
        upd.remove(J.ERROR, J.ERROR_TYPE)  # an earlier failed attempt's, not the outcome
    if attempt is not None:
        upd.set(J.ATTEMPT, attempt)
    return upd


def finish(table: Table, lease: Lease, upd: Update, status: JobStatus) -> None:
    """Apply a `finish_update` on its own (a job with no parent to join)."""
    _apply(table, lease, upd, "completion", applied=lambda old: old.status == status)


def spawn(table: Table, lease: Lease, state: State, *, count: int, child_type: str,
          policy: str, max_concurrency: int | None, child_ids_json: str | None,
          min_successful: int | None = None, tolerated: int | None = None) -> int:
    """Step N ends WAITING on `count` children (ADDed: one that joined first still counts),
    in the ACTIVE bucket; a policy's counters start. Returns the pending count after."""
    now = table.clock.now_ms()
    upd = _fresh_attempts(_ran(_unleased(_state(_fenced(lease, now), state)), lease, now),
                          lease)
    (upd.set(J.STATUS, JobStatus.WAITING.value).set(J.WAIT_REASON, "children")
     .set(J.CHILDREN_TOTAL, count).set(J.SPAWN_STEP, lease.step).set(J.CHILD_TYPE, child_type)
     .set(J.CHILD_POLICY, policy).add(J.PENDING, count).remove(J.VERDICT))
    # All describe the latest spawn only: an earlier spawn's must not stay behind.
    upd.set_opt(J.MAX_CONCURRENCY, max_concurrency).set_opt(J.CHILD_IDS, child_ids_json)
    upd.set_opt(J.CHILDREN_OK, min_successful).set_opt(J.MIN_SUCCESSFUL, min_successful)
    upd.set_opt(J.CHILDREN_FAILED, tolerated).set_opt(J.TOLERATED, tolerated)
    upd.sets.append(f"{upd.n(J.STEP)} = {upd.v(lease.step + 1)}")
    _record(table, lease, upd, "spawned", now)
    attrs = _apply(table, lease, upd, "spawn commit", returns="UPDATED_NEW")
    pending = attrs.get(J.PENDING, {}).get("N")
    return 1 if pending is None else int(pending)


def release(table: Table, lease: Lease) -> None:
    """Give the lease back without advancing (the type was paused mid-flight): ready again
    after the dispatch timeout."""
    _apply(table, lease, _unleased(_fenced(lease, table.clock.now_ms())), "release")


def release_cancelled(table: Table, lease: Lease) -> None:
    """The job was cancelled under this step: drop our lease, so a `resume` can run the
    job at once. Best effort: refused when the lease is no longer ours."""
    upd = _unleased(Update())
    upd.where(upd.eq(J.OWNER, lease.owner), upd.eq(J.STATUS, JobStatus.CANCELLED.value))
    with contextlib.suppress(Refused):
        table.update(schema.job_key(lease.job_id), upd)


# -- operators -----------------------------------------------------------------------------------


def cancel_update(table: Table, job_type: str, reason: str) -> Update:
    now = table.clock.now_ms()
    upd = (Update().set(J.STATUS, JobStatus.CANCELLED.value).set(J.ERROR, reason)
           .set(J.ERROR_TYPE, "Cancelled").set(J.UPDATED, now).set(J.STATUS_AT, now)
           .set(J.LIST_KEY, schema.list_range(job_type, JobStatus.CANCELLED.value, now))
           .set(J.EXPIRES, now // 1000 + table.retention_s).remove(J.DUE, J.DUE_SHARD))
    return _job(upd).where(upd.in_(J.STATUS, [s.value for s in RUNNABLE]))


def cancel(table: Table, job_id: str, job_type: str, reason: str) -> Item:
    """CANCELLED (ALL_NEW), or `Refused` with the item (finished, or absent)."""
    return table.update(schema.job_key(job_id), cancel_update(table, job_type, reason),
                        returns="ALL_NEW")


def resume(table: Table, job: JobItem, *, max_steps: int | None,
           deadline_at: int | None) -> Item:
    """A FAILED or CANCELLED job RUNNING again at its step, ready for the next sweep
    (ALL_NEW), or `Refused` if its status changed since it was read."""
    now = table.clock.now_ms()
    upd = (Update().set(J.STATUS, JobStatus.RUNNING.value).set(J.ATTEMPT, 0)
           .set(J.UPDATED, 0).set(J.STATUS_AT, now).set(J.NOT_BEFORE, 0)
           .set(J.LIST_KEY, schema.list_range(job.job_type, schema.ACTIVE,
                                              job.created_at or now))
           .remove(J.ERROR, J.ERROR_TYPE, J.EXPIRES, J.RESULT, J.WAIT_REASON, J.SWEPT_AT))
    upd.where(upd.eq(J.STATUS, job.status.value))
    if max_steps is not None and max_steps != job.max_steps:
        upd.set(J.MAX_STEPS, max_steps)
    if deadline_at != job.deadline_at and deadline_at is not None:
        upd.set(J.DEADLINE, deadline_at)
    return table.update(schema.job_key(job.job_id), upd, returns="ALL_NEW")


def redrive(table: Table, job: JobItem, *, step: int, cursor: str | None,
            progress: str | None, deadline_at: int | None, held_by: str | None) -> Item:
    """A FAILED job RUNNING again at `step` (its current step, or an earlier one whose
    checkpoint history kept: `cursor`/`progress` then replace its state), ready for the
    next sweep (ALL_NEW); `Refused` if it changed since it was read. `held_by`: a paused
    type (its own or an ancestor's) holds it, as it holds a job created then: marked and
    in the PAUSED bucket, sent when that type is resumed."""
    now = table.clock.now_ms()
    upd = (Update().set(J.STATUS, JobStatus.RUNNING.value).set(J.ATTEMPT, 0)
           .set(J.UPDATED, 0).set(J.STATUS_AT, now).set(J.NOT_BEFORE, 0).set(J.LEASE, 0)
           .set(J.LIST_KEY, _bucket_key(job, schema.PAUSED if held_by else schema.ACTIVE))
           .remove(J.ERROR, J.ERROR_TYPE, J.EXPIRES, J.RESULT, J.WAIT_REASON, J.SWEPT_AT,
                   J.OWNER, J.DUE, J.DUE_SHARD, *(() if held_by else (J.PAUSED_BY,))))
    if held_by:
        upd.set(J.PAUSED_BY, held_by)
    upd.sets.append(f"{upd.n(J.STEP)} = {upd.v(step)}")
    if cursor is not None:
        upd.set(J.CURSOR, cursor)
    if progress is not None:
        upd.set(J.PROGRESS, progress)
    if deadline_at is not None and deadline_at != job.deadline_at:
        upd.set(J.DEADLINE, deadline_at)
    upd.where(upd.eq(J.STATUS, JobStatus.FAILED.value), upd.eq(J.STEP, job.step))
    return table.update(schema.job_key(job.job_id), upd, returns="ALL_NEW")


def pause_mark(table: Table, job: JobItem, job_type: str) -> None:
    """Hold an unfinished job for the paused `job_type`: its claims are refused until the
    type is resumed, and one in flight leaves the sweeper's ACTIVE bucket for PAUSED (one
    asleep stays in the `due` index: its wake moves it). `Refused` if it is finished or
    already held."""
    upd = Update().set(J.PAUSED_BY, job_type)
    if job.in_bucket(schema.ACTIVE):
        upd.set(J.LIST_KEY, _bucket_key(job, schema.PAUSED))
    upd.where(upd.in_(J.STATUS, [s.value for s in RUNNABLE]), upd.absent(J.PAUSED_BY),
              _listed_as(upd, job))
    table.update(schema.job_key(job.job_id), upd)


def unpause(table: Table, job: JobItem, job_type: str, still_held_by: str | None = None) -> None:
    """Let a job held by `job_type`'s pause go on: back in the ACTIVE bucket, ready for the
    next sweep (`Refused` if this type does not hold it). A job whose own or ancestor's type
    `still_held_by` is paused too is handed over to that pause instead, in the same write."""
    if still_held_by is not None:
        upd = Update().set(J.PAUSED_BY, still_held_by)
        table.update(schema.job_key(job.job_id),
                     upd.where(upd.eq(J.PAUSED_BY, job_type), _listed_as(upd, job)))
        return
    upd = Update().remove(J.PAUSED_BY)
    if job.in_bucket(schema.PAUSED):  # stale at once: the next sweep sends it
        upd.set(J.LIST_KEY, _bucket_key(job, schema.ACTIVE)).set(J.UPDATED, 0)
        upd.remove(J.SWEPT_AT)
    table.update(schema.job_key(job.job_id),
                 upd.where(upd.eq(J.PAUSED_BY, job_type), _listed_as(upd, job)))


def _listed_as(upd: Update, job: JobItem) -> str:
    """The job is still in the by-type bucket it was read in (a step that slept or finished
    since moved it; the caller reads it again)."""
    return upd.eq(J.LIST_KEY, job.list_key) if job.list_key else upd.absent(J.LIST_KEY)


def _bucket_key(job: JobItem, bucket: str) -> str:
    return schema.list_range(job.job_type, bucket, job.created_at or 0)


# -- fan-out -------------------------------------------------------------------------------------


def join_action(table: Table, parent_id: str, *, spawn_step: int | None = None,
                counter: str | None = None, verdict: str | None = None) -> dict[str, Any]:
    """A child's join (joins.py); `decide` (`verdict`): its `counter` reaches the limit."""
    upd = Update().set(J.UPDATED, table.clock.now_ms())
    if spawn_step is None:
        upd.add(J.PENDING, -1)
    elif verdict is not None:  # once, into the committed spawn; nothing stays pending
        upd.set(J.PENDING, 0).set(J.VERDICT, verdict).where(
            upd.eq(J.SPAWN_STEP, spawn_step), upd.absent(J.VERDICT),
            upd.eq(J.STATUS, JobStatus.WAITING.value))
    else:  # this spawn (committed or not yet), undecided
        live = f"{upd.eq(J.SPAWN_STEP, spawn_step)} AND {upd.absent(J.VERDICT)}"
        upd.add(J.PENDING, -1).where(f"{upd.n(J.STEP)} <= {upd.v(spawn_step)} OR ({live})")
    if counter is not None:
        limit = upd.v(1 if counter == J.CHILDREN_OK else 0)
        upd.add(counter, -1).where(f"{upd.n(counter)} {'<=' if verdict else '>'} {limit}")
    return action(table, schema.job_key(parent_id), _job(upd))


def release_sibling_action(table: Table, sibling_id: str) -> dict[str, Any]:
    """In a child's final transaction: the queued sibling takes its concurrency slot."""
    upd = Update().set(J.NOT_BEFORE, 0).set(J.UPDATED, table.clock.now_ms()).remove(J.WAIT_REASON)
    return action(table, schema.job_key(sibling_id), _job(upd))


def withdraw_check(table: Table, lease: Lease) -> dict[str, Any]:
    """Only the step that spawned may withdraw, while the parent is cancelled there."""
    return {"ConditionCheck": {"TableName": table.table_name, "Key": schema.job_key(lease.job_id),
            **condition(lambda c: f"{c.eq(J.OWNER, lease.owner)} AND {c.eq(J.STEP, lease.step)}"
                                  f" AND {c.eq(J.STATUS, JobStatus.CANCELLED.value)}")}}


def withdraw_action(table: Table, lease: Lease, child_id: str) -> dict[str, Any]:
    """Delete a child of this spawn that nothing has touched (never counted, never run)."""
    return {"Delete": {"TableName": table.table_name, "Key": schema.job_key(child_id),
        **condition(lambda c: f"{c.eq(J.STATUS, JobStatus.PENDING.value)} AND "
                              f"{c.absent(J.OWNER)} AND {c.eq(J.PARENT_ID, lease.job_id)} "
                              f"AND {c.eq(J.PARENT_STEP, lease.step)}")}}


# -- the sweeper -----------------------------------------------------------------------------------


def sweep_take(table: Table, job: JobItem, now: int) -> JobItem:
    """Take a job in flight for re-dispatch (one sweeper of several wins): counts the sweep
    and the step's re-dispatches (ALL_NEW). Refused if the job moved since it was read."""
    upd = Update().set(J.SWEPT_AT, now).add(J.SWEEPS, 1).add(J.REDISPATCHES, 1)
    upd.where(upd.eq(J.STEP, job.step), upd.eq(J.UPDATED, job.updated_at or 0),
              upd.absent(J.SWEPT_AT) if job.swept_at is None
              else upd.eq(J.SWEPT_AT, job.swept_at))
    return job_item(table.update(schema.job_key(job.job_id), upd, returns="ALL_NEW"))


def sweep_wake(table: Table, job: JobItem, now: int) -> JobItem:
    """A sleeping job's wake (or deadline) is here: back in the ACTIVE bucket (PAUSED if a
    paused type holds it), out of the `due` index, swept now (ALL_NEW). Refused if the job
    moved since it was read."""
    held = job.paused_by is not None  # not sent: its resume makes it ready at once
    upd = Update().set(J.LIST_KEY, _bucket_key(job, schema.PAUSED if held else schema.ACTIVE))
    upd.remove(J.DUE, J.DUE_SHARD)
    if not held:
        upd.set(J.SWEPT_AT, now).add(J.SWEEPS, 1).add(J.REDISPATCHES, 1)
    upd.where(upd.eq(J.STEP, job.step), upd.eq(J.DUE, job.due_at or 0))
    return job_item(table.update(schema.job_key(job.job_id), upd, returns="ALL_NEW"))
