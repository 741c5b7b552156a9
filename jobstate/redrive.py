"""Redrive: run a FAILED job again from its last committed step, or from an earlier
checkpoint its history kept (issue 20).

What can be redriven: a FAILED job (a CANCELLED one is `resume`d), from its current step
(the state it failed with), or from step N when history kept the checkpoint step N starts
from: steps RING, 2 RING, ... (history.RING = 16; `available` lists them). Effects
already DONE are still skipped (their records are kept by key), so a redrive from an
earlier step re-runs the step code but not the effects it already did.
What cannot: a step before the job's latest spawn (its children exist: the same ids would
be spawned again), a step at or past `max_steps` (raise it with `resume --max-steps`), a
step whose checkpoint was not kept, or a job that is not FAILED. Tokens are not rewound:
a redriven job keeps the tokens it has now.
"""

from __future__ import annotations

from collections.abc import Callable

from . import codec, fxrecords, history, schema, timeline, transitions
from .dynamo import Refused
from .errors import InvalidInput, JobNotFound
from .records import JobView, ancestors_of
from .status import JobStatus
from .table import Table


def available(table: Table, job_id: str) -> dict[int, tuple[str, str]]:
    """The steps a FAILED job can be redriven from, with the checkpoints (cursor JSON,
    progress JSON) they start from (None-free: the current step's is the job's own)."""
    return timeline.checkpoints(table.partition(job_id, schema.STEP_PREFIX))


def redrive(table: Table, job_id: str, *, is_paused: Callable[[str], bool],
            from_step: int | None = None, by: str | None = None, reason: str = "") -> JobView:
    """Run a FAILED job again from its last committed step or from `from_step`; due at the
    next sweep, or held until its paused type (`is_paused`: read afresh) is resumed.
    Recorded in its history as `redriven` (with `by` and `reason`)."""
    codec.validate_job_id(job_id)
    if from_step is not None and (isinstance(from_step, bool) or not isinstance(from_step, int)
                                  or from_step < 0):
        raise InvalidInput(f"from_step must be a step number (an int >= 0), got {from_step!r}")
    job = table.get_job_item(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r} to redrive.", job_id=job_id)
    if job.status != JobStatus.FAILED:
        what = ("`jobstate resume` runs a cancelled job again" if job.status
                == JobStatus.CANCELLED else "only a FAILED job can be redriven")
        raise InvalidInput(f"job {job_id!r} is {job.status.value}: {what}.")
    step = job.step if from_step is None else from_step
    cursor = progress = None
    if step > job.step:
        raise InvalidInput(f"job {job_id!r} is at step {job.step}; it cannot be redriven from "
                           f"a later step ({step}).")
    if step < job.step:
        if job.spawn_step is not None and step <= job.spawn_step:
            raise InvalidInput(
                f"job {job_id!r} spawned children at step {job.spawn_step}; redriving it from "
                f"step {step} would spawn them again. Redrive from step "
                f"{job.spawn_step + 1} or later.")
        kept = available(table, job_id)
        if step not in kept:
            steps = ", ".join(str(s) for s in sorted({*kept, job.step}))
            raise InvalidInput(
                f"history kept no checkpoint for step {step} of job {job_id!r}; it can be "
                f"redriven from step(s) {steps}.")
        cursor, progress = kept[step]
    if job.max_steps is not None and step >= job.max_steps:
        raise InvalidInput(
            f"job {job_id!r} would stop at once at step {step}, its max_steps guard "
            f"({job.max_steps}): `jobstate resume {job_id} --max-steps N` gives it more.")
    now = table.clock.now_ms()
    deadline = job.deadline_at
    if deadline is not None and deadline <= now:  # a fresh window as long as its first
        deadline = now + max(deadline - (job.created_at or now), 60_000)
    held_by = next((t for t in (*ancestors_of(job), job.job_type) if is_paused(t)), None)
    if deadline != job.deadline_at:  # its effect records must outlive the new deadline
        fxrecords.extend_expiry(table, job_id, deadline)
    try:
        raw = transitions.redrive(table, job, step=step, cursor=cursor, progress=progress,
                                  deadline_at=deadline, held_by=held_by)
    except Refused:
        raise InvalidInput(f"job {job_id!r} changed while it was being redriven (another "
                           "operator?); look at it again with `jobstate status`.") from None
    view = table.view(raw, secrets=False)
    detail = f"from step {step}" + (f" (it had failed at step {job.step})"
                                    if step != job.step else "")
    if held_by is not None:
        detail += f"; held while job type {held_by!r} is paused"
    history.note(table, view, "redriven", who=by,
                 detail=detail + (f": {reason}" if reason else ""))
    return view
