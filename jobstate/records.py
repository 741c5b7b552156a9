"""Read-side records: what `store.get`, `list` and `history` return."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import codec, historymode, readiness, redact
from .items import JobItem
from .status import JobStatus


@dataclass(frozen=True)
class Progress:
    done: float = 0
    total: float | None = None
    unit: str | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, self.done / self.total))

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "unit": self.unit}


@dataclass(frozen=True)
class JobView:
    """A job as stored. `tokens` is redacted unless you ask the store for secrets."""

    job_id: str
    job_type: str
    status: JobStatus
    step: int
    input: Any
    cursor: dict[str, Any]
    tokens: dict[str, Any]
    progress: Progress
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    attempt: int = 0
    max_attempts: int | None = None
    max_steps: int | None = None
    deadline_at: int | None = None
    lease_owner: str | None = None
    lease_expires_at: int | None = None
    not_before: int | None = None
    due_at: int | None = None
    wait_reason: str | None = None
    parent_id: str | None = None
    pending_children: int | None = None
    children_total: int | None = None
    created_at: int | None = None
    updated_at: int | None = None
    invocations: int = 0
    takeovers: int = 0
    retries: int = 0
    run_ms: int = 0
    expires_at: int | None = None
    history_mode: str = "steps"  # historymode.py
    history_on: bool = False  # history_mode == "step-items" (older name)
    child_index: int | None = None
    release_id: str | None = None
    parent_type: str | None = None
    ancestors: tuple[str, ...] = ()  # job types of its parent, grandparent, ... (root first)
    spawn_step: int | None = None
    child_type: str | None = None
    child_policy: str | None = None
    child_ids: list[str] | None = None
    parent_step: int | None = None
    min_successful: int | None = None  # the latest spawn's completion policy (completion.py)
    tolerated: int | None = None
    completion_reason: str | None = None  # decided before every child finished
    counted: str | None = None  # a child's: the outcomes its join counts ("s", "f")
    paused_by: str | None = None  # the job type whose pause holds this job (its or an ancestor's)
    # The job's recent steps, encoded (history.py); read them with `store.history(job_id)`.
    recent: str | None = field(default=None, repr=False)

    @property
    def paused(self) -> bool:
        """Held by a paused job type: its steps are refused until the type is resumed."""
        return self.paused_by is not None

    @property
    def display_status(self) -> str:
        """The status as an operator reads it: PAUSED for a held job that is not finished."""
        return "PAUSED" if self.paused and not self.status.terminal else self.status.value

    @property
    def pause_types(self) -> tuple[str, ...]:
        """Pausing any of these types pauses this job (its own, and every ancestor's)."""
        return (*self.ancestors, self.job_type)

    @property
    def finished(self) -> bool:
        return self.status.terminal

    def lease_live(self, now_ms: int) -> bool:
        return bool(self.lease_owner) and (self.lease_expires_at or 0) >= now_ms

    def to_dict(self, *, reveal_tokens: bool = False) -> dict[str, Any]:
        """A JSON-ready dict; tokens are redacted unless `reveal_tokens`."""
        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "status": self.status.value,
            "step": self.step,
            "input": self.input,
            "cursor": self.cursor,
            "tokens": self.tokens if reveal_tokens else redact.redact(self.tokens),
            "progress": self.progress.to_dict(),
            "result": self.result,
            "error": self.error,
            "error_type": self.error_type,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "max_steps": self.max_steps,
            "deadline_at": self.deadline_at,
            "lease_owner": self.lease_owner,
            "lease_expires_at": self.lease_expires_at,
            "not_before": self.not_before,
            "due_at": self.due_at,
            "wait_reason": self.wait_reason,
            "parent_id": self.parent_id,
            "pending_children": self.pending_children,
            "children_total": self.children_total,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "invocations": self.invocations,
            "takeovers": self.takeovers,
            "retries": self.retries,
            "run_ms": self.run_ms,
            "paused": self.paused,
            "paused_by": self.paused_by,
            "display_status": self.display_status,
        }

    def __repr__(self) -> str:
        # Tokens are secrets: never let a repr (logs, tracebacks, debuggers) print them.
        return (
            f"JobView(job_id={self.job_id!r}, job_type={self.job_type!r}, "
            f"status={self.status.value}, step={self.step}, cursor={self.cursor!r}, "
            f"tokens={redact.redact(self.tokens)!r}, progress={self.progress!r}, "
            f"error={self.error!r})"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class HistoryEntry:
    step: int
    event: str
    owner: str | None
    request_id: str | None
    started_at: int | None
    ended_at: int | None
    duration_ms: int | None
    attempt: int | None
    detail: str | None
    work: Any = None
    who: str | None = None  # an operator action's caller (IAM ARN, OS user or --as)

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "event": self.event,
            "owner": self.owner,
            "request_id": self.request_id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.duration_ms,
            "attempt": self.attempt,
            "detail": self.detail,
            "work": self.work,
            "who": self.who,
        }


