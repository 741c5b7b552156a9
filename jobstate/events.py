"""The events that ask for a step: their shape, and the routing fields children carry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import codec
from .errors import InvalidEvent, InvalidInput
from .records import JobView

EVENT_KEY = "jobstate"
MAX_HOP = 1_000_000_000
MAX_DEPTH = 16  # a job tree is at most this deep (spawn refuses more)


def step_event(job_id: str, step: int, job_type: str, **extra: Any) -> dict[str, Any]:
    """The event that asks for step `step` of a job."""
    body: dict[str, Any] = {"job_id": job_id, "step": step, "job_type": job_type, "v": 1}
    body.update(extra)
    return {EVENT_KEY: body}


def routing(job: JobView) -> dict[str, Any]:
    """Event fields that let a step's type (and its ancestors' types) pause it unread."""
    if not job.ancestors:
        return {}
    return {"parent_type": job.ancestors[-1], "ancestors": list(job.ancestors)}


def parent_routing(job: JobView) -> dict[str, Any]:
    """The routing fields of an event for this job's parent (its own ancestors)."""
    up = job.ancestors[:-1]
    return {"parent_type": up[-1], "ancestors": list(up)} if up else {}


def job_step_event(job: JobView, step: int, **extra: Any) -> dict[str, Any]:
    """The event for `step` of `job`, routed by its ancestors."""
    return step_event(job.job_id, step, job.job_type, **routing(job), **extra)


def parse_event(event: Any) -> dict[str, Any]:
    """The body of a jobstate event, checked; InvalidEvent (nothing written) otherwise."""
    expected = ("expected {'jobstate': {'job_id': str, 'step': int}} (a step) or "
                "{'jobstate': {'start': {'job_type': str, 'input': ...}}} (a start request)")
    if not isinstance(event, Mapping) or not isinstance(event.get(EVENT_KEY), Mapping):
        # key=repr: a caller's mapping may mix key types (None, int, str).
        keys = sorted(event, key=repr)[:5] if isinstance(event, Mapping) else (
            type(event).__name__)
        raise InvalidEvent(f"not a jobstate event (got {keys}); {expected}.")
    body = dict(event[EVENT_KEY])
    hop = body.get("hop")
    if hop is not None and (isinstance(hop, bool) or not isinstance(hop, int)
                            or not 1 <= hop <= MAX_HOP):
        raise InvalidEvent(f"jobstate event 'hop' must be an int from 1 to {MAX_HOP}, got "
                           f"{hop!r:.80}.")
    if "start" in body:
        return body
    job_id, step = body.get("job_id"), body.get("step")
    if not isinstance(job_id, str) or not job_id:
        raise InvalidEvent(f"jobstate event has no valid 'job_id' (got {job_id!r:.80}); "
                           f"{expected}.")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidEvent(f"jobstate event has no valid 'step' (got {step!r:.80}); it must "
                           f"be an int >= 0; {expected}.")
    try:
        codec.validate_job_id(job_id)
    except InvalidInput as exc:
        raise InvalidEvent(f"jobstate event: {exc}") from None
    for name in ("job_type", "parent_type"):
        value = body.get(name)
        if value is not None and not _job_type_ok(value):
            raise InvalidEvent(f"jobstate event {name!r} must be a job type (1-64 letters, "
                               f"digits and ._- ), got {value!r:.80}.")
    anc = body.get("ancestors")
    if anc is not None and (not isinstance(anc, list) or len(anc) > MAX_DEPTH
                            or not all(_job_type_ok(t) for t in anc)):
        raise InvalidEvent(f"jobstate event 'ancestors' must be a list of at most "
                           f"{MAX_DEPTH} job types, got {anc!r:.80}.")
    return body


def _job_type_ok(value: object) -> bool:
    try:
        codec.validate_job_type(value)
    except InvalidInput:
        return False
    return True
