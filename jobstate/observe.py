"""Structured log lines and CloudWatch Embedded Metric Format (EMF) metrics.

Every protocol outcome (claimed, duplicate, takeover, committed, retried, completed,
failed, ...) is one JSON log line with job id, type, step and the invocation's request
id. It goes to the `jobstate` stdlib logger, or to the logger given to
`App(logger=...)`: a stdlib `logging.Logger`, or a Powertools `Logger` (its `extra`
keys become top-level JSON keys next to Powertools' own).

Each `App.handler` call collects counters and flushes them as **one** EMF line on
stdout when it ends — only in Lambda (`AWS_LAMBDA_FUNCTION_NAME` is set) or with
`JOBSTATE_EMF=1`. CloudWatch Logs turns the line into metrics in namespace `jobstate`
(`JOBSTATE_METRICS_NAMESPACE` overrides) with no API call. Each metric is published
twice: with the `JobType` dimension and without dimensions, so one alarm (the template's
`JobsFailed`) covers every job type.

Tokens never reach this module: callers pass ids, numbers and messages only.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from .status import StepOutcome

log = logging.getLogger("jobstate")

NAMESPACE = os.environ.get("JOBSTATE_METRICS_NAMESPACE", "jobstate")
STEP_DURATION = "StepDuration"
METRIC_NAMES = {
    StepOutcome.CLAIMED: "Steps",
    StepOutcome.TAKEOVER: "Takeovers",
    StepOutcome.DUPLICATE: "Duplicates",
    StepOutcome.IN_FLIGHT: "InFlight",
    StepOutcome.NOT_YET: "NotYet",
    StepOutcome.PAUSED: "Paused",
    StepOutcome.COMMITTED: "Commits",
    StepOutcome.WAITING: "Waits",
    StepOutcome.COMPLETED: "JobsSucceeded",
    StepOutcome.FAILED: "JobsFailed",
    StepOutcome.CANCELLED: "JobsCancelled",
    StepOutcome.RETRY_SCHEDULED: "Retries",
    StepOutcome.DEFERRED: "Deferrals",
    StepOutcome.LEASE_LOST: "LeasesLost",
    StepOutcome.STARTED: "JobsStarted",
    "dispatch_failed": "DispatchFailures",
    "effect": "Effects",
}
"""Log outcome -> EMF metric name. Outcomes not listed are logged but not counted."""

_LEVEL_METHODS = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning",
                  logging.ERROR: "error", logging.CRITICAL: "critical"}


def emf_enabled() -> bool:
    """EMF lines are printed in Lambda, or anywhere with JOBSTATE_EMF=1."""
    flag = os.environ.get("JOBSTATE_EMF", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) or flag in ("1", "true", "yes", "on")


class Metrics:
    """Collects counters for one invocation and flushes them as one EMF line."""

    def __init__(self, job_type: str | None = None, *, stream: TextIO | None = None,
                 enabled: bool | None = None, namespace: str | None = None) -> None:
        self.job_type = job_type
        self.counts: dict[str, float] = {}
        self.stream = stream
        self.enabled = emf_enabled() if enabled is None else enabled
        self.namespace = namespace or NAMESPACE

    def add(self, name: str, value: float = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

    def outcome(self, outcome: str) -> None:
        name = METRIC_NAMES.get(outcome)
        if name:
            self.add(name)

    def document(self) -> dict[str, Any] | None:
        """The EMF document for what was counted (None if nothing was)."""
        if not self.counts:
            return None
        dims: list[list[str]] = [["JobType"], []] if self.job_type else [[]]
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [{
                    "Namespace": self.namespace,
                    "Dimensions": dims,
                    "Metrics": [
                        {"Name": n, "Unit": "Milliseconds" if n == STEP_DURATION else "Count"}
                        for n in sorted(self.counts)
                    ],
                }],
            },
            **self.counts,
        }
        if self.job_type:
            doc["JobType"] = self.job_type
        return doc

    def flush(self) -> dict[str, Any] | None:
        """Print the EMF line (when enabled), reset the counters, return the document."""
        doc = self.document()
        self.counts = {}
        if doc is not None and self.enabled:
            print(json.dumps(doc, separators=(",", ":")), file=self.stream or sys.stdout,
                  flush=True)
        return doc


class Invocation:
    """What one handler call logs through and counts into."""

    def __init__(self, logger: Any = None, metrics: Metrics | None = None, *,
                 by_job_type: bool = True, **fields: Any) -> None:
        self.logger = logger
        self.metrics = metrics or Metrics()
        self.by_job_type = by_job_type  # dimension the metrics by the first job type seen
        self.fields = {k: v for k, v in fields.items() if v is not None}


_current: contextvars.ContextVar[Invocation | None] = contextvars.ContextVar(
    "jobstate_invocation", default=None
)


def current() -> Invocation | None:
    return _current.get()


@contextmanager
def invocation(context: Any = None, *, logger: Any = None, emf: bool | None = None,
               stream: TextIO | None = None, by_job_type: bool = True) -> Iterator[Invocation]:
    """Scope one handler call: log fields (request id), its logger, and its EMF line.

    `by_job_type=False` publishes the metrics without the JobType dimension (the
    sweeper handles many types in one invocation).
    """
    inv = Invocation(
        logger,
        Metrics(enabled=emf, stream=stream),
        by_job_type=by_job_type,
        request_id=getattr(context, "aws_request_id", None),
    )
    token = _current.set(inv)
    try:
        yield inv
    finally:
        _current.reset(token)
        if inv.metrics.enabled:
            inv.metrics.flush()


def count(name: str, value: float = 1) -> None:
    """Add to a metric of the running invocation (no-op outside one)."""
    inv = _current.get()
    if inv is not None:
        inv.metrics.add(name, value)


def event(outcome: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log line (and a metric, inside an invocation). Never pass tokens."""
    inv = _current.get()
    if inv is not None:
        inv.metrics.outcome(outcome)
        job_type = fields.get("job_type")
        if inv.by_job_type and inv.metrics.job_type is None and isinstance(job_type, str):
            inv.metrics.job_type = job_type
    logger = inv.logger if inv is not None and inv.logger is not None else log
    if isinstance(logger, logging.Logger | logging.LoggerAdapter) and not logger.isEnabledFor(
            level):
        return  # counted; the line is not wanted (a step logs two or three: build none)
    record: dict[str, Any] = {"jobstate": outcome, **(inv.fields if inv is not None else {})}
    record.update({k: v for k, v in fields.items() if v is not None})
    write(logger, level, record)


def write(logger: Any, level: int, record: dict[str, Any]) -> None:
    """Send a record to a stdlib logger (as a JSON message) or a structured logger."""
    if isinstance(logger, logging.Logger | logging.LoggerAdapter):
        if logger.isEnabledFor(level):
            logger.log(level, json.dumps(record, default=str, sort_keys=True),
                       extra={"jobstate": record})
        return
    # Powertools Logger (and structlog-style loggers): keys go in `extra`, which
    # Powertools merges into its own JSON line next to service, request id, cold start.
    method = getattr(logger, _LEVEL_METHODS.get(level, "info"))
    safe = json.loads(json.dumps(record, default=str))
    method(f"jobstate {record['jobstate']}", extra=safe)
