"""What the App knows of a job type (`JobSpec`) and what one delivery did (`StepReport`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .context import StepContext
from .historymode import HistoryMode
from .retry import RetryPolicy
from .serdes import Serdes
from .store import Limits

StepFn = Callable[[StepContext], Any]  # a job type's step function


@dataclass(frozen=True)
class JobSpec:
    """A registered job type: its step function, guards and retry policy."""

    name: str
    fn: StepFn
    limits: Limits
    retry: RetryPolicy
    history: HistoryMode | bool = "steps"  # historymode.py
    serdes: Serdes | None = None  # its effect and job results' (serdes.py); None: JSON


@dataclass
class StepReport:
    """What one delivery of a step event did; also the handler's return value."""

    job_id: str
    step: int
    outcome: str
    detail: str = ""
    next_step: int | None = None
    status: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"job_id": self.job_id, "step": self.step, "outcome": str(self.outcome),
               "detail": self.detail, "next_step": self.next_step, "status": self.status}
        out.update(self.extra)
        return out