@dataclass(frozen=True)
class Page:
    """One page of `store.list`; pass `next_token` back to continue."""

    jobs: list[JobView]
    next_token: str | None

    def __iter__(self) -> Iterator[JobView]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)


# -- derived from a job record ---------------------------------------------------------------


INLINE = object()  # job_view: the input is the item's own


def job_view(item: JobItem, tokens: dict[str, Any], input: Any = INLINE, *,
             dispatch_timeout_ms: int = 120_000) -> JobView:
    """The public view of a job item (`tokens` decoded, or redacted, by the store; `input`
    read from the job's input item when it is not inline; `due_at` when the sweeper next
    acts on it, given the dispatch timeout)."""
    prog = codec.loads(item.progress, {}) or {}
    mode = historymode.of_stored(item.history)
    return JobView(
        job_id=item.job_id, job_type=item.job_type, status=item.status, step=item.step,
        input=codec.loads(item.input) if input is INLINE else input,
        cursor=codec.loads(item.cursor, {}) or {},
        tokens=tokens,
        progress=Progress(prog.get("done", 0), prog.get("total"), prog.get("unit")),
        result=codec.loads(item.result), error=item.error, error_type=item.error_type,
        attempt=item.attempt, max_attempts=item.max_attempts, max_steps=item.max_steps,
        deadline_at=item.deadline_at, lease_owner=item.lease_owner,
        lease_expires_at=item.lease_expires_at, not_before=item.not_before,
        due_at=readiness.due_at(item, dispatch_timeout_ms), wait_reason=item.wait_reason,
        parent_id=item.parent_id,
        pending_children=item.pending, children_total=item.children_total,
        created_at=item.created_at, updated_at=item.updated_at,
        invocations=item.invocations, takeovers=item.takeovers, retries=item.retries,
        run_ms=item.run_ms, expires_at=item.expires_at, history_mode=mode,
        history_on=mode == "step-items",
        child_index=item.child_index, release_id=item.release_id,
        parent_type=item.parent_type, ancestors=ancestors_of(item),
        spawn_step=item.spawn_step, child_type=item.child_type,
        child_policy=item.child_policy, child_ids=codec.loads(item.child_ids),
        parent_step=item.parent_step, min_successful=item.min_successful,
        tolerated=item.tolerated, completion_reason=item.verdict, counted=item.counted,
        paused_by=item.paused_by, recent=item.recent,
    )


def ancestors_of(item: JobItem) -> tuple[str, ...]:
    """The job types above a job, root first (older items name only their parent's)."""
    value = codec.loads(item.ancestors, None)
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return tuple(value)
    return (item.parent_type,) if item.parent_type else ()


def child_id(parent_id: str, step: int, index: int) -> str:
    """The deterministic id of a spawn's `index`-th child (a re-run spawn makes no new)."""
    cid = f"{parent_id}.s{step}.{index}"
    if len(cid) > 200:
        cid = f"{codec.stable_id(parent_id)}.s{step}.{index}"
    return cid


def child_ids_of(job: JobView) -> list[str]:
    """The ids of the job's latest spawn's children."""
    if job.spawn_step is None or not job.children_total:
        return []
    if job.child_ids:
        return list(job.child_ids)
    return [child_id(job.job_id, job.spawn_step, i) for i in range(job.children_total)]
