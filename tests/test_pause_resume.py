"""Pause / resume a job type (kill switch) and resume a FAILED / CANCELLED job
(issue 3, item 6)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import RequestLog, drain

import jobstate
from jobstate import JobStatus
from jobstate.testing import FakeLambdaContext

pytestmark = pytest.mark.integration

DISPATCH_S = 120


@pytest.fixture
def store(make_store: Any) -> jobstate.JobStore:
    # No per-container pause cache: a pause is seen by the very next event.
    return make_store(pause_cache_s=0)


def register_counter(app: jobstate.App, k: int, runs: list[tuple[int, int]],
                     name: str = "count", **opts: Any) -> None:
    @app.job(name, max_steps=50, **opts)
    def count(ctx: jobstate.StepContext) -> Any:
        n = ctx.cursor.get("n", 0)
        runs.append((ctx.step, n))
        if n >= k:
            return ctx.complete(n)
        ctx.cursor["n"] = n + 1
        return None


def deliver(app: jobstate.App, event: dict[str, Any], clock: Any) -> dict[str, Any]:
    return app.handler(event, FakeLambdaContext(clock))


def test_paused_type_noops_events_and_the_sweeper_skips_it_until_resumed(app, cont, store,
                                                                           clock):
    runs: list[tuple[int, int]] = []
    register_counter(app, 3, runs)
    register_counter(app, 1, [], name="other")
    jid = app.start("count", None, job_id="p1")
    deliver(app, cont.pop_all()[0], clock)  # step 0 runs
    [event] = cont.pop_all()

    store.set_paused("count", True, "incident 42")
    before = store.get_raw(jid)
    log = RequestLog(store)
    report = deliver(app, event, clock)
    assert report["outcome"] == "paused"
    # The claim's condition met the job's mark: one refused write, nothing changed.
    assert log.ops == ["UpdateItem"] and store.get_raw(jid) == before
    job = store.get(jid)
    assert (job.status, job.step, job.lease_owner) == (JobStatus.RUNNING, 1, None)
    assert (job.paused_by, job.display_status) == ("count", "PAUSED")
    assert runs == [(0, 0)]

    # Other types keep running.
    oid = app.start("other", None, job_id="o1")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(oid).status is JobStatus.SUCCEEDED

    # The sweeper never dispatches the held job, nor even reads it: a held job is out of
    # the bucket of jobs in flight it reads each sweep.
    for _ in range(3):
        clock.advance(DISPATCH_S + 1)
        sweep = jobstate.sweep(store, cont)
        assert (sweep.dispatched, sweep.scanned) == (0, 0)
    assert cont.pop_all() == []

    assert store.set_paused("count", False) == 1  # one job let go: ready for the next sweep
    sweep = jobstate.sweep(store, cont)
    assert sweep.dispatched == 1 and sweep.paused == 0
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result == 3
    assert runs == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_paused_type_before_start_stays_pending(app, cont, store, clock):
    runs: list[tuple[int, int]] = []
    register_counter(app, 0, runs)
    store.set_paused("count", True)
    jid = app.start("count", None, job_id="p0")
    assert deliver(app, cont.pop_all()[0], clock)["outcome"] == "paused"
    assert store.get(jid).status is JobStatus.PENDING
    store.set_paused("count", False)
    clock.advance(DISPATCH_S + 1)
    jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert runs == [(0, 0)]


def test_a_pause_holds_the_next_step_in_every_container_at_once(make_store, cont, clock):
    store = make_store(pause_cache_s=10)
    app = jobstate.App(store, cont)
    runs: list[tuple[int, int]] = []
    register_counter(app, 5, runs)
    # The operator pauses from another process (its own store object, own cache).
    operator = jobstate.JobStore(store.table_name, endpoint_url=store.endpoint_url,
                                 region="us-east-1", clock=clock)
    jid = app.start("count", None, job_id="cached")
    deliver(app, cont.pop_all()[0], clock)
    operator.set_paused("count", True)
    log = RequestLog(store)
    report = deliver(app, cont.pop_all()[0], clock)  # no cache to wait out
    assert report["outcome"] == "paused"
    assert "GetItem" not in log.ops  # the mark is on the job: no flag is read
    assert store.get(jid).step == 1
    # Creating a job reads the flag, cached for pause_cache_s; `fresh=True` bypasses it.
    assert store.is_paused("count") is False  # read when the job was created
    assert store.is_paused("count", fresh=True) is True


def test_resume_failed_job_from_its_last_checkpoint_with_a_new_attempt_budget(app, cont, store,
                                                                              clock):
    attempts: list[tuple[int, int]] = []
    failures = {"left": 3}

    @app.job("etl", max_steps=50, retry=jobstate.RetryPolicy(max_attempts=2))
    def etl(ctx: jobstate.StepContext) -> Any:
        n = ctx.cursor.get("n", 0)
        attempts.append((n, ctx.attempt))
        if n == 2 and ctx.attempt == 2 and "token" not in ctx.tokens:
            # Checkpointed by the attempt that then fails for good.
            ctx.tokens["token"] = "etl-run-1"
            ctx.cursor["stage"] = "started"
            ctx.checkpoint()  # durable before anything can go wrong
        if n == 2 and failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("warehouse unavailable")
        if n >= 3:
            return ctx.complete({"n": n, "token": ctx.tokens.get("token")})
        ctx.cursor["n"] = n + 1
        return None

    jid = app.start("etl", None, job_id="resume-failed")
    jobstate.testing.Driver(app, cont, clock).run_until_done([jid])
    job = store.get(jid, secrets=True)
    assert job.status is JobStatus.FAILED
    assert "warehouse unavailable" in (job.error or "")
    assert "failed 2 times" in (job.error or "")
    # The failure record kept the last checkpoint (cursor and tokens), not the claim's copy.
    assert job.cursor == {"n": 2, "stage": "started"}
    assert job.tokens == {"token": "etl-run-1"}

    resumed = store.resume(jid)
    assert (resumed.status, resumed.attempt, resumed.error) == (JobStatus.RUNNING, 0, None)
    jobstate.testing.Driver(app, cont, clock).run_until_done([jid])
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED
    assert job.result == {"n": 3, "token": "etl-run-1"}
    # Two attempts before the resume, then a fresh budget: one more failure, then success.
    at_two = [a for n, a in attempts if n == 2]
    assert at_two == [1, 2, 1, 2]
    assert [n for n, _ in attempts][:2] == [0, 1]  # steps before the failure ran once


def test_resume_cancelled_job_continues_from_its_cursor(app, cont, store, clock):
    runs: list[tuple[int, int]] = []
    register_counter(app, 4, runs)
    jid = app.start("count", None, job_id="resume-cancelled")
    deliver(app, cont.pop_all()[0], clock)
    deliver(app, cont.pop_all()[0], clock)
    store.cancel(jid, "operator stop")
    assert deliver(app, cont.pop_all()[0], clock)["outcome"] == "finished"
    assert store.get(jid).status is JobStatus.CANCELLED

    resumed = store.resume(jid)
    assert resumed.status is JobStatus.RUNNING and resumed.step == 2
    assert jobstate.sweep(store, cont).dispatched == 1
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result == 4
    assert [n for _, n in runs] == [0, 1, 2, 3, 4]  # nothing redone, nothing skipped


def test_resume_edge_cases(app, cont, store, clock):
    runs: list[tuple[int, int]] = []
    register_counter(app, 1, runs)
    jid = app.start("count", None, job_id="edge")
    assert store.resume(jid).status is JobStatus.PENDING  # runnable: a no-op
    drain(app, cont, FakeLambdaContext(clock))
    with pytest.raises(jobstate.JobFinished):
        store.resume(jid)
    with pytest.raises(jobstate.JobNotFound):
        store.resume("missing")
    with pytest.raises(jobstate.InvalidInput):
        store.set_paused("bad type!", True)


def test_a_paused_backlog_does_not_starve_the_sweeper(app, cont, store, clock):
    register_counter(app, 1, [], name="bulk")
    register_counter(app, 1, [], name="urgent")
    store.set_paused("bulk", True)
    for i in range(12):
        app.start("bulk", None, job_id=f"bulk-{i}")
    cont.pop_all()  # every start lost: all twelve wait for the sweeper
    app.start("urgent", None, job_id="urgent")
    cont.pop_all()
    clock.advance(DISPATCH_S + 1)
    dispatched: list[str] = []
    for _ in range(4):  # a budget of 5 a run: the paused ones are set aside as they are seen
        jobstate.sweep(store, cont, limit=5)
        dispatched += [e["jobstate"]["job_id"] for e in cont.pop_all()]
    assert dispatched == ["urgent"]


def hold_a_job(app: jobstate.App, cont: jobstate.InMemoryContinuation,
               store: jobstate.JobStore, clock: jobstate.ManualClock, job_type: str,
               job_id: str) -> None:
    """A job of a paused type whose step the sweeper has set aside."""
    register_counter(app, 1, [], name=job_type)
    store.set_paused(job_type, True)
    app.start(job_type, None, job_id=job_id)
    cont.pop_all()
    clock.advance(DISPATCH_S + 1)
    assert jobstate.sweep(store, cont).dispatched == 0  # held: not even read


def test_resuming_a_type_makes_its_jobs_due_now(app, cont, store, clock):
    hold_a_job(app, cont, store, clock, "later", "l1")
    assert store.pause_state("later") is True
    assert store.set_paused("later", False) == 1
    assert store.pause_state("later") is False and store.pause_state("never") is None
    # Resuming again wakes nothing and writes nothing: the jobs were not held.
    before = store.call("get_item", Key={"pk": {"S": "TYPE#later"}, "sk": {"S": "CONTROL"}},
                        ConsistentRead=True)["Item"]
    assert store.set_paused("later", False) == 0
    assert store.call("get_item", Key={"pk": {"S": "TYPE#later"}, "sk": {"S": "CONTROL"}},
                      ConsistentRead=True)["Item"] == before
    assert store.set_paused("never", False) == 0 and store.pause_state("never") is None
    assert jobstate.sweep(store, cont).dispatched == 1
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get("l1").status is JobStatus.SUCCEEDED


def test_a_resume_that_died_while_waking_is_finished_by_the_next(app, cont, store, clock,
                                                                 monkeypatch):
    hold_a_job(app, cont, store, clock, "woke", "w1")
    real = store.pauses._let_go

    def dies(job_type: str, ids: Any, *, seen: set[str]) -> int:
        raise jobstate.StoreUnavailable("throttled")

    monkeypatch.setattr(store.pauses, "_let_go", dies)
    with pytest.raises(jobstate.StoreUnavailable):
        store.set_paused("woke", False)
    assert store.pause_state("woke") is False  # resumed, but its jobs are still set aside
    monkeypatch.setattr(store.pauses, "_let_go", real)
    assert store.set_paused("woke", False) == 1  # the retried runbook step finishes it
    assert store.set_paused("woke", False) == 0  # and then it is a no-op again
    assert jobstate.sweep(store, cont).dispatched == 1


def test_a_pause_marks_a_job_whose_step_moved_it_since_the_pause_listed_it(app, cont, store,
                                                                           clock, monkeypatch):
    runs: list[tuple[int, int]] = []

    @app.job("napper", max_steps=10)
    def napper(ctx: jobstate.StepContext) -> Any:
        runs.append((ctx.step, 0))
        if ctx.step == 0:
            return ctx.sleep(300)
        return ctx.complete("woke")

    app.start("napper", None, job_id="n1")
    [first] = cont.pop_all()
    real = store.pauses._read

    def stale(ids: list[str]) -> Any:
        listed = list(real(ids))  # read while in flight (the ACTIVE bucket) ...
        deliver(app, first, clock)  # ... then its step puts it to sleep (the ASLEEP bucket)
        return iter(listed)

    monkeypatch.setattr(store.pauses, "_read", stale)
    store.set_paused("napper", True)
    monkeypatch.setattr(store.pauses, "_read", real)
    job = store.get("n1")
    assert (job.status, job.paused_by) == (JobStatus.WAITING, "napper")  # read again, marked
    clock.advance(301)
    assert jobstate.sweep(store, cont).dispatched == 0 and runs == [(0, 0)]
    store.set_paused("napper", False)
    jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get("n1").status is JobStatus.SUCCEEDED and runs == [(0, 0), (1, 0)]
