"""App: job registration, the Lambda handler, and the step runner."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import codec, faults, observe, protocol, redact
from .clock import Clock
from .context import Completed, Failed, StepContext, Wait
from .continuation import Continuation, InMemoryContinuation, LambdaContinuation
from .errors import (
    DispatchFailed,
    EffectOutcomeUnknown,
    InvalidEvent,
    InvalidInput,
    InvalidStepResult,
    JobCancelled,
    JobNotFound,
    JobStateError,
    LeaseLost,
    StateNotSerializable,
    StateTooLarge,
    UnknownJobType,
)
from .protocol import Lease
from .retry import RetryPolicy
from .signals import Deferred, Suspend
from .status import ClaimOutcome, JobStatus
from .store import JobStore, Limits, routing
from .timebudget import TimeBudget

StepFn = Callable[[StepContext], Any]
GUARD = "RunawayGuard"  # error_type of a job failed by max_steps or its deadline
EVENT_KEY = "jobstate"
DEFAULT_TIMEOUT_MS = 900_000
MAX_HOP = 1_000_000_000
# Which invocation of its chain (Lambda's recursion count) the running step is: events it
# dispatches are the next one. 0 outside a handler (a start from a script is hop 1).
_HOP: contextvars.ContextVar[int] = contextvars.ContextVar("jobstate_hop", default=0)


@dataclass(frozen=True)
class JobSpec:
    """A registered job type: its step function, guards and retry policy."""

    name: str
    fn: StepFn
    limits: Limits
    retry: RetryPolicy
    history: bool = False


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
        out = {"job_id": self.job_id, "step": self.step, "outcome": self.outcome,
               "detail": self.detail, "next_step": self.next_step, "status": self.status}
        out.update(self.extra)
        return out


def step_event(job_id: str, step: int, job_type: str, **extra: Any) -> dict[str, Any]:
    """The event that asks for step `step` of a job."""
    body: dict[str, Any] = {"job_id": job_id, "step": step, "job_type": job_type, "v": 1}
    body.update(extra)
    return {EVENT_KEY: body}


class App:
    """Registers job types and runs their steps from Lambda events."""

    def __init__(
        self,
        store: JobStore | None = None,
        continuation: Continuation | None = None,
        *,
        clock: Clock | None = None,
        lease_grace_s: float = 5.0,
        default_timeout_ms: int = DEFAULT_TIMEOUT_MS,
        reserve_ms: int = 1_500,
        reconcile_guard_s: float = 30.0,
        logger: Any = None,
        emf: bool | None = None,
    ) -> None:
        self.store = store or JobStore(clock=clock)
        if clock is not None:
            self.store.clock = clock
        self.continuation: Continuation = continuation or LambdaContinuation()
        self.lease_grace_ms = int(lease_grace_s * 1000)
        self.default_timeout_ms = default_timeout_ms
        self.reserve_ms = reserve_ms
        # An at-most-once effect left STARTED by an earlier owner is reconciled only this
        # long after that owner's lease ran out (by this host's clock), so a host whose
        # clock runs ahead cannot run it while its first call is still in flight: it
        # runs twice only if clocks differ by more than lease_grace_s + this.
        if (isinstance(reconcile_guard_s, bool) or not isinstance(reconcile_guard_s, int | float)
                or not 0 <= reconcile_guard_s <= 3600):
            raise InvalidInput(f"reconcile_guard_s must be a number of seconds from 0 to 3600, "
                               f"got {reconcile_guard_s!r}")
        self.reconcile_guard_ms = int(reconcile_guard_s * 1000)
        self.specs: dict[str, JobSpec] = {}
        self.hooks: list[Callable[[str, dict[str, Any]], None]] = []
        # Log lines go to `logger` (stdlib or Powertools Logger; default the `jobstate`
        # logger); EMF metrics print when `emf` is true (None: only inside Lambda).
        self.logger = logger
        self.emf = emf

    @property
    def clock(self) -> Clock:
        return self.store.clock

    # -- registration ------------------------------------------------------------------

    def job(
        self,
        name: str,
        *,
        max_steps: int = 10_000,
        max_attempts: int | None = None,
        deadline: float | None = 7 * 24 * 3600.0,
        retry: RetryPolicy | None = None,
        history: bool = False,
    ) -> Callable[[StepFn], StepFn]:
        """Register a step function: `@app.job("name", max_steps=..., deadline=seconds)`."""
        codec.validate_job_type(name)
        if name in self.specs:
            raise InvalidInput(f"job type {name!r} is registered twice.")
        policy = retry or RetryPolicy()
        if max_attempts is not None:
            policy = replace(policy, max_attempts=max_attempts)
        limits = Limits(max_steps=max_steps, max_attempts=policy.max_attempts,
                        deadline_s=deadline)

        def register(fn: StepFn) -> StepFn:
            if not callable(fn):
                raise InvalidInput(f"@app.job({name!r}) must decorate a function.")
            self.specs[name] = JobSpec(name, fn, limits, policy, history)
            return fn

        return register

    def spec(self, job_type: str) -> JobSpec:
        try:
            return self.specs[job_type]
        except KeyError:
            known = ", ".join(sorted(self.specs)) or "none"
            raise UnknownJobType(
                f"no job type {job_type!r} is registered in this app (known: {known}); "
                "register it with @app.job(...) in the module the handler imports."
            ) from None

    # -- starting ------------------------------------------------------------------------

    def create(self, job_type: str, input: Any = None, *, job_id: str | None = None,
               cursor: dict[str, Any] | None = None) -> tuple[str, bool]:
        spec = self.spec(job_type)
        job, created = self.store.create(job_type, input, job_id, spec.limits,
                                         history=spec.history, cursor=cursor)
        return job.job_id, created

    def start(
        self,
        job_type: str,
        input: Any = None,
        *,
        job_id: str | None = None,
        context: Any = None,
        cursor: dict[str, Any] | None = None,
    ) -> str:
        """Create the job (idempotent when `job_id` is given) and dispatch step 0.

        A repeated start of an existing job dispatches nothing new unless the job has not
        started yet (then step 0 is re-sent; the claim de-duplicates).
        """
        jid, created = self.create(job_type, input, job_id=job_id, cursor=cursor)
        if not created:
            job = self.store.get(jid)
            if job.status != JobStatus.PENDING or job.step != 0:
                return jid
        self._dispatch(step_event(jid, 0, job_type), context)
        observe.event("started", job_id=jid, job_type=job_type, created=created)
        return jid

    # -- the Lambda entry point ------------------------------------------------------------

    def handler(self, event: Any, context: Any = None) -> dict[str, Any]:
        """Lambda handler: runs one step, or starts a job from a start request."""
        with observe.invocation(context, logger=self.logger, emf=self.emf) as inv:
            return self._handle(event, context, inv)

    def _handle(self, event: Any, context: Any, inv: observe.Invocation) -> dict[str, Any]:
        body = _parse_event(event)
        token = _HOP.set(body.get("hop") or 1)
        try:
            return self._handle_body(body, context, inv)
        finally:
            _HOP.reset(token)

    def _handle_body(self, body: dict[str, Any], context: Any,
                     inv: observe.Invocation) -> dict[str, Any]:
        if "start" in body:
            req = body["start"]
            if not isinstance(req, Mapping) or not isinstance(req.get("job_type"), str):
                raise InvalidEvent(
                    "a start request needs {'jobstate': {'start': {'job_type': str, "
                    "'input': ..., 'job_id': optional str}}}."
                )
            job_id = req.get("job_id")
            request_id = getattr(context, "aws_request_id", None)
            if job_id is None and isinstance(request_id, str) and request_id:
                # Lambda delivers an async event twice now and then, with the same request
                # id: derive the id from it (and the input, so distinct starts handled in
                # one invocation stay distinct) and a duplicate start finds its job.
                codec.validate_job_type(req["job_type"])
                job_id = codec.stable_id(request_id, codec.dumps(req.get("input"), "input"),
                                         prefix=req["job_type"])
            jid = self.start(req["job_type"], req.get("input"), job_id=job_id,
                             context=context)
            return {"job_id": jid, "outcome": "started"}
        report = self.run_step(body, context)
        if "duration_ms" in report.extra:
            inv.metrics.add(observe.STEP_DURATION, report.extra["duration_ms"])
        return report.to_dict()

    def run_step(self, body: Mapping[str, Any], context: Any = None) -> StepReport:
        job_id = codec.validate_job_id(body["job_id"])
        step = body["step"]
        job_type = body.get("job_type")
        ancestors = list(body.get("ancestors") or ())
        if body.get("parent_type") and body["parent_type"] not in ancestors:
            ancestors.append(body["parent_type"])  # an event from before `ancestors`
        if not isinstance(job_type, str):
            # An event written by hand names only the job: one read tells its type, so an
            # unknown or paused type is refused before anything is written.
            raw = self.store.get_raw(job_id)
            if raw is None:
                raise JobNotFound(
                    f"no job {job_id!r} in table {self.store.table_name!r}: the event names a "
                    "job that does not exist (wrong table, or it expired).", job_id=job_id)
            known = self.store.view(raw, secrets=False)
            job_type, ancestors = known.job_type, list(known.ancestors)
        self.spec(job_type)  # unknown type: fail before any write
        checked = (*ancestors, job_type)
        paused = self._paused_among(checked)
        if paused is not None:
            return self._paused(job_id, step, paused, job_type)
        started = time.monotonic()
        deadline = self._deadline_ms(context)
        request_id = str(getattr(context, "aws_request_id", None) or uuid.uuid4())
        while True:
            lease_until = deadline + self.lease_grace_ms
            faults.point("before_claim", job_id=job_id, step=step)
            claim = protocol.claim(self.store, job_id, step, request_id=request_id,
                                   lease_until_ms=lease_until, job_type=job_type)
            if claim.lease is None:
                report = StepReport(job_id, step, claim.outcome.value, claim.detail,
                                    status=claim.job.status.value if claim.job else None)
                self._emit(report, job_type)
                return report
            # The event's ancestors are what was checked; the job's own are the truth (an
            # event that leaves some out must not get past their pause).
            unchecked = [t for t in claim.lease.job.pause_types if t not in checked]
            paused = self._paused_among(unchecked)
            if paused is not None:
                protocol.release(self.store, claim.lease)
                return self._paused(job_id, step, paused, job_type)
            report, retry_in_process = self._run_claimed(claim.lease, context, deadline,
                                                         claim.outcome)
            if retry_in_process is None:
                report.extra["duration_ms"] = int((time.monotonic() - started) * 1000)
                return report
            # A short retry backoff fits this invocation: wait here and claim again.
            self.clock.sleep(retry_in_process / 1000)

    # -- internals ---------------------------------------------------------------------

    def _paused_among(self, job_types: Any) -> str | None:
        return next((t for t in job_types if self.store.is_paused(t)), None)

    def _paused(self, job_id: str, step: int, paused: str, job_type: str) -> StepReport:
        report = StepReport(job_id, step, ClaimOutcome.PAUSED.value,
                            f"job type {paused!r} is paused; left due for the sweeper")
        self._emit(report, job_type)
        return report

    def _deadline_ms(self, context: Any) -> int:
        now = self.clock.now_ms()
        get = getattr(context, "get_remaining_time_in_millis", None)
        remaining = int(get()) if callable(get) else self.default_timeout_ms
        return now + remaining

    def _run_claimed(self, lease: Lease, context: Any, deadline_ms: int,
                     outcome: ClaimOutcome) -> tuple[StepReport, int | None]:
        spec = self.specs.get(lease.job_type)
        if spec is None:
            protocol.release(self.store, lease)
            self.spec(lease.job_type)  # raises UnknownJobType
        assert spec is not None
        job = lease.job
        faults.point("after_claim", job_id=job.job_id, step=lease.step)
        if outcome == ClaimOutcome.TAKEOVER:
            protocol.record_history(self.store, lease, "takeover")
            self._emit(StepReport(job.job_id, lease.step, "takeover"), job.job_type)
        from .fanout import before_step

        verdict = self._guard(job, lease) or before_step(self.store, lease)
        if verdict is not None:
            # Runaway guard or a failed child: fail the job (joining its parent, if any),
            # its stored state untouched (nothing ran to change it).
            try:
                protocol.finish(self.store, lease, None, JobStatus.FAILED, error=verdict,
                                error_type=GUARD if verdict.startswith("runaway guard")
                                else "ChildFailed",
                                extra_actions=self._join_actions(lease, "FAILED", None,
                                                                 verdict))
            except JobCancelled as exc:
                return self._cancelled(lease, exc), None
            except LeaseLost as exc:
                return self._done(lease, "lease_lost", str(exc), None), None
            self._after_terminal(lease, context)
            return self._done(lease, "failed", verdict, JobStatus.FAILED), None
        budget = TimeBudget(lambda: deadline_ms - self.clock.now_ms(), self.clock.now_ms,
                            reserve_ms=self.reserve_ms)
        ctx = StepContext(self.store, lease, budget, lambda_context=context, specs=self.specs,
                          reconcile_guard_ms=self.reconcile_guard_ms)
        self._emit(StepReport(job.job_id, lease.step, "claimed"), job.job_type)
        try:
            returned = spec.fn(ctx)
        except Suspend as s:
            returned = s.wait
        except Deferred as d:
            return self._deferred(lease, ctx, d)
        except JobCancelled as exc:
            return self._cancelled(lease, exc), None
        except LeaseLost as exc:
            return self._done(lease, "lease_lost", str(exc), None), None
        except Exception as exc:
            return self._failed(spec, lease, ctx, exc)
        return self._settle(spec, lease, ctx, returned, context)

    def _settle(self, spec: JobSpec, lease: Lease, ctx: StepContext, returned: Any,
                context: Any) -> tuple[StepReport, int | None]:
        from .fanout import Spawned, commit_spawn

        try:
            if returned is not None and not isinstance(returned, Completed | Failed | Wait
                                                       | Spawned):
                raise InvalidStepResult(
                    f"step function of {spec.name!r} returned {type(returned).__name__}; "
                    "return None to commit and continue, or ctx.complete(result) to finish."
                )
            state = ctx.encoded_state()
            result_json = None
            if isinstance(returned, Completed):
                result_json = codec.dumps(returned.result, "result")
                state.check(input_json=ctx._input_json, result=result_json)
        except Exception as exc:
            # Whatever stops the state from being encoded (a cipher denied by KMS, a value
            # JSON cannot hold) is this attempt's failure, recorded under the lease: never
            # an escape that leaves the lease held and the sweeper re-running the step.
            return self._failed(spec, lease, ctx, exc)
        faults.point("before_commit", job_id=lease.job_id, step=lease.step)
        try:
            if isinstance(returned, Completed):
                protocol.finish(self.store, lease, state, JobStatus.SUCCEEDED,
                                result_json=result_json,
                                extra_actions=self._join_actions(lease, "SUCCEEDED",
                                                                 result_json, None))
                self._after_terminal(lease, context)
                return self._done(lease, "completed", "", JobStatus.SUCCEEDED), None
            if isinstance(returned, Failed):
                reason = redact.scrub(returned.reason, ctx.tokens, lease.job.tokens)
                protocol.finish(self.store, lease, state, JobStatus.FAILED,
                                error=reason, error_type="Failed", advance=True,
                                extra_actions=self._join_actions(lease, "FAILED", None,
                                                                 reason))
                self._after_terminal(lease, context)
                return self._done(lease, "failed", reason, JobStatus.FAILED), None
            if isinstance(returned, Spawned):
                nxt, ready = commit_spawn(self.store, lease, state, returned)
                faults.point("after_commit", job_id=lease.job_id, step=lease.step)
                self._dispatch_many(returned.start_events, context)
                if ready:
                    self._dispatch(step_event(lease.job_id, nxt, lease.job_type), context)
                return self._done(lease, "waiting", "children", JobStatus.WAITING, nxt), None
            if isinstance(returned, Wait):
                nxt = protocol.commit(self.store, lease, state, wait_until_ms=returned.until_ms,
                                      wait_reason=returned.reason)
                return self._done(lease, "waiting", returned.reason, JobStatus.WAITING,
                                  nxt), None
            nxt = protocol.commit(self.store, lease, state, hop=_HOP.get() + 1)
        except JobCancelled as exc:
            return self._cancelled(lease, exc), None
        except LeaseLost as exc:
            return self._done(lease, "lease_lost", str(exc), None), None
        faults.point("after_commit", job_id=lease.job_id, step=lease.step)
        self._dispatch(step_event(lease.job_id, nxt, lease.job_type,
                                  **_routing(lease)), context)
        faults.point("after_dispatch", job_id=lease.job_id, step=lease.step)
        return self._done(lease, "committed", "", JobStatus.RUNNING, nxt), None

    def _cancelled(self, lease: Lease, exc: JobCancelled) -> StepReport:
        protocol.release_cancelled(self.store, lease)
        return self._done(lease, "cancelled", str(exc), JobStatus.CANCELLED)

    def _failed(self, spec: JobSpec, lease: Lease, ctx: StepContext,
                exc: BaseException) -> tuple[StepReport, int | None]:
        attempt = lease.job.attempt + 1
        retry_in = spec.retry.next_delay_ms(exc, attempt)
        if isinstance(exc, EffectOutcomeUnknown):
            message = str(exc)
        else:
            message = f"{type(exc).__name__}: {exc}"
            if retry_in is None and attempt >= spec.retry.max_attempts and not isinstance(
                exc, JobStateError
            ):
                message = f"step {lease.step} failed {attempt} times; last error {message}"
        message = redact.scrub(message, ctx.tokens, lease.job.tokens)
        try:
            if retry_in is None:
                # state None: keep the last checkpoint, not the claim's copy.
                protocol.finish(self.store, lease, None, JobStatus.FAILED, error=message,
                    error_type=type(exc).__name__, attempt=attempt,
                    extra_actions=self._join_actions(lease, "FAILED", None, message))
                self._after_terminal(lease, None)
                report = self._done(lease, "failed", message, JobStatus.FAILED)
                if isinstance(exc, InvalidStepResult | StateNotSerializable | StateTooLarge):
                    # Programming errors surface to the caller (and the Lambda logs); the
                    # job is already FAILED, so a redelivery no-ops.
                    raise exc
                return report, None
            protocol.fail_attempt(self.store, lease, message, retry_in_ms=retry_in,
                                  error_type=type(exc).__name__)
        except JobCancelled as e:
            return self._cancelled(lease, e), None
        except LeaseLost as e:
            return self._done(lease, "lease_lost", str(e), None), None
        report = self._done(lease, "retry_scheduled", message, JobStatus.RUNNING)
        report.extra["retry_in_ms"] = retry_in
        remaining = ctx.remaining_ms() - self.reserve_ms
        if retry_in is not None and retry_in < remaining / 2:
            return report, retry_in
        return report, None

    def _deferred(self, lease: Lease, ctx: StepContext,
                  d: Deferred) -> tuple[StepReport, int | None]:
        try:
            protocol.defer(self.store, lease, d.until_ms, d.reason)
        except JobCancelled as e:
            return self._cancelled(lease, e), None
        except LeaseLost as e:
            return self._done(lease, "lease_lost", str(e), None), None
        report = self._done(lease, "deferred", d.reason, JobStatus.RUNNING)
        wait_ms = max(0, d.until_ms - self.clock.now_ms())
        report.extra["retry_in_ms"] = wait_ms
        if wait_ms < (ctx.remaining_ms() - self.reserve_ms) / 2:
            return report, wait_ms  # fits this invocation: wait here and claim again
        return report, None

    def _guard(self, job: Any, lease: Lease) -> str | None:
        now = self.clock.now_ms()
        if job.max_steps is not None and lease.step >= job.max_steps:
            return (f"runaway guard: the job reached max_steps={job.max_steps} without "
                    "completing; check its stop condition, or give it more steps with "
                    f"`jobstate resume {job.job_id} --max-steps N`.")
        if job.deadline_at is not None and now > job.deadline_at:
            return deadline_reason(job)
        return None

    def _join_actions(self, lease: Lease, status: str, result_json: str | None,
                      error: str | None) -> list[dict[str, Any]] | None:
        from .fanout import join_actions

        return join_actions(self.store, lease, status, result_json, error)

    def _after_terminal(self, lease: Lease, context: Any) -> None:
        from .fanout import after_join

        for event in after_join(self.store, lease):
            self._dispatch(event, context)

    def _done(self, lease: Lease, outcome: str, detail: str, status: JobStatus | None,
              next_step: int | None = None) -> StepReport:
        report = StepReport(lease.job_id, lease.step, outcome, detail, next_step,
                            status.value if status else None)
        self._emit(report, lease.job_type)
        return report

    def _dispatch(self, event: dict[str, Any], context: Any) -> None:
        event[EVENT_KEY].setdefault("hop", _HOP.get() + 1)
        try:
            self.continuation.dispatch(event, context=context)
        except DispatchFailed as exc:
            observe.event("dispatch_failed", logging.WARNING, detail=str(exc),
                          **{k: event[EVENT_KEY].get(k) for k in ("job_id", "step")})

    def _dispatch_many(self, events: list[dict[str, Any]], context: Any) -> None:
        for event in events:
            self._dispatch(event, context)

    def _emit(self, report: StepReport, job_type: str | None) -> None:
        level = logging.WARNING if report.outcome in ("failed", "lease_lost") else logging.INFO
        observe.event(report.outcome, level, job_id=report.job_id, job_type=job_type,
                      step=report.step, detail=report.detail or None)
        for hook in self.hooks:
            try:
                hook(report.outcome, {"job_type": job_type, **report.to_dict()})
            except Exception as exc:
                # A hook observes; it never changes the job (a raise here on `claimed`
                # would leave the lease held and the step unrun). Its text may quote
                # anything: the type is logged.
                observe.event("hook_failed", logging.WARNING, job_id=report.job_id,
                              job_type=job_type, step=report.step,
                              detail=f"{_name_of(hook)} raised {type(exc).__name__} on "
                                     f"{report.outcome!r}")


def _name_of(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def deadline_reason(job: Any) -> str:
    return (f"runaway guard: the job passed its deadline ({job.deadline_at} ms epoch) without "
            f"completing; give it more time with `jobstate resume {job.job_id} --deadline "
            "SECONDS` (or raise deadline= for new jobs).")


def _routing(lease: Lease) -> dict[str, Any]:
    # Children carry their ancestors' types so pausing any of them pauses the child too.
    return routing(lease.job)


def _parse_event(event: Any) -> dict[str, Any]:
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
    from .fanout import MAX_DEPTH  # a job tree is at most this deep (spawn refuses more)

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


__all__ = ["App", "InMemoryContinuation", "JobSpec", "StepReport", "step_event"]
