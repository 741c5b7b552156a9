"""The job-item transitions of callbacks (issue 18): a waiting job woken by its answer, and
its wake pushed back by a heartbeat.

These are rows of the job record's state machine (`statemachine.TRANSITIONS`) like those
of the package's main module, kept apart so each stays small; nothing outside this
package builds a write to a job item (tests/test_architecture.py checks). Neither is fenced by
a lease: a callback's answer comes from outside any step, so each is fenced by what the
waiting step left on the job instead: WAITING, `wait_reason = callback:<name>`.
"""

from __future__ import annotations

from .. import schema
from ..dynamo import Refused, Update
from ..items import CallbackItem, JobItem, job_item
from ..schema import J
from ..status import JobStatus
from ..table import Table

REASON_PREFIX = "callback:"


def wait_reason(name: str) -> str:
    """The `wait_reason` of a job whose step waits on callback `name`."""
    return REASON_PREFIX + name


def _waiting_on(upd: Update, name: str) -> Update:
    return upd.where(upd.exists(schema.PK), upd.eq(J.STATUS, JobStatus.WAITING.value),
                     upd.eq(J.WAIT_REASON, wait_reason(name)))


def callback_wake(table: Table, cb: CallbackItem, *, dispatching: bool) -> JobItem | None:
    """The job asleep on callback `cb` is ready now: out of the `due` index, back in the
    ACTIVE bucket (PAUSED if a paused type holds it: its resume sends it), its wait over.

    `dispatching`: the caller sends the step next (its last write is now, so the sweeper
    sends it again only if that event is lost); otherwise it is stale at once and the next
    sweep sends it. Returns the job as woken (ALL_NEW), or None when it does not wait on
    this callback (not yet, or any more: the step reads the answer when it gets there).
    """
    now = table.clock.now_ms()
    for bucket in (schema.ACTIVE, schema.PAUSED):
        upd = (Update().set(J.NOT_BEFORE, 0).set(J.UPDATED, now if dispatching else 0)
               .set(J.LIST_KEY, schema.list_range(cb.job_type, bucket, cb.job_created))
               .remove(J.DUE, J.DUE_SHARD, J.WAIT_REASON, J.SWEPT_AT))
        _waiting_on(upd, cb.name)
        upd.where(upd.absent(J.PAUSED_BY) if bucket == schema.ACTIVE
                  else upd.exists(J.PAUSED_BY))
        try:
            return job_item(table.update(schema.job_key(cb.job_id), upd, returns="ALL_NEW"))
        except Refused as refusal:
            old = job_item(refusal.old) if refusal.old is not None else None
            if old is None or old.paused_by is None or bucket == schema.PAUSED:
                return None
    return None


def callback_extend(table: Table, cb: CallbackItem, due_ms: int) -> bool:
    """A heartbeat moved callback `cb`'s deadline to `due_ms`: the job asleep on it wakes
    then, not at the old deadline (only later, and not past the job's own deadline: the
    sweeper must still fail it on time). False when the job does not wait on it."""
    upd = Update().set(J.DUE, due_ms).set(J.NOT_BEFORE, due_ms)
    _waiting_on(upd, cb.name).where(upd.exists(J.DUE), f"{upd.n(J.DUE)} < {upd.v(due_ms)}",
                                   upd.absent_or(J.DEADLINE, ">=", due_ms))
    try:
        table.update(schema.job_key(cb.job_id), upd)
    except Refused:
        return False
    return True
