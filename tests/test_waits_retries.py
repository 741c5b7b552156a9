"""Waits (`ctx.sleep`, `ctx.wait_until`, `ctx.poll`), retries, and the ETL-style job
(issue 3, items 3 and 4)."""

from __future__ import annotations

from typing import Any

import pytest
import tenacity
from conftest import drain

import jobstate
from jobstate import JobStatus, step_event
from jobstate.testing import Crash, Driver, FakeLambdaContext

pytestmark = pytest.mark.integration


def deliver(app: jobstate.App, event: dict[str, Any], clock: jobstate.ManualClock,
            timeout_ms: int = 60_000) -> dict[str, Any]:
    return app.handler(event, FakeLambdaContext(clock, timeout_ms))


def sweep_and_deliver(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                      clock: jobstate.ManualClock) -> list[dict[str, Any]]:
    report = jobstate.sweep(app.store, cont)
    assert report.next_token is None
    return [deliver(app, e, clock) for e in cont.pop_all()]


# -- the ETL job ------------------------------------------------------------------------------


class FakeETL:
    """An external ETL service: start() returns a token, status() finishes after N polls."""

    def __init__(self, polls_needed: int) -> None:
        self.polls_needed = polls_needed
        self.starts: list[str] = []
        self.polls: dict[str, int] = {}
        self.crash_on_poll: int | None = None

    def start(self, report: str) -> str:
        self.starts.append(report)
        token = f"etl-{report}-{len(self.starts)}"
        self.polls[token] = 0
        return token

    def find(self, report: str) -> Any:
        """reconcile: ask the service whether a run for `report` exists."""
        for token in self.polls:
            if token.startswith(f"etl-{report}-"):
                return token
        return jobstate.NOT_DONE

    def status(self, token: str) -> str:
        self.polls[token] += 1
        if self.polls[token] == self.crash_on_poll:
            raise Crash("container lost mid-poll")
        return "SUCCEEDED" if self.polls[token] >= self.polls_needed else "RUNNING"


def register_etl(app: jobstate.App, api: FakeETL, notified: list[str]) -> None:
    @app.job("etl", max_steps=100)
    def etl(ctx: jobstate.StepContext) -> Any:
        if "etl" not in ctx.tokens:
            ctx.tokens["etl"] = ctx.once("start-etl", api.start, ctx.input["report"],
                                         reconcile=api.find)
        token = ctx.tokens["etl"]
        ctx.poll(lambda: api.status(token), until=lambda s: s == "SUCCEEDED", name="etl",
                 interval_s=60, max_interval_s=600)
        ctx.once("notify", notified.append, f"report {ctx.input['report']} ready")
        return ctx.complete({"token": token})


def test_etl_job_polls_across_invocations_and_survives_a_crash_mid_poll(app, cont, store,
                                                                         clock):
    api = FakeETL(polls_needed=6)
    notified: list[str] = []
    register_etl(app, api, notified)
    jid = app.start("etl", {"report": "weekly"}, job_id="etl-1")

    # Step 0: starts the ETL once, polls once, and the 60 s backoff ends the step.
    [report] = [deliver(app, e, clock) for e in cont.pop_all()]
    assert report["outcome"] == "waiting"
    job = store.get(jid, secrets=True)
    assert job.status is JobStatus.WAITING
    assert job.tokens == {"etl": "etl-weekly-1"}  # persisted with the commit
    assert job.due_at == job.not_before == clock.now_ms() + 60_000
    assert cont.pop_all() == []  # nothing dispatched: the sweeper resumes it

    # Not before it is due: neither a sweep nor a (stray) delivery runs it.
    clock.advance(59)
    assert sweep_and_deliver(app, cont, clock) == []
    early = deliver(app, step_event(jid, job.step, "etl"), clock)
    assert early["outcome"] == "not_yet"
    assert api.polls["etl-weekly-1"] == 1

    clock.advance(2)
    [report] = sweep_and_deliver(app, cont, clock)
    assert report["outcome"] == "waiting"
    assert api.polls["etl-weekly-1"] == 2
    # The backoff grows across invocations (tenacity exponential, state in the cursor).
    job = store.get(jid)
    assert job.not_before == clock.now_ms() + 120_000

    # The container running the next poll dies mid-poll.
    api.crash_on_poll = 3
    clock.advance(121)
    jobstate.sweep(store, cont)
    [event] = cont.pop_all()
    assert Driver(app, cont, clock).deliver(event) is None
    assert store.get(jid).lease_owner is not None  # a dead holder's lease

    Driver(app, cont, clock).run_until_done([jid])
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED
    assert job.result == {"token": "etl-weekly-1"}
    assert api.starts == ["weekly"]  # never a second external job
    assert notified == ["report weekly ready"]
    assert api.polls["etl-weekly-1"] == 6
    assert job.takeovers >= 1
    assert "__jobstate_poll__" not in job.cursor


