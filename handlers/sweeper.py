"""The sweeper (scheduled by EventBridge, every minute in the template).

Re-dispatches every job that needs attention — a lease that expired with its container,
a continuation that was never delivered, a sleep or poll backoff that is over, a retry
whose backoff ended — by Querying the sparse `due` index (the sleepers) and the ACTIVE
bucket of the `by-type` index (the jobs in flight), never a Scan. Each due job is
sent to the worker function of its type: `JOBSTATE_FUNCTIONS` maps job type -> function
name (JSON), `JOBSTATE_DEFAULT_FUNCTION` catches types missing from the map. The sweeper
never falls back to invoking itself.

Draining: one run sweeps pages of `JOBSTATE_SWEEP_LIMIT` (default 500) due jobs and keeps
following `next_token` while at least `JOBSTATE_SWEEP_RESERVE_MS` (default 10 s) of the
invocation is left. Whatever is left when time runs out is logged, not handed on: the
sweep saves where it stopped in the table (`sweep(resume=True)`), so the next scheduled
run starts there, and no invocation chain of the sweeper itself is needed (no
self-invoke permission, no recursion to guard).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from typing import Any

import jobstate
from jobstate import observe

DEFAULT_LIMIT = 500
DEFAULT_RESERVE_MS = 10_000


class RoutedContinuation:
    """Dispatches a job's step to the function of its type (`routes`, else `default`)."""

    def __init__(self, routes: dict[str, str], default: str | None = None, *,
                 client: Any = None) -> None:
        self.routes = dict(routes)
        self.default = default or None
        self._client = client
        self._by_name: dict[str, jobstate.LambdaContinuation] = {}

    @classmethod
    def from_env(cls, client: Any = None) -> RoutedContinuation:
        raw = os.environ.get("JOBSTATE_FUNCTIONS") or "{}"
        try:
            routes = json.loads(raw)
        except ValueError:
            raise jobstate.InvalidInput(
                f"JOBSTATE_FUNCTIONS must be a JSON object of job type -> function name, "
                f"got {raw[:80]!r}") from None
        if not isinstance(routes, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in routes.items()):
            raise jobstate.InvalidInput("JOBSTATE_FUNCTIONS must map job types to function "
                                        "names (strings).")
        return cls(routes, os.environ.get("JOBSTATE_DEFAULT_FUNCTION"), client=client)

    def target(self, job_type: str | None) -> str | None:
        return self.routes.get(job_type or "") or self.default

    def dispatch(self, event: dict[str, Any], *, context: Any = None) -> None:
        job_type = (event.get("jobstate") or {}).get("job_type")
        name = self.target(job_type)
        if name is None:
            raise jobstate.DispatchFailed(
                f"no function for job type {job_type!r}: add it to JOBSTATE_FUNCTIONS or set "
                "JOBSTATE_DEFAULT_FUNCTION; the job stays due.")
        cont = self._by_name.get(name)
        if cont is None:
            cont = self._by_name[name] = jobstate.LambdaContinuation(
                function_name=name, client=self._client)
        cont.dispatch(event, context=None)


def run(store: jobstate.JobStore, continuation: jobstate.Continuation, context: Any = None, *,
        limit: int | None = None, reserve_ms: int | None = None) -> dict[str, Any]:
    """Sweep page after page while the invocation has time; returns the summed counts."""
    limit = limit or int(os.environ.get("JOBSTATE_SWEEP_LIMIT", DEFAULT_LIMIT))
    reserve = reserve_ms if reserve_ms is not None else int(
        os.environ.get("JOBSTATE_SWEEP_RESERVE_MS", DEFAULT_RESERVE_MS))
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    totals: dict[str, Any] = {}
    token: str | None = None
    pages = 0
    while True:
        report = jobstate.sweep(store, continuation, limit=limit, next_token=token,
                                resume=True)
        pages += 1
        for k, v in report.to_dict().items():
            if isinstance(v, int):
                totals[k] = totals.get(k, 0) + v
        if report.first_dispatch_error and not totals.get("first_dispatch_error"):
            totals["first_dispatch_error"] = report.first_dispatch_error
        token = report.next_token
        if token is None:
            break
        if callable(remaining) and remaining() < reserve:
            observe.event("sweep_incomplete", logging.WARNING, detail=(
                f"swept {pages} pages of {limit}; the rest of the backlog is left to the "
                "next scheduled run"))
            break
    totals["pages"] = pages
    totals["complete"] = token is None
    return totals


@functools.cache
def _store() -> jobstate.JobStore:
    return jobstate.JobStore()


@functools.cache
def _continuation() -> RoutedContinuation:
    return RoutedContinuation.from_env()


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """EventBridge scheduled event in, counts out (also logged as one JSON line)."""
    with observe.invocation(context, by_job_type=False):
        counts = run(_store(), _continuation(), context)
        observe.count("SweepDispatched", counts["dispatched"])
        # Due jobs it could not send (a type with no function, a denied invoke) - alarmed.
        observe.count("SweepDispatchErrors", counts["dispatch_errors"])
        # Jobs the sweeper failed (past their deadline) count for the JobsFailed alarm.
        observe.count("JobsFailed", counts["failed_guards"])
        level = logging.WARNING if counts["dispatch_errors"] else logging.INFO
        observe.event("swept", level, **{k: v for k, v in counts.items() if v})
    return counts
