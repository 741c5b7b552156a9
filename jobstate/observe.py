"""Structured log lines and CloudWatch Embedded Metric Format (EMF) metrics.

Log records go to the `jobstate` logger as one JSON object per line (job id, type, step,
request id, outcome), so they work with plain logging and with Powertools Logger (which
merges `extra` keys). Metrics are printed as EMF JSON to stdout, which CloudWatch Logs
turns into metrics in namespace `jobstate` without any API call.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

log = logging.getLogger("jobstate")

NAMESPACE = os.environ.get("JOBSTATE_METRICS_NAMESPACE", "jobstate")
METRIC_NAMES = {
    "claimed": "Steps",
    "takeover": "Takeovers",
    "duplicate": "Duplicates",
    "committed": "Commits",
    "completed": "JobsSucceeded",
    "failed": "JobsFailed",
    "retry_scheduled": "Retries",
    "effect": "Effects",
}


def event(outcome: str, level: int = logging.INFO, **fields: Any) -> None:
    """One structured log line. Never pass tokens here."""
    record = {"jobstate": outcome, **{k: v for k, v in fields.items() if v is not None}}
    log.log(level, json.dumps(record, default=str, sort_keys=True), extra={"jobstate": record})


class Metrics:
    """Collects counters for one invocation and flushes them as one EMF line."""

    def __init__(self, job_type: str | None = None, *, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.job_type = job_type
        self.counts: dict[str, float] = {}
        self.stream = stream
        if enabled is None:
            enabled = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME")) or bool(
                os.environ.get("JOBSTATE_EMF")
            )
        self.enabled = enabled

    def add(self, name: str, value: float = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

    def outcome(self, outcome: str) -> None:
        name = METRIC_NAMES.get(outcome)
        if name:
            self.add(name)

    def flush(self) -> dict[str, Any] | None:
        if not self.counts:
            return None
        doc: dict[str, Any] = {
            "_aws": {
                "Timestamp": int(time.time() * 1000),
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["JobType"]] if self.job_type else [[]],
                    "Metrics": [
                        {"Name": n, "Unit": "Milliseconds" if n == "StepDuration" else "Count"}
                        for n in sorted(self.counts)
                    ],
                }],
            },
            **self.counts,
        }
        if self.job_type:
            doc["JobType"] = self.job_type
        self.counts = {}
        if self.enabled:
            print(json.dumps(doc), file=self.stream or sys.stdout, flush=True)
        return doc