def test_etl_start_crash_before_token_committed_reconciles_instead_of_restarting(
        app, cont, store, clock):
    api = FakeETL(polls_needed=1)
    notified: list[str] = []
    register_etl(app, api, notified)
    jid = app.start("etl", {"report": "daily"}, job_id="etl-2")
    # Dies after the ETL service accepted the start, before DONE was recorded.
    assert Driver(app, cont, clock).deliver(cont.pop_all()[0], crash_at="effect_called") is None
    assert api.starts == ["daily"]
    Driver(app, cont, clock).run_until_done([jid])
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert api.starts == ["daily"]
    assert notified == ["report daily ready"]


def test_short_poll_waits_are_served_in_process(app, cont, store, clock):
    api = FakeETL(polls_needed=4)
    token = api.start("small")

    @app.job("quick")
    def quick(ctx: jobstate.StepContext) -> Any:
        status = ctx.poll(lambda: api.status(token), until=lambda s: s == "SUCCEEDED",
                          interval_s=1, max_interval_s=2)
        return ctx.complete(status)

    jid = app.start("quick", None, job_id="quick")
    t0 = clock.now_ms()
    reports = drain(app, cont, FakeLambdaContext(clock, 60_000))
    assert [r["outcome"] for r in reports] == ["completed"]
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.invocations == 1
    assert api.polls[token] == 4
    assert clock.now_ms() - t0 >= 1_000 + 2_000 + 2_000  # backoffs served in-process


def test_poll_timeout_fails_with_a_clear_error(app, cont, store, clock):
    @app.job("never", retry=jobstate.RetryPolicy(max_attempts=1))
    def never(ctx: jobstate.StepContext) -> Any:
        ctx.poll(lambda: "RUNNING", until=lambda s: s == "DONE", name="stuck",
                 interval_s=60, timeout_s=300)
        return ctx.complete()

    jid = app.start("never", None, job_id="never")
    Driver(app, cont, clock).run_until_done([jid])
    job = store.get(jid)
    assert job.status is JobStatus.FAILED
    assert "PollTimedOut" in (job.error or "") and "stuck" in (job.error or "")


# -- waits ------------------------------------------------------------------------------------


def register_sleeper(app: jobstate.App, seconds: float, runs: list[int]) -> None:
    @app.job("sleeper", max_steps=10)
    def sleeper(ctx: jobstate.StepContext) -> Any:
        runs.append(ctx.step)
        if not ctx.cursor.get("slept"):
            ctx.cursor["slept"] = True
            ctx.sleep(seconds)
        return ctx.complete(ctx.step)


def test_short_sleep_is_served_in_process(app, cont, store, clock):
    runs: list[int] = []
    register_sleeper(app, 5, runs)
    jid = app.start("sleeper", None, job_id="nap")
    t0 = clock.now_ms()
    reports = drain(app, cont, FakeLambdaContext(clock, 60_000))
    assert [r["outcome"] for r in reports] == ["completed"]
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result == 0
    assert runs == [0]
    assert clock.now_ms() - t0 >= 5_000  # it really waited (on the manual clock)


