"""Completion policies of a fan-out: when a parent's outcome is decided before all its
children finish (issue 19).

Pure rules, no I/O. A spawn turns its policy into two numbers stored on the parent,
`min_successful` and `tolerated` (failures it tolerates); each child's join counts a
success or a failure there, and the outcome is decided as soon as successes reach
`min_successful` or failures exceed `tolerated`. An unreachable `min_successful` is a
tolerance too: failures beyond `children - min_successful` decide the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidInput

MIN_SUCCESSFUL_REACHED = "MIN_SUCCESSFUL_REACHED"
FAILURE_TOLERANCE_EXCEEDED = "FAILURE_TOLERANCE_EXCEEDED"
ALL_COMPLETED = "ALL_COMPLETED"
REASONS = (MIN_SUCCESSFUL_REACHED, FAILURE_TOLERANCE_EXCEEDED, ALL_COMPLETED)


@dataclass(frozen=True)
class CompletionPolicy:
    """When a spawn's outcome is decided: `min_successful` children succeeded, or more than
    `tolerated_failure_count` (or `tolerated_failure_percentage` % of the children) failed.
    None leaves that bound out."""

    min_successful: int | None = None
    tolerated_failure_count: int | None = None
    tolerated_failure_percentage: float | None = None

    def __post_init__(self) -> None:
        for name in ("min_successful", "tolerated_failure_count"):
            value = getattr(self, name)
            low = 1 if name == "min_successful" else 0
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < low):
                raise InvalidInput(f"CompletionPolicy {name} must be an int >= {low} or None, "
                                   f"got {value!r}")
        pct = self.tolerated_failure_percentage
        if pct is not None and (not isinstance(pct, int | float) or isinstance(pct, bool)
                                or not math.isfinite(pct) or not 0 <= pct <= 100):
            raise InvalidInput("CompletionPolicy tolerated_failure_percentage must be a number "
                               f"from 0 to 100 or None, got {pct!r}")


@dataclass(frozen=True)
class Thresholds:
    """What a spawn of `children` stores on its parent (None: not counted)."""

    min_successful: int | None
    tolerated: int | None


def thresholds(policy: CompletionPolicy | None, children: int,
               on_child_failure: str) -> Thresholds:
    """The bounds of a spawn. With no failure bound, 'fail' tolerates none (fail-fast) and
    'continue' waits for every child, unless `min_successful` bounds the failures."""
    if policy is not None and not isinstance(policy, CompletionPolicy):
        raise InvalidInput("completion must be a jobstate.CompletionPolicy(...), got "
                           f"{type(policy).__name__}")
    policy = policy or CompletionPolicy()
    least = policy.min_successful
    if least is not None and least > children:
        raise InvalidInput(f"CompletionPolicy min_successful={least} but only {children} "
                           "children are spawned; lower it or spawn more.")
    bounds = [b for b in (
        policy.tolerated_failure_count,
        None if policy.tolerated_failure_percentage is None
        else math.floor(policy.tolerated_failure_percentage * children / 100 + 1e-9),
        None if least is None else children - least) if b is not None]
    if bounds:
        return Thresholds(least, min(bounds))
    return Thresholds(least, 0 if on_child_failure == "fail" else None)


def verdict(succeeded: int, failed: int, thresholds: Thresholds) -> str | None:
    """The decided outcome, given the counts so far (None: not decided yet)."""
    if thresholds.tolerated is not None and failed > thresholds.tolerated:
        return FAILURE_TOLERANCE_EXCEEDED
    if thresholds.min_successful is not None and succeeded >= thresholds.min_successful:
        return MIN_SUCCESSFUL_REACHED
    return None


def final_reason(succeeded: int, failed: int, thresholds: Thresholds) -> str:
    """The verdict once every child has finished (nothing decided it earlier)."""
    return verdict(succeeded, failed, thresholds) or ALL_COMPLETED
