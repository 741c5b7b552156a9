"""StepContext: what a step function sees, and the values it may return."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tenacity
from tenacity.wait import wait_base

from . import callbacks, codec, fanout, redact, serdes, transitions
from .callbacks import Callback
from .completion import CompletionPolicy
from .effects import Effects
from .errors import InvalidInput, JobStateError
from .fanout import ChildView
from .hooks import EffectHook
from .lease import Lease, State
from .records import JobView, Progress
from .retry import tenacity_delay_ms
from .schema import INLINE_INPUT_BYTES
from .serdes import SerdesLike
from .signals import Suspend
from .status import Semantics
from .store import JobStore, Limits
from .timebudget import TimeBudget

log = logging.getLogger("jobstate")

POLL_STATE = "__jobstate_poll__"


@dataclass(frozen=True)
class Completed:
    """Returned by `ctx.complete(result)`: the job succeeded."""

    result: Any


@dataclass(frozen=True)
class Failed:
    """Returned by `ctx.fail(reason)`: the job failed for good (no retry)."""

    reason: str


@dataclass(frozen=True)
class Wait:
    """The step ended waiting: the next step may not start before `until_ms`."""

    until_ms: int
    reason: str


class PollTimedOut(JobStateError):
    """`ctx.poll` gave up: the condition did not hold within its timeout."""


class StepContext:
    """The running step of a job. Mutate `cursor` and `tokens`; they are committed."""

    def __init__(
        self,
        store: JobStore,
        lease: Lease,
        budget: TimeBudget,
        *,
        lambda_context: Any = None,
        logger: logging.LoggerAdapter[logging.Logger] | None = None,
        specs: Mapping[str, Any] | None = None,
        reconcile_guard_ms: int = 0,
        effect_hooks: Sequence[EffectHook] = (),
    ) -> None:
        job = lease.job
        self._store = store
        self._lease = lease
        self._budget = budget
        self._specs: Mapping[str, Any] = specs or {}
        self._serdes = serdes.for_job(self._specs, job.job_type)
        self._reconcile_guard_ms = reconcile_guard_ms
        self._effect_hooks = effect_hooks
        self.lambda_context = lambda_context
        self.job_id: str = job.job_id
        self.job_type: str = job.job_type
        self.step: int = lease.step
        self.attempt: int = job.attempt + 1
        self.input: Any = job.input
        self._input_json: str | None = None
        self.cursor: dict[str, Any] = dict(job.cursor)
        self.tokens: dict[str, Any] = dict(job.tokens)
        self._progress = job.progress
        self._stored = lease.stored  # the state the item holds (checkpoints move it)
        self.log = logger or logging.LoggerAdapter(log, {"job_id": job.job_id})

    @functools.cached_property
    def _effects(self) -> Effects:
        """The step's effect operations (made on first use: most steps have none)."""
        return Effects(self._store, self._lease, self._budget.remaining_ms,
                       self._reconcile_guard_ms, self._effect_hooks, self._serdes)

    def __repr__(self) -> str:
        return (
            f"StepContext(job_id={self.job_id!r}, job_type={self.job_type!r}, "
            f"step={self.step}, cursor={self.cursor!r}, tokens={redact.redact(self.tokens)!r})"
        )

    @property
    def job(self) -> JobView:
        """The job record as claimed (tokens included; do not log it)."""
        return self._lease.job

    @property
    def request_id(self) -> str:
        return self._lease.request_id

    # -- time ----------------------------------------------------------------------------

    def remaining_ms(self) -> int:
        """Milliseconds until this invocation is killed."""
        return self._budget.remaining_ms()

    def has_time(self, estimate_ms: float | None = None) -> bool:
        """True while another batch (learned from this invocation's batches) fits.

        Call it once per batch: `while ctx.has_time(): do_batch()`.
        """
        return self._budget.has_time(estimate_ms)

    # -- state ---------------------------------------------------------------------------

    def progress(self, done: float, total: float | None = None, unit: str | None = None) -> None:
        """Report progress (stored with the next checkpoint or commit)."""
        for name, v in (("done", done), ("total", total)):
            if v is not None and (not isinstance(v, int | float) or isinstance(v, bool)
                                  or not math.isfinite(v)):
                raise InvalidInput(f"progress {name} must be a finite number, got {v!r}")
        self._progress = Progress(
            done,
            total if total is not None else self._progress.total,
            unit if unit is not None else self._progress.unit,
        )

    @property
    def current_progress(self) -> Progress:
        return self._progress

    @property
    def input_json(self) -> str:
        """The job's input as its job item holds it (JSON), for the item's size budget: ""
        when it is big enough to live in its own item."""
        if self._input_json is None:
            text = codec.dumps(self.input, "input")
            self._input_json = "" if codec.size_of(text) > INLINE_INPUT_BYTES else text
        return self._input_json

    def encoded_state(self) -> State:
        state = State.encode(self._store, self.cursor, self.tokens, self._progress.to_dict(),
                             job_id=self._lease.job_id, stored=self._stored)
        state.check(input_json=self.input_json)
        return state

    def checkpoint(self) -> None:
        """Persist cursor, tokens and progress now (fenced by this step's lease)."""
        state = self.encoded_state()
        self._stored = None  # not known until the write is answered
        transitions.checkpoint(self._store, self._lease, state)
        self._stored = State(state.cursor, state.tokens, state.progress)

    # -- endings -------------------------------------------------------------------------

    def complete(self, result: Any = None) -> Completed:
        """`return ctx.complete(result)` finishes the job successfully."""
        serdes.encode(self._serdes, result, f"result of job {self.job_id!r}")
        return Completed(result)

    def fail(self, reason: str) -> Failed:
        """`return ctx.fail("why")` fails the job for good, with no retry."""
        if not isinstance(reason, str) or not reason:
            raise InvalidInput("ctx.fail needs a non-empty reason string.")
        return Failed(reason)

    def sleep(self, seconds: float) -> None:
        """Wait `seconds`: in-process if it fits this invocation, else the step ends here
        and the next one starts after the wait (resumed by the sweeper).
        """
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not (
            math.isfinite(seconds) and seconds >= 0
        ):
            raise InvalidInput(f"sleep needs a finite number of seconds >= 0, got {seconds!r}")
        self._wait(self._store.clock.now_ms() + int(seconds * 1000), "sleep")

    def wait_until(self, epoch_s: float) -> None:
        """Wait until the given Unix time (seconds); see `sleep`."""
        if not isinstance(epoch_s, int | float) or isinstance(epoch_s, bool) or not math.isfinite(
            epoch_s
        ):
            raise InvalidInput(f"wait_until needs a Unix time in seconds, got {epoch_s!r}")
        self._wait(int(epoch_s * 1000), "wait_until")

    def _wait(self, until_ms: int, reason: str) -> None:
        delay = until_ms - self._store.clock.now_ms()
        if delay <= 0:
            return
        if self._budget.fits(delay):
            self._store.clock.sleep(delay / 1000)
            return
        raise Suspend(Wait(until_ms, reason))

    def poll(
        self,
        check: Callable[[], Any],
        *,
        until: Callable[[Any], bool],
        name: str = "poll",
        interval_s: float = 10.0,
        max_interval_s: float = 300.0,
        wait: wait_base | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Call `check()` until `until(result)` holds, backing off across invocations.

        Returns the final result. While not done, waits in-process when the next poll fits
        this invocation, otherwise ends the step and resumes after the backoff (the 40-minute
        ETL). The attempt count lives in the cursor under `__jobstate_poll__`.
        """
        strategy = wait or tenacity.wait_exponential(multiplier=interval_s, min=interval_s,
                                                     max=max_interval_s)
        polls = self.cursor.setdefault(POLL_STATE, {})
        state = polls.setdefault(name, {"n": 0, "since": self._store.clock.now_ms()})
        while True:
            value = check()
            state["n"] += 1
            if until(value):
                polls.pop(name, None)
                if not polls:
                    self.cursor.pop(POLL_STATE, None)
                return value
            now = self._store.clock.now_ms()
            if timeout_s is not None and now - state["since"] > timeout_s * 1000:
                raise PollTimedOut(
                    f"poll {name!r} of job {self.job_id!r} did not finish within {timeout_s}s "
                    f"({state['n']} checks; the last value is not shown: it may hold a "
                    "token)",
                    job_id=self.job_id,
                )
            delay_ms = tenacity_delay_ms(strategy, state["n"])
            if not self._budget.fits(delay_ms):
                raise Suspend(Wait(now + delay_ms, f"poll:{name}"))
            self._store.clock.sleep(delay_ms / 1000)

    # -- effects -------------------------------------------------------------------------

    def once(
        self,
        key: str,
        fn: Callable[..., Any],
        *args: Any,
        semantics: Semantics = Semantics.AT_MOST_ONCE,
        reconcile: Callable[..., Any] | None = None,
        serdes: SerdesLike | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the side effect `fn(*args, **kwargs)` once for this job under `key`; its
        result is stored with `serdes` (else the job type's, else JSON: serdes.py)."""
        return self._effects.once(key, (fn, args, kwargs), semantics, reconcile,
                                  _resolve(serdes))

    def once_batch(
        self,
        calls: Mapping[str, Sequence[Any]],
        fn: Callable[..., Any],
        *,
        semantics: Semantics = Semantics.AT_MOST_ONCE,
        reconcile: Callable[..., Any] | None = None,
        serdes: SerdesLike | None = None,
    ) -> dict[str, Any]:
        """`fn(*args)` once per `key -> args`, in a few round trips per 100 keys."""
        return self._effects.once_batch(calls, fn, semantics, reconcile, _resolve(serdes))

    # -- callbacks (issue 18; docs/callbacks.md) -------------------------------------------

    def callback(self, name: str, *, timeout_s: float,
                 heartbeat_s: float | None = None) -> Callback:
        """The job's callback `name` (created on first use; a re-run step gets the same
        one): hand `cb.token` to the sender, then `cb.result()` returns its answer or ends
        the step waiting for it. Creating one checkpoints the step's state."""
        return callbacks.open_callback(self._store, self._lease, self.tokens, name,
                                       timeout_s=timeout_s, heartbeat_s=heartbeat_s,
                                       checkpoint=self.checkpoint, serdes=self._serdes)

    def wait_for_callback(self, name: str, submit: Callable[[str], Any], *, timeout_s: float,
                          heartbeat_s: float | None = None,
                          semantics: Semantics = Semantics.AT_MOST_ONCE,
                          reconcile: Callable[[str], Any] | None = None) -> Any:
        """Create callback `name`, call `submit(token)` once (an effect, `ctx.once` key
        `callback:<name>`, with `semantics` and `reconcile(token)`), and return the
        answer's result (see `callback`)."""
        cb = self.callback(name, timeout_s=timeout_s, heartbeat_s=heartbeat_s)
        if cb.state == callbacks.OPEN:
            self.once(f"callback:{name}", submit, cb.token, semantics=semantics,
                      reconcile=reconcile)
        return cb.result()

    # -- fan-out ---------------------------------------------------------------------------

    def spawn(
        self,
        job_type: str,
        inputs: Sequence[Any],
        *,
        max_concurrency: int | None = None,
        child_ids: Sequence[str] | None = None,
        on_child_failure: str = "fail",
        completion: CompletionPolicy | None = None,
    ) -> None:
        """Start one child job per input and wait for them (the step ends here).

        Children get deterministic ids (parent id + index), so a re-run spawn creates
        nothing new. When all have finished, or `completion` decided the outcome (the
        rest are then cancelled), the next step runs; see `children()` and
        `completion_reason`.
        """
        spec = self._specs.get(job_type)  # the child type's guards and history mode
        fanout.spawn(self._store, self._lease, job_type, list(inputs),
                     limits=spec.limits if spec else Limits(),
                     history=spec.history if spec else "steps",
                     max_concurrency=max_concurrency, child_ids=child_ids,
                     on_child_failure=on_child_failure, completion_policy=completion)

    def spawn_chains(self, job_type: str, *, total: int, chains: int,
                     extra: Mapping[str, Any] | None = None,
                     max_concurrency: int | None = None,
                     on_child_failure: str = "fail",
                     completion: CompletionPolicy | None = None) -> None:
        """Split [0, total) into `chains` contiguous ranges, one child job each."""
        inputs = [{"start": a, "end": b, **dict(extra or {})}
                  for a, b in fanout.chain_ranges(total, chains)]
        self.spawn(job_type, inputs, max_concurrency=max_concurrency,
                   on_child_failure=on_child_failure, completion=completion)

    def children(self) -> list[ChildView]:
        """The children of this job that have finished, with status and result (read with
        the child type's serdes)."""
        child_serdes = serdes.for_job(self._specs, self._lease.job.child_type)
        return fanout.children(self._store, self.job_id, loads=lambda text: serdes.decode(
            child_serdes, text, f"result of a child of job {self.job_id!r}"))

    @property
    def completion_reason(self) -> str | None:
        """The latest spawn's verdict: MIN_SUCCESSFUL_REACHED, FAILURE_TOLERANCE_EXCEEDED
        or ALL_COMPLETED (None: this job never spawned)."""
        return fanout.completion_reason(self._store, self._lease.job)

    # -- internals for the runtime -------------------------------------------------------

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def store(self) -> JobStore:
        return self._store


def _resolve(spec: SerdesLike | None) -> serdes.Serdes | None:
    return serdes.resolve(spec, "ctx.once serdes")
