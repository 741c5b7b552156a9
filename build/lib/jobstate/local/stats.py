"""What a local run did, counted per job type and in total."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any

STEP_OUTCOMES = frozenset({"committed", "completed", "waiting", "failed", "cancelled"})
NOOP_OUTCOMES = frozenset({"duplicate", "in_flight", "not_yet", "finished", "paused"})


@dataclass
class Stats:
    """Counters of one job type (or of everything)."""

    invocations: int = 0
    steps: int = 0
    takeovers: int = 0
    noops: int = 0
    duplicates_delivered: int = 0
    crashes_injected: int = 0
    kills_at_timeout: int = 0
    lost_continuations: int = 0
    throttled_invokes: int = 0
    throttled_dynamodb: int = 0
    function_errors: int = 0
    retries: int = 0
    failed_events: int = 0
    dropped_recursion: int = 0
    dropped_age: int = 0
    swept: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, other: Stats) -> None:
        for f in fields(self):
            if f.name == "outcomes":
                for k, v in other.outcomes.items():
                    self.outcomes[k] = self.outcomes.get(k, 0) + v
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class RuntimeStats:
    """Thread-safe counters: `total`, `by_type[job_type]`, and runtime-wide numbers."""

    def __init__(self) -> None:
        self.total = Stats()
        self.by_type: dict[str, Stats] = {}
        self.sweeps = 0
        self.cold_starts = 0
        self.start_retries = 0  # start requests sent again after their invocation died
        self.wall_s = 0.0
        self._lock = threading.Lock()

    def bump(self, name: str, job_type: str | None, n: int = 1) -> None:
        with self._lock:
            for s in self._targets(job_type):
                setattr(s, name, getattr(s, name) + n)

    def bump_runtime(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def outcome(self, outcome: str, job_type: str | None) -> None:
        with self._lock:
            for s in self._targets(job_type):
                s.outcomes[outcome] = s.outcomes.get(outcome, 0) + 1
                if outcome in STEP_OUTCOMES:
                    s.steps += 1
                elif outcome in NOOP_OUTCOMES:
                    s.noops += 1
                elif outcome == "takeover":
                    s.takeovers += 1

    def _targets(self, job_type: str | None) -> list[Stats]:
        out = [self.total]
        if job_type:
            out.append(self.by_type.setdefault(job_type, Stats()))
        return out

    def for_types(self, job_types: list[str] | tuple[str, ...] | set[str]) -> Stats:
        """The sum over some job types (e.g. a parent type and its children's)."""
        out = Stats()
        with self._lock:
            for jt in job_types:
                if jt in self.by_type:
                    out.add(self.by_type[jt])
        return out

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"total": self.total.to_dict(),
                    "by_type": {k: v.to_dict() for k, v in sorted(self.by_type.items())},
                    "sweeps": self.sweeps, "cold_starts": self.cold_starts,
                    "start_retries": self.start_retries, "wall_s": round(self.wall_s, 3)}
