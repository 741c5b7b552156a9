"""Enumerations and sentinels shared across the package."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """Lifecycle of a job. Terminal states never change again."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL

    @property
    def runnable(self) -> bool:
        return self in RUNNABLE


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
RUNNABLE = frozenset({JobStatus.PENDING, JobStatus.RUNNING, JobStatus.WAITING})


class Semantics(enum.StrEnum):
    """What `ctx.once` promises when an earlier attempt died mid-effect."""

    AT_MOST_ONCE = "AT_MOST_ONCE"
    AT_LEAST_ONCE = "AT_LEAST_ONCE"


class ClaimOutcome(enum.StrEnum):
    """Why a delivery of step N did (or did not) get to run."""

    CLAIMED = "claimed"
    TAKEOVER = "takeover"  # claimed after a previous owner's lease expired
    DUPLICATE = "duplicate"  # the job is already past step N
    IN_FLIGHT = "in_flight"  # another live invocation holds step N
    NOT_YET = "not_yet"  # step N is waiting (sleep, retry backoff, children)
    FINISHED = "finished"  # the job is terminal (succeeded, failed, cancelled)
    PAUSED = "paused"  # the job type is paused; left due for the sweeper


class StepOutcome(enum.StrEnum):
    """What one delivery of a step event did (`StepReport.outcome`, log lines, metrics)."""

    STARTED = "started"  # a start request created the job and dispatched step 0
    CLAIMED = "claimed"
    TAKEOVER = "takeover"
    DUPLICATE = "duplicate"
    IN_FLIGHT = "in_flight"
    NOT_YET = "not_yet"
    FINISHED = "finished"
    PAUSED = "paused"
    COMMITTED = "committed"  # step N+1 is due and was dispatched
    WAITING = "waiting"  # a sleep, a poll or children: step N+1 after the wait
    COMPLETED = "completed"  # the job SUCCEEDED
    FAILED = "failed"  # the job FAILED
    RETRY_SCHEDULED = "retry_scheduled"  # the attempt failed; another is due later
    DEFERRED = "deferred"  # the step ends uncommitted, no attempt counted; due later
    CANCELLED = "cancelled"  # the job was cancelled under this step
    LEASE_LOST = "lease_lost"  # another invocation took the step over


class _NotDone:
    _instance: _NotDone | None = None

    def __new__(cls) -> _NotDone:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "jobstate.NOT_DONE"

    def __bool__(self) -> bool:
        return False


NOT_DONE = _NotDone()
"""Returned by a `reconcile` callable when the effect did not happen (so it may run)."""