@pytest.mark.parametrize("how", ["sleep", "wait_until"])
def test_long_wait_goes_waiting_and_is_resumed_by_the_sweeper_when_due(app, cont, store,
                                                                       clock, how):
    runs: list[int] = []
    due = clock.now_ms() + 3_600_000

    @app.job("sleeper", max_steps=10)
    def sleeper(ctx: jobstate.StepContext) -> Any:
        runs.append(ctx.step)
        if not ctx.cursor.get("slept"):
            ctx.cursor["slept"] = True
            if how == "sleep":
                ctx.sleep(3600)
            else:
                ctx.wait_until(due / 1000)
        return ctx.complete(ctx.step)

    jid = app.start("sleeper", None, job_id="long-nap")
    [report] = [deliver(app, e, clock) for e in cont.pop_all()]
    assert report["outcome"] == "waiting"
    job = store.get(jid)
    assert job.status is JobStatus.WAITING
    assert job.due_at == due and job.not_before == due
    assert job.lease_owner is None
    assert cont.pop_all() == []

    # A delivered event for the next step is too early; so is every sweep before the due time.
    assert deliver(app, step_event(jid, 1, "sleeper"), clock)["outcome"] == "not_yet"
    for _ in range(3):
        clock.advance(1000)
        assert jobstate.sweep(store, cont).dispatched == 0
    clock.set(due - 1)
    assert jobstate.sweep(store, cont).dispatched == 0
    assert runs == [0]

    clock.set(due + 1)
    report = jobstate.sweep(store, cont)
    assert report.dispatched == 1 and report.waits_over == 1
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result == 1
    assert runs == [0, 1]


def test_invalid_waits_are_rejected(app, cont, store, clock):
    errors: list[str] = []

    @app.job("bad")
    def bad(ctx: jobstate.StepContext) -> Any:
        for call in (lambda: ctx.sleep(-1), lambda: ctx.sleep(float("nan")),
                     lambda: ctx.sleep("5"), lambda: ctx.wait_until(None)):
            with pytest.raises(jobstate.InvalidInput) as info:
                call()
            errors.append(str(info.value))
        ctx.wait_until(0)  # in the past: no wait at all
        return ctx.complete()

    jid = app.start("bad", None, job_id="bad")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert len(errors) == 4


# -- retries ----------------------------------------------------------------------------------


def register_flaky(app: jobstate.App, failures: int, calls: list[int],
                   exc: type[Exception] = ValueError, **policy: Any) -> None:
    policy.setdefault("max_attempts", 3)
    policy.setdefault("wait", tenacity.wait_fixed(120))

    @app.job("flaky", retry=jobstate.RetryPolicy(**policy))
    def flaky(ctx: jobstate.StepContext) -> Any:
        calls.append(ctx.attempt)
        if len(calls) <= failures:
            raise exc(f"boom {len(calls)}")
        return ctx.complete({"attempt": ctx.attempt})


