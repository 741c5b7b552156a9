"""A finishing child joins its parent, in the same transaction as its own terminal write.

The join puts the child's link `CHILD#<id>` under the parent if absent (a child that
finishes twice never counts twice), counts one pending child fewer on the parent and
makes it due; with a concurrency cap it also releases the next queued sibling. After the
transaction the child reads the parent's pending count and, at 0, dispatches the parent's
next step (two last children may both do so: the parent's claim de-duplicates).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import schema, transitions
from .dynamo import TransactionRefused, av, condition
from .events import parent_routing, routing, step_event
from .items import job_item
from .records import JobView
from .schema import CH, J
from .status import JobStatus
from .table import Table

LINK_ERROR_CHARS = 2000
ROUNDS = 4  # each round drops a refused part of the join (or relinks once)


def join_actions(table: Table, job: JobView, status: str, result_json: str | None,
                 error: str | None) -> list[dict[str, Any]] | None:
    """The actions that join a finishing child to its parent (None: no parent):
    [link put, parent update, (released sibling update)]."""
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

    actions: list[dict[str, Any]] = [
        {"Put": {"TableName": table.table_name, "Item": link, **condition(fresh)}},
        transitions.join_action(table, job.parent_id),
    ]
    if job.release_id:
        actions.append(transitions.release_sibling_action(table, job.release_id))
    return actions


def relink_actions(joins: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For a child that joined before: rewrite its link with the new outcome, and count
    nothing (the parent's pending count and a released sibling were settled then)."""
    put = joins[0]["Put"]
    return [{"Put": {"TableName": put["TableName"], "Item": put["Item"],
                     **condition(lambda c: c.exists(schema.SK))}}]


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
    for _ in range(ROUNDS):
        try:
            run([first, *actions])
            return
        except TransactionRefused as refusal:
            refused = set(refusal.parts)
            if not actions or 0 in refused:
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


def after_join(table: Table, job: JobView) -> list[dict[str, Any]]:
    """Events to send after a child's terminal commit: the released child, the parent."""
    if not job.parent_id:
        return []
    events = []
    if job.release_id:  # a sibling: same parent, same ancestors
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
