"""A finishing child joins its parent, in the same transaction as its own terminal write.

The join puts the child's link `CHILD#<id>` under the parent if absent (a child that
finishes twice never counts twice), counts one pending child fewer on the parent and
makes it due; with a concurrency cap it also releases the next queued sibling. After the
transaction the child reads the parent's pending count and, at 0, dispatches the parent's
next step (two last children may both do so: the parent's claim de-duplicates).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import completion, schema, transitions
from .dynamo import TransactionRefused, av, condition
from .errors import JobConflict
from .events import parent_routing, routing, step_event
from .items import JobItem, job_item
from .records import JobView
from .schema import CH, J
from .status import JobStatus
from .table import Table

LINK_ERROR_CHARS = 2000
ROUNDS = 8  # each round drops a refused part of the join, relinks, or re-reads


Parent = tuple[dict[str, Any] | None, str | None]  # the parent's update, the verdict it sets


@dataclass
class Join:
    """How a finishing child joins its parent: its link, the parent's update, the sibling
    it releases. The parent's update is chosen again from the parent its refusal returns."""

    table: Table
    job: JobView
    status: str
    link: dict[str, Any]
    release: dict[str, Any] | None

    @property
    def counter(self) -> str | None:
        """The parent's counter this child's outcome counts down (its policy's), if any."""
        counted = self.job.counted or ""
        if self.status == JobStatus.SUCCEEDED.value:
            return J.CHILDREN_OK if "s" in counted else None
        return J.CHILDREN_FAILED if "f" in counted else None

    def first(self) -> Parent:
        """The common case, tried first: counted, and not the join that decides."""
        return transitions.join_action(self.table, self.job.parent_id or "",
                                       spawn_step=self.job.parent_step,
                                       counter=self.counter), None

    def parent_for(self, old: JobItem) -> Parent:
        """The parent's update for the parent `old` (None: only the link is written)."""
        ps, counter, table, pid = (self.job.parent_step, self.counter, self.table,
                                   self.job.parent_id or "")
        if ps is None:
            return transitions.join_action(table, pid), None
        if not (old.step <= ps or (old.spawn_step == ps and old.verdict is None)):
            return None, None  # another spawn's parent now, or this one decided: link only
        left = old.children_ok if counter == J.CHILDREN_OK else old.children_failed
        if counter is None or old.spawn_step != ps or old.step <= ps or left is None:
            return transitions.join_action(table, pid, spawn_step=ps), None  # not counted
        if left > (1 if counter == J.CHILDREN_OK else 0):
            return transitions.join_action(table, pid, spawn_step=ps, counter=counter), None
        if old.status != JobStatus.WAITING:  # cancelled or failed meanwhile: nothing to decide
            return transitions.join_action(table, pid, spawn_step=ps), None
        reached = (completion.MIN_SUCCESSFUL_REACHED if counter == J.CHILDREN_OK
                   else completion.FAILURE_TOLERANCE_EXCEEDED)
        return transitions.join_action(table, pid, spawn_step=ps, counter=counter,
                                       verdict=reached), reached