def test_step_retried_through_due_at_then_succeeds(app, cont, store, clock):
    calls: list[int] = []
    register_flaky(app, failures=2, calls=calls)
    jid = app.start("flaky", None, job_id="flaky")
    [event] = cont.pop_all()

    report = deliver(app, event, clock)  # returns normally: nothing raises into Lambda
    assert report["outcome"] == "retry_scheduled"
    assert report["retry_in_ms"] == 120_000
    job = store.get(jid)
    assert job.status is JobStatus.RUNNING
    assert job.lease_owner is None
    assert job.not_before == clock.now_ms() + 120_000
    assert job.due_at == job.not_before  # the sweeper sends it when the backoff ends
    assert job.attempt == 1 and "boom 1" in (job.error or "")
    assert cont.pop_all() == []
    # Not before the backoff ends: a redelivery is NOT_YET, a sweep finds nothing.
    assert deliver(app, event, clock)["outcome"] == "not_yet"
    clock.advance(119)
    assert jobstate.sweep(store, cont).dispatched == 0

    clock.advance(2)
    assert jobstate.sweep(store, cont).dispatched == 1
    reports = drain(app, cont, FakeLambdaContext(clock))
    assert [r["outcome"] for r in reports] == ["retry_scheduled"]
    clock.advance(121)
    jobstate.sweep(store, cont)
    reports = drain(app, cont, FakeLambdaContext(clock))
    assert [r["outcome"] for r in reports] == ["completed"]

    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED
    assert job.result == {"attempt": 3}
    assert calls == [1, 2, 3]
    assert job.retries == 2
    events = [(h.event, h.attempt) for h in store.history(jid)]
    assert events == [("retry_scheduled", 1), ("retry_scheduled", 2), ("succeeded", None)]
    assert all("boom" in (h.detail or "") for h in store.history(jid)
               if h.event == "retry_scheduled")


def test_exceeding_max_attempts_fails_with_the_last_error(app, cont, store, clock):
    calls: list[int] = []
    register_flaky(app, failures=99, calls=calls)
    jid = app.start("flaky", None, job_id="doomed")
    Driver(app, cont, clock).run_until_done([jid])
    job = store.get(jid)
    assert job.status is JobStatus.FAILED
    assert calls == [1, 2, 3]
    assert "boom 3" in (job.error or "") and "3 times" in (job.error or "")
    assert [(h.event, h.attempt) for h in store.history(jid)] == [
        ("retry_scheduled", 1), ("retry_scheduled", 2), ("failed", 3)]
    assert (job.attempt, job.max_attempts) == (3, 3)  # `jobstate status`: attempt 3/3
    # A terminal job stays terminal: sweeps dispatch nothing more.
    clock.advance(86400)
    assert jobstate.sweep(store, cont).dispatched == 0


@pytest.mark.parametrize(("exc", "expected_calls", "status"), [
    (ConnectionError, 2, JobStatus.SUCCEEDED),  # retryable
    (KeyError, 1, JobStatus.FAILED),  # not in retry_on: fails at once
])
def test_retry_on_filters_exception_types(app, cont, store, clock, exc, expected_calls,
                                          status):
    calls: list[int] = []
    register_flaky(app, failures=1, calls=calls, exc=exc, retry_on=(ConnectionError,))
    jid = app.start("flaky", None, job_id="filter")
    Driver(app, cont, clock).run_until_done([jid])
    job = store.get(jid)
    assert job.status is status
    assert len(calls) == expected_calls
    if status is JobStatus.FAILED:
        assert "KeyError" in (job.error or "")


def test_short_backoff_retries_in_process(app, cont, store, clock):
    calls: list[int] = []
    register_flaky(app, failures=2, calls=calls, wait=tenacity.wait_fixed(2))
    jid = app.start("flaky", None, job_id="fast")
    reports = drain(app, cont, FakeLambdaContext(clock))
    assert [r["outcome"] for r in reports] == ["completed"]
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert calls == [1, 2, 3]
    assert store.get(jid).retries == 2


def test_exponential_jitter_policy_schedules_growing_backoffs(app, cont, store, clock):
    calls: list[int] = []
    register_flaky(app, failures=3, calls=calls, max_attempts=4,
                   wait=tenacity.wait_exponential(multiplier=100, max=1000)
                   + tenacity.wait_random(0, 5))
    jid = app.start("flaky", None, job_id="expo")
    delays = []
    for _ in range(3):
        drain(app, cont, FakeLambdaContext(clock))
        job = store.get(jid)
        delays.append(job.not_before - clock.now_ms())
        clock.set(job.not_before + 1)
        jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert 100_000 <= delays[0] <= 105_000
    assert 200_000 <= delays[1] <= 205_000
    assert 400_000 <= delays[2] <= 405_000
