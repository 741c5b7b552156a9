"""App: job registration, the Lambda handler, and the step runner.

A delivery claims the step (protocol.claim), runs the step function, and turns what it
returned (or raised) into one transition of the job record (`_settle`, `_failed`,
`_deferred`); a transition refused because the lease was lost or the job cancelled ends
the delivery in one place (`_guarded`).
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from . import callbacks as cbs
from . import codec, fanout, faults, history, hooks, joins, observe, protocol, redact, transitions
from .callbacks import CallbackAnswer, CallbackWait
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
from .events import EVENT_KEY, parse_event, routing, step_event
from .fanout import Spawned
from .historymode import HistoryMode, parse_mode
from .hooks import EffectHook
from .lease import Lease
from .retry import RetryPolicy
from .serdes import JSON, Serdes, SerdesLike
from .serdes import encode as encode_result
from .serdes import for_job as serdes_for
from .serdes import resolve as resolve_serdes
from .signals import Deferred, Suspend
from .spec import JobSpec, StepFn, StepReport
from .status import ClaimOutcome, JobStatus, StepOutcome
from .store import JobStore, Limits
from .timebudget import NO_ROOM, TimeBudget, no_room

Hook = Callable[[str, dict[str, Any]], None]
GUARD = "RunawayGuard"  # error_type of a job failed by max_steps or its deadline
DEFAULT_TIMEOUT_MS = 900_000
Outcome = tuple["StepReport", int | None]  # the report, and a retry to serve in-process
# Which invocation of its chain (Lambda's recursion count) the running step is: events it
# dispatches are the next one. 0 outside a handler (a start from a script is hop 1).
_HOP: contextvars.ContextVar[int] = contextvars.ContextVar("jobstate_hop", default=0)


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
        effect_hooks: Sequence[EffectHook] | None = None,
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
        self.hooks: list[Hook] = []
        # Called on each effect's start, success, failure and replay (hooks.py).
        self.effect_hooks: list[EffectHook] = hooks.validate(effect_hooks)
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
        history: HistoryMode | bool = "steps",
        serdes: SerdesLike | None = None,
    ) -> Callable[[StepFn], StepFn]:
        """Register a step function: `@app.job("name", max_steps=..., deadline=seconds)`."""
        codec.validate_job_type(name)
        job_serdes = resolve_serdes(serdes, f"@app.job({name!r}) serdes")
        mode = parse_mode(history, f"@app.job({name!r})")
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
            self.specs[name] = JobSpec(name, fn, limits, policy, mode, job_serdes)
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
        observe.event(StepOutcome.STARTED, job_id=jid, job_type=job_type, created=created)
        return jid

    # -- the Lambda entry point ------------------------------------------------------------

    def handler(self, event: Any, context: Any = None) -> dict[str, Any]:
        """Lambda handler: runs one step, or starts a job from a start request."""
        with observe.invocation(context, logger=self.logger, emf=self.emf) as inv:
            body = parse_event(event)
            token = _HOP.set(body.get("hop") or 1)
            try:
                if "start" in body:
                    return self._start_request(body["start"], context)
                report = self.run_step(body, context)
            finally:
                _HOP.reset(token)
            if "duration_ms" in report.extra:
                inv.metrics.add(observe.STEP_DURATION, report.extra["duration_ms"])
            return report.to_dict()

    def _start_request(self, req: Any, context: Any) -> dict[str, Any]:
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
        jid = self.start(req["job_type"], req.get("input"), job_id=job_id, context=context)
        return {"job_id": jid, "outcome": StepOutcome.STARTED.value}

    def run_step(self, body: Mapping[str, Any], context: Any = None) -> StepReport:
        job_id = codec.validate_job_id(body["job_id"])
        step = body["step"]
        job_type = body.get("job_type")
        if not isinstance(job_type, str):
            # An event written by hand names only the job: one read tells its type, so an
            # unknown type is refused before anything is written.
            item = self.store.get_job_item(job_id)
            if item is None:
                raise JobNotFound(
                    f"no job {job_id!r} in table {self.store.table_name!r}: the event names a "
                    "job that does not exist (wrong table, or it expired).", job_id=job_id)
            job_type = item.job_type
        self.spec(job_type)  # unknown type: fail before any write
        # A paused type's jobs carry its mark, which the claim's condition refuses: no read
        # of the pause flag per step, and no event (whatever types it names) gets past it.
        started = time.monotonic()
        deadline = self._deadline_ms(context)
        invocation_ms: int | None = deadline - self.clock.now_ms()
        request_id = str(getattr(context, "aws_request_id", None) or uuid.uuid4())
        while True:
            faults.point("before_claim", job_id=job_id, step=step)
            claim = protocol.claim(self.store, job_id, step, request_id=request_id,
                                   lease_until_ms=deadline + self.lease_grace_ms,
                                   job_type=job_type)
            if claim.lease is None:
                return self._report(job_id, step, job_type, StepOutcome(claim.outcome.value),
                                    claim.detail, claim.job.status if claim.job else None)
            report, retry_in_process = self._run_claimed(claim.lease, context, deadline,
                                                         claim.outcome, invocation_ms)
            invocation_ms = None  # a claim again after an in-process wait: not a new timeout
            if retry_in_process is None:
                report.extra["duration_ms"] = int((time.monotonic() - started) * 1000)
                return report
            # A short retry backoff (or deferral) fits this invocation: wait here, claim
            # again.
            self.clock.sleep(retry_in_process / 1000)

    # -- running a claimed step ------------------------------------------------------------

    def _run_claimed(self, lease: Lease, context: Any, deadline_ms: int,
                     outcome: ClaimOutcome, invocation_ms: int | None = None) -> Outcome:
        spec = self.specs.get(lease.job_type)
        if spec is None:
            transitions.release(self.store, lease)
            self.spec(lease.job_type)  # raises UnknownJobType
        assert spec is not None
        faults.point("after_claim", job_id=lease.job_id, step=lease.step)
        if outcome == ClaimOutcome.TAKEOVER:
            history.record(self.store, lease, "takeover")
            self._emit(StepReport(lease.job_id, lease.step, StepOutcome.TAKEOVER),
                       lease.job_type)
        trap = None if invocation_ms is None else no_room(invocation_ms, self.reserve_ms)
        fanout.settle_decided(self.store, lease)  # a policy decided: the rest never run
        verdict = (trap or protocol.guard(lease.job, lease.step, self.clock.now_ms())
                   or fanout.failed_children(self.store, lease))
        if verdict is not None:
            # Runaway guard, a failed child, or no time for work at all: fail the job
            # (joining its parent, if any), its stored state untouched (nothing ran).
            kind = (NO_ROOM if trap else GUARD if verdict.startswith("runaway guard")
                    else "ChildFailed")
            return self._guarded(lease, lambda: self._finish(
                lease, context, StepOutcome.FAILED, verdict, None, JobStatus.FAILED,
                error=verdict, error_type=kind))
        budget = TimeBudget(lambda: deadline_ms - self.clock.now_ms(), self.clock.now_ms,
                            reserve_ms=self.reserve_ms)
        ctx = StepContext(self.store, lease, budget, lambda_context=context, specs=self.specs,
                          reconcile_guard_ms=self.reconcile_guard_ms,
                          effect_hooks=self.effect_hooks)
        self._emit(StepReport(lease.job_id, lease.step, StepOutcome.CLAIMED), lease.job_type)
        try:
            returned = spec.fn(ctx)
        except Suspend as s:
            returned = s.wait
        except Deferred as deferral:
            until, why = deferral.until_ms, deferral.reason
            return self._guarded(lease, lambda: self._deferred(lease, ctx, until, why))
        except LeaseLost as exc:
            return self._lease_ended(lease, exc), None
        except Exception as exc:
            return self._failed(spec, lease, ctx, exc)
        return self._settle(spec, lease, ctx, returned, context)

    def _settle(self, spec: JobSpec, lease: Lease, ctx: StepContext, returned: Any,
                context: Any) -> Outcome:
        """The one place a step function's return value becomes a transition."""
        if returned is not None and not isinstance(returned, Completed | Failed | Wait
                                                   | Spawned | CallbackWait):
            return self._failed(spec, lease, ctx, InvalidStepResult(
                f"step function of {spec.name!r} returned {type(returned).__name__}; "
                "return None to commit and continue, or ctx.complete(result) to finish."))
        try:
            state = ctx.encoded_state()
            result_json = None
            if isinstance(returned, Completed):
                result_json = encode_result(spec.serdes or JSON, returned.result,
                                            f"result of job {lease.job_id!r}")
                state.check(input_json=ctx.input_json, result=result_json)
        except Exception as exc:
            # Whatever stops the state from being encoded (a cipher denied by KMS, a value
            # JSON cannot hold) is this attempt's failure, recorded under the lease: never
            # an escape that leaves the lease held and the sweeper re-running the step.
            return self._failed(spec, lease, ctx, exc)
        faults.point("before_commit", job_id=lease.job_id, step=lease.step)

        def write() -> StepReport:
            if isinstance(returned, Completed):
                return self._finish(lease, context, StepOutcome.COMPLETED, "", state,
                                    JobStatus.SUCCEEDED, result_json=result_json)
            if isinstance(returned, Failed):
                reason = redact.scrub(returned.reason, ctx.tokens, lease.job.tokens)
                return self._finish(lease, context, StepOutcome.FAILED, reason, state,
                                    JobStatus.FAILED, error=reason, error_type="Failed",
                                    advance=True)
            if isinstance(returned, Spawned):
                nxt, ready = fanout.commit_spawn(self.store, lease, state, returned)
                faults.point("after_commit", job_id=lease.job_id, step=lease.step)
                for event in returned.start_events:
                    self._dispatch(event, context)
                if ready:
                    self._dispatch(step_event(lease.job_id, nxt, lease.job_type), context)
                return self._done(lease, StepOutcome.WAITING, "children", JobStatus.WAITING,
                                  nxt)
            if isinstance(returned, CallbackWait):
                return self._callback_wait(lease, state, returned, context)
            if isinstance(returned, Wait):
                nxt = transitions.sleep(self.store, lease, state, until_ms=returned.until_ms,
                                        reason=returned.reason)
                return self._done(lease, StepOutcome.WAITING, returned.reason,
                                  JobStatus.WAITING, nxt)
            nxt = transitions.commit(self.store, lease, state, hop=_HOP.get() + 1)
            faults.point("after_commit", job_id=lease.job_id, step=lease.step)
            self._dispatch(step_event(lease.job_id, nxt, lease.job_type,
                                      **routing(lease.job)), context)
            faults.point("after_dispatch", job_id=lease.job_id, step=lease.step)
            return self._done(lease, StepOutcome.COMMITTED, "", JobStatus.RUNNING, nxt)

        return self._guarded(lease, write)

    def _callback_wait(self, lease: Lease, state: Any, wait: CallbackWait,
                       context: Any) -> StepReport:
        """The step sleeps on a callback until its deadline; if the answer landed while the
        wait was written, the job is woken and sent now."""
        nxt = transitions.sleep(self.store, lease, state, until_ms=wait.until_ms,
                                reason=wait.reason)
        if cbs.after_wait(self.store, lease.job_id, wait.name):
            self._dispatch(step_event(lease.job_id, nxt, lease.job_type), context)
        return self._done(lease, StepOutcome.WAITING, wait.reason, JobStatus.WAITING, nxt)

    # -- callbacks: the sender's side (docs/cbs.md) -------------------------------------

    def complete_callback(self, token: str, result: Any = None) -> CallbackAnswer:
        """Record callback `token`'s success and send the waiting step now."""
        return self._woke(cbs.complete(self.store, token, result, dispatching=True,
                                       serdes=self._callback_serdes(token)))

    def _callback_serdes(self, token: str) -> Serdes:
        """The serdes of the job type waiting on `token` (one read, only when some job type
        of this App has a serdes of its own)."""
        if not any(spec.serdes is not None for spec in self.specs.values()):
            return JSON
        job_id, name, _ = cbs.parse_token(token)
        item = cbs.read(self.store, job_id, name)
        return serdes_for(self.specs, item.job_type if item is not None else None)

    def fail_callback(self, token: str, error: str) -> CallbackAnswer:
        """Record callback `token`'s failure and send the waiting step now."""
        return self._woke(cbs.fail(self.store, token, error, dispatching=True))

    def heartbeat_callback(self, token: str) -> CallbackAnswer:
        """Callback `token`'s sender is still at work: its heartbeat timeout restarts."""
        return cbs.heartbeat(self.store, token)

    def _woke(self, answer: CallbackAnswer) -> CallbackAnswer:
        if answer.woke and answer.step is not None and answer.job_type is not None:
            self._dispatch(step_event(answer.job_id, answer.step, answer.job_type), None)
        return answer

    def _finish(self, lease: Lease, context: Any, outcome: StepOutcome, detail: str,
                state: Any, status: JobStatus, **kw: Any) -> StepReport:
        joined = protocol.finish(self.store, lease, state, status, **kw)
        for event in joins.after_join(self.store, lease.job, joined):
            self._dispatch(event, context)
        return self._done(lease, outcome, detail, status)

    def _guarded(self, lease: Lease, write: Callable[[], StepReport | Outcome]) -> Outcome:
        """Run a transition of the claimed step; a lost lease or a cancel ends it here."""
        try:
            done = write()
        except LeaseLost as exc:
            return self._lease_ended(lease, exc), None
        return done if isinstance(done, tuple) else (done, None)

    def _lease_ended(self, lease: Lease, exc: LeaseLost) -> StepReport:
        if isinstance(exc, JobCancelled):
            transitions.release_cancelled(self.store, lease)
            return self._done(lease, StepOutcome.CANCELLED, str(exc), JobStatus.CANCELLED)
        return self._done(lease, StepOutcome.LEASE_LOST, str(exc), None)

    def _failed(self, spec: JobSpec, lease: Lease, ctx: StepContext,
                exc: BaseException) -> Outcome:
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
        if retry_in is None:
            # state None: keep the last checkpoint, not the claim's copy.
            done = self._guarded(lease, lambda: self._finish(
                lease, None, StepOutcome.FAILED, message, None, JobStatus.FAILED,
                error=message, error_type=type(exc).__name__, attempt=attempt))
            if (done[0].outcome == StepOutcome.FAILED
                    and isinstance(exc, InvalidStepResult | StateNotSerializable
                                   | StateTooLarge)):
                # Programming errors surface to the caller (and the Lambda logs); the
                # job is already FAILED, so a redelivery no-ops.
                raise exc
            return done

        def retry() -> Outcome:
            transitions.retry(self.store, lease, message, type(exc).__name__,
                              attempt=attempt, at_ms=self.clock.now_ms() + retry_in)
            report = self._done(lease, StepOutcome.RETRY_SCHEDULED, message, JobStatus.RUNNING)
            report.extra["retry_in_ms"] = retry_in
            return report, self._in_process(ctx, retry_in)

        return self._guarded(lease, retry)

    def _deferred(self, lease: Lease, ctx: StepContext, until_ms: int, reason: str) -> Outcome:
        transitions.defer(self.store, lease, until_ms, reason)
        report = self._done(lease, StepOutcome.DEFERRED, reason, JobStatus.RUNNING)
        wait_ms = max(0, until_ms - self.clock.now_ms())
        report.extra["retry_in_ms"] = wait_ms
        return report, self._in_process(ctx, wait_ms)

    def _in_process(self, ctx: StepContext, wait_ms: int) -> int | None:
        """`wait_ms` if waiting it out here and claiming again fits this invocation."""
        return wait_ms if wait_ms < (ctx.remaining_ms() - self.reserve_ms) / 2 else None

    # -- internals ---------------------------------------------------------------------

    def _deadline_ms(self, context: Any) -> int:
        now = self.clock.now_ms()
        get = getattr(context, "get_remaining_time_in_millis", None)
        remaining = int(get()) if callable(get) else self.default_timeout_ms
        return now + remaining

    def _done(self, lease: Lease, outcome: StepOutcome, detail: str,
              status: JobStatus | None, next_step: int | None = None) -> StepReport:
        return self._report(lease.job_id, lease.step, lease.job_type, outcome, detail,
                            status, next_step)

    def _report(self, job_id: str, step: int, job_type: str | None, outcome: StepOutcome,
                detail: str = "", status: JobStatus | None = None,
                next_step: int | None = None) -> StepReport:
        report = StepReport(job_id, step, outcome, detail, next_step,
                            status.value if status else None)
        self._emit(report, job_type)
        return report

    def _dispatch(self, event: dict[str, Any], context: Any) -> None:
        event[EVENT_KEY].setdefault("hop", _HOP.get() + 1)
        try:
            self.continuation.dispatch(event, context=context)
        except DispatchFailed as exc:
            observe.event("dispatch_failed", logging.WARNING, detail=str(exc),
                          **{k: event[EVENT_KEY].get(k) for k in ("job_id", "step")})

    def _emit(self, report: StepReport, job_type: str | None) -> None:
        warn = report.outcome in (StepOutcome.FAILED, StepOutcome.LEASE_LOST)
        observe.event(report.outcome, logging.WARNING if warn else logging.INFO,
                      job_id=report.job_id, job_type=job_type, step=report.step,
                      detail=report.detail or None)
        for hook in self.hooks:
            try:
                hook(str(report.outcome), {"job_type": job_type, **report.to_dict()})
            except Exception as exc:
                # A hook observes; it never changes the job (a raise here on `claimed`
                # would leave the lease held and the step unrun). Its text may quote
                # anything: the type is logged.
                observe.event("hook_failed", logging.WARNING, job_id=report.job_id,
                              job_type=job_type, step=report.step,
                              detail=f"{_name_of(hook)} raised {type(exc).__name__} on "
                                     f"{str(report.outcome)!r}")


def _name_of(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


__all__ = ["App", "InMemoryContinuation", "JobSpec", "StepReport", "step_event"]