def join_actions(table: Table, job: JobView, status: str, result_json: str | None,
                 error: str | None) -> Join | None:
    """How a finishing child joins its parent (None: it has no parent)."""
    if not job.parent_id:
        return None
    now = table.clock.now_ms()
    link: dict[str, Any] = {
        **schema.child_key(job.parent_id, job.job_id),
        CH.CHILD_ID: av(job.job_id), CH.STATUS: av(status), CH.JOINED_AT: av(now),
        CH.EXPIRES: av(now // 1000 + table.retention_s * 2),
    }
    if job.child_index is not None:
        link[CH.INDEX] = av(job.child_index)
    if result_json is not None:
        link[CH.RESULT] = av(result_json)
    if error is not None:
        link[CH.ERROR] = av(error[:LINK_ERROR_CHARS])
    # A link exists already when this child joined before (resumed, finished again): the
    # join is refused, so it never counts twice. A link older than this child's item is
    # stale (left by an expired job that had this id): it is overwritten.
    stale_before = (job.created_at or 0) - table.retention_s * 500

    def fresh(c: Any) -> str:
        absent = c.absent(schema.SK)
        if job.created_at is None:
            return str(absent)
        return f"{absent} OR {c.n(CH.JOINED_AT)} < {c.v(stale_before)}"

    put = {"Put": {"TableName": table.table_name, "Item": link, **condition(fresh)}}
    release = (transitions.release_sibling_action(table, job.release_id)
               if job.release_id else None)
    return Join(table, job, status, put, release)


def relink_actions(join: Join) -> list[dict[str, Any]]:
    """For a child that joined before: rewrite its link with the new outcome, and count
    nothing (the parent's pending count and a released sibling were settled then)."""
    put = join.link["Put"]
    return [{"Put": {"TableName": put["TableName"], "Item": put["Item"],
                     **condition(lambda c: c.exists(schema.SK))}}]


@dataclass(frozen=True)
class Joined:
    """What a child's final transaction did to its family: `counted` (the parent's pending
    count moved: it may be ready now), `verdict` (this join decided the parent's completion
    policy: it released no sibling)."""

    counted: bool = False
    verdict: str | None = None


def transact_join(run: Callable[[list[dict[str, Any]]], Any], first: dict[str, Any],
                  join: Join | None) -> Joined:
    """Run the child's own terminal write `first` and its join as one transaction.

    When only part of the join is refused, the transaction is redone without that part
    (or with the parent's update its refusal calls for), so the child's own write never
    waits on its parent's bookkeeping: the link exists (the child joined before: resumed
    and finished again) → the link is rewritten, nothing counted; the parent is gone
    (expired and deleted) → no join; the parent's spawn is another or decided → the link
    only; the policy's count reaches its limit → the join decides (`decide`: the verdict,
    nothing pending, no sibling released); the released sibling is gone → release nothing.
    Returns what the join did (`Joined`). A refusal of `first` is the caller's.
    """
    if join is None:
        run([first])
        return Joined()
    (parent, verdict), release, relinked = join.first(), join.release, False
    for _ in range(ROUNDS):
        if relinked:
            actions = relink_actions(join)
        elif parent is None:
            actions = [join.link]
        else:  # a decided spawn releases no queued sibling: it never starts
            actions = [join.link, parent, *([release] if release and not verdict else [])]
        try:
            run([first, *actions])
            if relinked or parent is None:
                return Joined()
            return Joined(counted=True, verdict=verdict)
        except TransactionRefused as refusal:
            refused = set(refusal.parts)
            if 0 in refused:
                raise
            if 1 in refused and not relinked:
                relinked = True
            elif 2 in refused and parent is not None and not relinked:
                old = refusal.parts[2]
                if old is None:  # the parent is gone: no join
                    run([first])
                    return Joined()
                parent, verdict = join.parent_for(job_item(old))
            elif 3 in refused and release is not None:
                release = None
            else:
                raise
    raise JobConflict(f"job {join.job.job_id!r} could not join parent {join.job.parent_id!r} "
                      f"in {ROUNDS} rounds (its siblings kept changing it); the job is not "
                      "finished: the sweeper runs the step again.", job_id=join.job.job_id)


def after_join(table: Table, job: JobView, joined: Joined | None = None) -> list[dict[str, Any]]:
    """Events to send after a child's terminal commit: the released child, the parent.
    With `joined`, only what the join changed (a join into a decided spawn, or a relink,
    counted nothing: it sends nothing and reads nothing)."""
    if not job.parent_id or (joined is not None and not joined.counted):
        return []
    events = []
    if job.release_id and (joined is None or joined.verdict is None):  # same family
        events.append(step_event(job.release_id, 0, job.job_type, **routing(job)))
    parent = table.call(
        "get_item", Key=schema.job_key(job.parent_id), ConsistentRead=True,
        ProjectionExpression="#p, #s, #t, #u, #j",
        ExpressionAttributeNames={"#p": J.PENDING, "#s": J.STEP, "#t": J.TYPE,
                                  "#u": J.STATUS, "#j": J.JOB_ID},
    ).get("Item")
    if parent:
        item = job_item(parent)
        if (item.pending or 0) <= 0 and item.status == JobStatus.WAITING:
            events.append(step_event(job.parent_id, item.step, item.job_type,
                                     **parent_routing(job)))
    return events
