"""jobstate: durable, fenced job state for recursive AWS Lambda functions, on DynamoDB.

The names in `__all__` are the supported API; every other module is internal.
"""

from __future__ import annotations

from .app import App
from .callbacks import Callback, CallbackAnswer
from .clock import Clock, ManualClock, SystemClock
from .codec import Cipher, stable_id
from .completion import CompletionPolicy
from .context import Completed, Failed, PollTimedOut, StepContext, Wait
from .continuation import Continuation, InMemoryContinuation, LambdaContinuation
from .errors import (
    CallbackClosed,
    CallbackFailed,
    CallbackNotFound,
    CallbackTimedOut,
    ConfigurationError,
    DispatchFailed,
    EffectNotDone,
    EffectOutcomeUnknown,
    EffectResultNotStored,
    InvalidEvent,
    InvalidInput,
    InvalidStepResult,
    JobCancelled,
    JobConflict,
    JobFinished,
    JobNotFound,
    JobStateError,
    LeaseLost,
    MissingExtra,
    StateNotSerializable,
    StateTooLarge,
    StoreUnavailable,
    TableNotFound,
    TokensUnreadable,
    TokensUnwritable,
    UnknownJobType,
)
from .events import step_event
from .fanout import ChildView, cancel_tree, chain_ranges, rollup
from .fxrecords import list_effects, mark_effect
from .records import HistoryEntry, JobView, Page, Progress
from .retry import RetryPolicy
from .serdes import Serdes
from .spec import JobSpec, StepReport
from .status import NOT_DONE, ClaimOutcome, JobStatus, Semantics, StepOutcome
from .store import JobStore, Limits
from .sweeper import SweepReport, sweep

__version__ = "0.1.0"

__all__ = [
    "NOT_DONE",
    "App",
    "Callback",
    "CallbackAnswer",
    "CallbackClosed",
    "CallbackFailed",
    "CallbackNotFound",
    "CallbackTimedOut",
    "ChildView",
    "Cipher",
    "ClaimOutcome",
    "Clock",
    "Completed",
    "CompletionPolicy",
    "ConfigurationError",
    "Continuation",
    "DispatchFailed",
    "EffectNotDone",
    "EffectOutcomeUnknown",
    "EffectResultNotStored",
    "Failed",
    "HistoryEntry",
    "InMemoryContinuation",
    "InvalidEvent",
    "InvalidInput",
    "InvalidStepResult",
    "JobCancelled",
    "JobConflict",
    "JobFinished",
    "JobNotFound",
    "JobSpec",
    "JobStateError",
    "JobStatus",
    "JobStore",
    "JobView",
    "LambdaContinuation",
    "LeaseLost",
    "Limits",
    "ManualClock",
    "MissingExtra",
    "Page",
    "PollTimedOut",
    "Progress",
    "RetryPolicy",
    "Semantics",
    "Serdes",
    "StateNotSerializable",
    "StateTooLarge",
    "StepContext",
    "StepOutcome",
    "StepReport",
    "StoreUnavailable",
    "SweepReport",
    "SystemClock",
    "TableNotFound",
    "TokensUnreadable",
    "TokensUnwritable",
    "UnknownJobType",
    "Wait",
    "cancel_tree",
    "chain_ranges",
    "list_effects",
    "mark_effect",
    "rollup",
    "stable_id",
    "step_event",
    "sweep",
]
