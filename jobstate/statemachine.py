"""The job record's state machine as a table: each named transition, its fence and its effect.

`jobstate.transitions` implements each row; docs/concepts.md shows `table_markdown()`, and
tests/test_transitions.py drives every row against a table to prove the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    Transition("create", "no live item with this id", "PENDING", "0", "none", "none"),
    Transition("claim", "step = N, status PENDING/RUNNING/WAITING, no live lease, wait "
               "over, no pending children, not paused, its type", "RUNNING", "=", "taken",
               "="),
    Transition("checkpoint", STEP_FENCE, "=", "=", "=", "="),
    Transition("commit", STEP_FENCE, "RUNNING", "+1", "released", "="),
    Transition("sleep", STEP_FENCE, "WAITING", "+1", "released",
               "the wake (or the deadline, if sooner)"),
    Transition("retry", STEP_FENCE, "=", "=", "released", "="),
    Transition("defer", STEP_FENCE, "=", "=", "released", "="),
    Transition("spawn", STEP_FENCE, "WAITING", "+1", "released", "="),
    Transition("finish", STEP_FENCE, "SUCCEEDED/FAILED", "+1 if its result is committed",
               "released", "="),
    Transition("release", STEP_FENCE, "=", "=", "released", "="),
    Transition("release-cancelled", "lease_owner = me, status = CANCELLED", "=", "=",
               "released", "="),
    Transition("cancel", "status PENDING/RUNNING/WAITING", "CANCELLED", "=", "=", "none"),
    Transition("resume", "status as read (FAILED/CANCELLED)", "RUNNING", "=", "=", "none"),
    Transition("redrive", "status FAILED, step as read", "RUNNING",
               "= (or back to a checkpoint kept in history)", "=", "none"),
    Transition("pause-mark", "status PENDING/RUNNING/WAITING, not paused", "=", "=", "=",
               "="),
    Transition("unpause", "paused by this type, listed as read", "=", "=", "=", "="),
    Transition("join", "the parent exists; its step <= the child's spawn step, or that spawn "
               "is committed and undecided; a policy's counter above its limit", "=", "=",
               "=", "="),
    Transition("decide", "a join, the parent WAITING on the child's committed spawn, no "
               "verdict yet, the policy's counter at its limit (sets the verdict, nothing "
               "pending)", "=", "=", "=", "="),
    Transition("release-sibling", "the sibling exists", "=", "=", "=", "="),
    Transition("withdraw", "PENDING, no lease, this parent's spawn at step N; the parent "
               "CANCELLED at step N under the spawner's lease", "deleted", "-", "-", "-"),
    Transition("sweep-take", "step = N, last write and last sweep as read", "=", "=", "=",
               "="),
    Transition("sweep-wake", "step = N, due as read", "=", "=", "=", "none"),
    Transition("purge", "expired", "deleted", "-", "-", "-"),
    Transition("callback-wake", "WAITING on this callback (wait_reason callback:<name>)",
               "=", "=", "=", "none"),
    Transition("callback-extend", "WAITING on this callback, its wake sooner, the deadline "
               "not sooner", "=", "=", "=", "the callback's new heartbeat deadline"),
)
"""The `due` column is the job's entry in the sparse `due` index: only a job asleep until
a time has one. Every other job in flight is in the ACTIVE bucket of the `by-type` index,
which the sweeper reads whole each sweep (see sweeper.py): no step moves an index key."""


def table_markdown() -> str:
    """The transitions as the table docs/concepts.md shows."""
    rows = ["| transition | fence (applied only if) | status | step | lease | due |",
            "|---|---|---|---|---|---|"]
    rows += [f"| `{t.name}` | {t.fence} | {t.status} | {t.step} | {t.lease} | {t.due} |"
             for t in TRANSITIONS]
    return "\n".join(rows)
