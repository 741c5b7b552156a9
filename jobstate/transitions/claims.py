"""The claim's write, kept apart so the package's main module stays small: its update, built
once per shape (every step sends one), and the job as it leaves the item.

`transitions.claim` sends it; the lease clause comes from there (`transitions.lease_over`,
which the mutation tests replace), so it is part of the cache key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..dynamo import Item, Slot, Update, av
from ..items import JobItem, job_item
from ..schema import J
from ..status import JobStatus

_CLEARED = (J.WAIT_REASON, J.REDISPATCHES, J.SWEPT_AT)  # what a claim removes


@functools.cache
def update(waiting_children_ok: bool, typed: bool, lease: Callable[..., str]) -> Update:
    """The claim's update with its values open (`Update.bind`): owner, lease, now, step
    and (`typed`) type."""
    now = Slot("now")
    upd = (Update().set(J.STATUS, JobStatus.RUNNING.value).set(J.OWNER, Slot("owner"))
           .set(J.LEASE, Slot("lease")).set(J.UPDATED, now).remove(*_CLEARED)
           .add(J.INVOCATIONS, 1))
    # No existence test: `step = N` fails on a missing item. `waiting_children_ok` is the
    # sweeper failing a job past its deadline: its wait and children do not hold it.
    upd.where(upd.eq(J.STEP, Slot("step")),
              upd.in_(J.STATUS, [s.value for s in (JobStatus.PENDING, JobStatus.RUNNING,
                                                    JobStatus.WAITING)]),
              lease(upd, now), upd.absent(J.PAUSED_BY))
    if not waiting_children_ok:
        upd.where(f"{upd.n(J.NOT_BEFORE)} <= {upd.v(now)}", upd.absent_or(J.PENDING, "<=", 0))
    if typed:
        upd.where(upd.eq(J.TYPE, Slot("type")))
    return upd


def claimed(old: Item, owner: str, lease_until_ms: int, now: int) -> JobItem:
    """The job as a claim that met `old` (the item as it was) left it: the update's changes
    applied to the item, decoded once."""
    item = {k: v for k, v in old.items() if k not in _CLEARED}
    runs = int(old.get(J.INVOCATIONS, {}).get("N", "0")) + 1
    item.update({J.STATUS: av(JobStatus.RUNNING.value), J.OWNER: av(owner), J.UPDATED: av(now),
                 J.LEASE: av(lease_until_ms), J.INVOCATIONS: av(runs)})
    return job_item(item)
