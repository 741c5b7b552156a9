"""The sweeper (issue 3, item 5): lost continuations, expired leases, finished waits,
bounded runs drained with next_token, concurrent sweepers, runaway guards."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from conftest import RequestLog, drain

import jobstate
from jobstate import JobStatus
from jobstate.testing import Driver, FakeLambdaContext

pytestmark = pytest.mark.integration

DISPATCH_S = 120  # JobStore's default dispatch_timeout


def register_steps(app: jobstate.App, k: int = 2, name: str = "steps",
                   runs: list[tuple[str, int]] | None = None, **opts: Any) -> None:
    @app.job(name, max_steps=50, **opts)
    def steps(ctx: jobstate.StepContext) -> Any:
        if runs is not None:
            runs.append((ctx.job_id, ctx.step))
        n = ctx.cursor.get("n", 0)
        if n >= k:
            return ctx.complete(n)
        ctx.cursor["n"] = n + 1
        return None


def dispatched_ids(cont: jobstate.InMemoryContinuation) -> list[str]:
    return [e["jobstate"]["job_id"] for e in cont.pop_all()]


def test_lost_continuation_is_redispatched_after_the_dispatch_timeout(app, cont, store,
                                                                      clock):
    register_steps(app)
    jid = app.start("steps", None, job_id="lost")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    assert cont.pop_all()  # the continuation for step 1 ... is lost
    assert store.get(jid).step == 1

    clock.advance(DISPATCH_S - 1)
    assert jobstate.sweep(store, cont).dispatched == 0  # not lost yet: may be in flight
    clock.advance(2)
    report = jobstate.sweep(store, cont)
    assert (report.dispatched, report.lost_continuations) == (1, 1)
    [event] = cont.pop_all()
    assert event["jobstate"]["step"] == 1  # re-dispatched exactly by step number
    app.handler(event, FakeLambdaContext(clock))
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED


def test_never_started_job_is_dispatched(app, cont, store, clock):
    register_steps(app)
    jid, created = app.create("steps", None, job_id="unstarted")
    assert created and cont.pop_all() == []
    clock.advance(DISPATCH_S + 1)
    report = jobstate.sweep(store, cont)
    assert (report.dispatched, report.not_started) == (1, 1)
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED


def test_expired_lease_of_a_lost_container_is_redispatched(app, cont, store, clock):
    runs: list[tuple[str, int]] = []
    register_steps(app, runs=runs)
    jid = app.start("steps", None, job_id="dead")
    d = Driver(app, cont, clock, timeout_ms=60_000)
    assert d.deliver(cont.pop_all()[0], crash_at="before_commit") is None
    job = store.get(jid)
    assert job.lease_owner is not None and job.step == 0

    # While the dead container's lease could still be live, the sweeper leaves it alone.
    clock.set(job.lease_expires_at - 1)
    assert jobstate.sweep(store, cont).dispatched == 0
    clock.set(job.lease_expires_at + 1)
    report = jobstate.sweep(store, cont)
    assert (report.dispatched, report.expired_leases) == (1, 1)
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED
    assert job.takeovers == 1
    assert runs == [(jid, 0), (jid, 0), (jid, 1), (jid, 2)]
    assert "takeover" in [h.event for h in store.history(jid)]


def test_waits_resume_when_due_and_not_before(app, cont, store, clock):
    @app.job("nap", max_steps=5)
    def nap(ctx: jobstate.StepContext) -> Any:
        if not ctx.cursor.get("slept"):
            ctx.cursor["slept"] = True
            ctx.sleep(ctx.input["s"])
        return ctx.complete(ctx.input["s"])

    t0 = clock.now_ms()
    for s in (300, 600, 900):
        app.start("nap", {"s": s}, job_id=f"nap-{s}")
    drain(app, cont, FakeLambdaContext(clock))
    assert {j.status for j in store.iter_jobs("nap")} == {JobStatus.WAITING}

    seen: list[list[str]] = []
    for at in (299, 301, 599, 601, 899, 901):
        clock.set(t0 + at * 1000)
        jobstate.sweep(store, cont)
        events = cont.pop_all()
        seen.append(sorted(e["jobstate"]["job_id"] for e in events))
        for e in events:
            assert app.handler(e, FakeLambdaContext(clock))["outcome"] == "completed"
    assert seen == [[], ["nap-300"], [], ["nap-600"], [], ["nap-900"]]
    assert {j.result for j in store.iter_jobs("nap")} == {300, 600, 900}


def test_backlog_larger_than_one_run_drains_over_several_runs(app, cont, store, clock):
    register_steps(app, k=0)
    ids = [app.create("steps", {"i": i}, job_id=f"b-{i:02d}")[0] for i in range(23)]
    clock.advance(DISPATCH_S + 1)
    log = RequestLog(store)

    runs, token = [], None
    while True:
        report = jobstate.sweep(store, cont, limit=5, next_token=token)
        assert report.scanned <= 5
        runs.append(report.dispatched)
        token = report.next_token
        if token is None:
            break
    assert len(runs) >= 5 and sum(runs) == 23
    assert max(runs) <= 5
    sent = Counter(dispatched_ids(cont))
    assert sorted(sent) == ids and set(sent.values()) == {1}  # each exactly once
    assert "Scan" not in log.ops
    assert set(log.ops) <= {"Query", "BatchGetItem", "GetItem", "UpdateItem"}

    # A fresh run over the same (already handled) backlog dispatches nothing.
    assert jobstate.sweep(store, cont).dispatched == 0
    for jid in ids:
        app.handler({"jobstate": {"job_id": jid, "step": 0, "job_type": "steps"}},
                    FakeLambdaContext(clock))
    assert {store.get(j).status for j in ids} == {JobStatus.SUCCEEDED}


def test_bad_next_token_is_rejected(store, cont):
    with pytest.raises(jobstate.InvalidInput, match="next_token"):
        jobstate.sweep(store, cont, next_token="garbage!")
    with pytest.raises(jobstate.InvalidInput, match="limit"):
        jobstate.sweep(store, cont, limit=0)


def test_two_sweeps_over_the_same_due_set_dispatch_each_job_once(app, cont, store, clock):
    register_steps(app, k=0)
    ids = [app.create("steps", None, job_id=f"twice-{i}")[0] for i in range(8)]
    clock.advance(DISPATCH_S + 1)
    first = jobstate.sweep(store, cont)
    second = jobstate.sweep(store, cont)  # same time, same state
    assert (first.dispatched, second.dispatched) == (8, 0)
    assert sorted(dispatched_ids(cont)) == sorted(ids)


def test_interleaved_concurrent_sweepers_dispatch_each_job_once(app, cont, store, clock,
                                                                 monkeypatch):
    register_steps(app, k=0)
    ids = [app.create("steps", None, job_id=f"race-{i}")[0] for i in range(12)]
    clock.advance(DISPATCH_S + 1)
    other_cont = jobstate.InMemoryContinuation()
    other_reports: list[jobstate.SweepReport] = []
    real_call = store.call
    state = {"inside": False}

    def interleaving_call(operation: str, **kw: Any) -> dict[str, Any]:
        resp = real_call(operation, **kw)
        if operation == "batch_get_item" and not state["inside"]:
            # Sweeper A has read the jobs in flight; sweeper B runs entirely before A acts.
            state["inside"] = True
            other_reports.append(jobstate.sweep(store, other_cont))
            state["inside"] = False
        return resp

    monkeypatch.setattr(store, "call", interleaving_call)
    mine = jobstate.sweep(store, cont)
    monkeypatch.setattr(store, "call", real_call)

    sent = Counter(dispatched_ids(cont) + dispatched_ids(other_cont))
    assert sorted(sent) == sorted(ids)
    assert set(sent.values()) == {1}
    assert mine.dispatched + sum(r.dispatched for r in other_reports) == 12
    assert mine.raced >= 1  # A's stale reads lost the race and did nothing


def test_duplicate_dispatch_by_sweepers_is_harmless(app, cont, store, clock):
    runs: list[tuple[str, int]] = []
    register_steps(app, k=1, runs=runs)
    jid = app.start("steps", None, job_id="dupe")
    event = cont.pop_all()[0]
    # Even if two sweepers both dispatched (e.g. a backend without the bump), claims fence.
    reports = [app.handler(event, FakeLambdaContext(clock)) for _ in range(3)]
    assert [r["outcome"] for r in reports] == ["committed", "duplicate", "duplicate"]
    drain(app, cont, FakeLambdaContext(clock))
    assert runs == [(jid, 0), (jid, 1)]


def test_job_past_its_deadline_is_failed_by_the_sweeper(app, cont, store, clock):
    @app.job("slow", max_steps=50, deadline=600)
    def slow(ctx: jobstate.StepContext) -> Any:
        ctx.sleep(3600)
        return None

    jid = app.start("slow", None, job_id="late")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.WAITING
    clock.advance(3601)
    report = jobstate.sweep(store, cont)
    assert report.failed_guards == 1 and report.dispatched == 0
    assert cont.pop_all() == []
    job = store.get(jid)
    assert job.status is JobStatus.FAILED
    assert "deadline" in (job.error or "") and "resume" in (job.error or "")
    assert "failed" in [h.event for h in store.history(jid)]
    # Resuming gives it a fresh deadline window.
    resumed = store.resume(jid)
    assert resumed.status is JobStatus.RUNNING
    assert (resumed.deadline_at or 0) > clock.now_ms()


def test_lost_continuation_past_deadline_is_failed_not_redispatched(app, cont, store, clock):
    register_steps(app, k=5, deadline=60)
    jid = app.start("steps", None, job_id="late2")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    cont.pop_all()  # lost
    clock.advance(DISPATCH_S + 1)
    report = jobstate.sweep(store, cont)
    assert (report.failed_guards, report.dispatched) == (1, 0)
    assert store.get(jid).status is JobStatus.FAILED


def test_max_steps_guard_fails_a_runaway_chain(app, cont, store, clock):
    @app.job("forever", max_steps=4)
    def forever(ctx: jobstate.StepContext) -> Any:
        return None

    jid = app.start("forever", None, job_id="forever")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.FAILED
    assert "max_steps=4" in (job.error or "")
    clock.advance(3600)
    assert jobstate.sweep(store, cont).dispatched == 0


def test_cancelled_job_is_not_swept(app, cont, store, clock):
    register_steps(app)
    jid = app.start("steps", None, job_id="cx")
    cont.pop_all()
    store.cancel(jid)
    clock.advance(3600)
    assert jobstate.sweep(store, cont).scanned == 0
    assert cont.pop_all() == []


def test_a_parent_waiting_past_its_deadline_fails_and_its_children_are_cancelled(
        app, cont, store, clock):
    @app.job("parent", deadline=600)
    def parent(ctx: jobstate.StepContext) -> Any:
        if not ctx.cursor.get("spawned"):
            ctx.cursor["spawned"] = True
            ctx.spawn("napper", [1, 2])
            return None
        return ctx.complete("joined")

    @app.job("napper", max_steps=1000)
    def napper(ctx: jobstate.StepContext) -> Any:
        ctx.sleep(3600)  # children that take far longer than the parent may wait

    jid = app.start("parent", None, job_id="late-parent")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.WAITING
    clock.advance(300)
    jobstate.sweep(store, cont)
    assert store.get(jid).status is JobStatus.WAITING  # not before its deadline
    clock.advance(400)
    report = jobstate.sweep(store, cont)
    job = store.get(jid)
    assert job.status is JobStatus.FAILED and "deadline" in (job.error or "")
    assert report.failed_guards == 1
    kids = [store.get(f"{jid}.s0.{i}") for i in range(2)]
    assert [k.status for k in kids] == [JobStatus.CANCELLED] * 2


def test_a_sweeper_that_dies_while_failing_a_late_parent_leaves_it_for_the_next_sweep(
        app, cont, store, clock):
    """Crash point: the late parent's children are cancelled, the parent is not failed yet.
    The parent is still due, so the next sweep (after the dead sweeper's lease) fails it;
    no child runs on, and the parent's pending count never goes below zero."""
    from jobstate import faults

    @app.job("parent", deadline=600)
    def parent(ctx: jobstate.StepContext) -> Any:
        if not ctx.cursor.get("spawned"):
            ctx.cursor["spawned"] = True
            ctx.spawn("napper", [1, 2, 3])
            return None
        return ctx.complete("joined")

    @app.job("napper", max_steps=1000)
    def napper(ctx: jobstate.StepContext) -> Any:
        ctx.sleep(3600)

    class SweeperDied(BaseException):
        pass

    assert "sweeper_children_cancelled" in faults.SWEEPER_POINTS  # a named crash point

    def die(name: str, info: dict[str, Any]) -> None:
        if name == "sweeper_children_cancelled":
            raise SweeperDied

    jid = app.start("parent", None, job_id="orphaning")
    drain(app, cont, FakeLambdaContext(clock))
    clock.advance(700)
    with faults.installed(die), pytest.raises(SweeperDied):
        jobstate.sweep(store, cont)
    kids = [store.get(f"{jid}.s0.{i}") for i in range(3)]
    assert [k.status for k in kids] == [JobStatus.CANCELLED] * 3  # none runs on
    late = store.get(jid)
    assert late.status is not JobStatus.FAILED and (late.pending_children or 0) == 0
    # Still in flight, held by the dead sweeper's lease: the next sweep looks at it again.
    assert late.lease_owner is not None and late.due_at == late.lease_expires_at
    cont.pop_all()
    clock.advance(DISPATCH_S + 1)  # the dead sweeper's lease has run out; the job is due
    report = jobstate.sweep(store, cont)
    job = store.get(jid)
    assert job.status is JobStatus.FAILED and "deadline" in (job.error or "")
    assert report.failed_guards == 1 and (job.pending_children or 0) == 0
    assert [c.status for c in jobstate.fanout.children(store, jid)] == [
        JobStatus.CANCELLED] * 3
    clock.advance(3600)
    assert jobstate.sweep(store, cont).dispatched == 0  # settled: nothing runs again


def test_a_parent_waiting_on_its_children_is_not_sent_until_the_last_joins(
    app: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
    store: jobstate.JobStore,
) -> None:
    # A regression: the sweeper counted a waiting parent and sent it anyway, every sweep;
    # each send was refused ("waiting for children") and grew its re-dispatch backoff, so
    # when the last child's dispatch of the parent was lost the parent waited for hours.
    @app.job("par")
    def par(ctx: jobstate.StepContext) -> Any:
        if not ctx.cursor.get("spawned"):
            ctx.cursor["spawned"] = True
            ctx.spawn("kid", [1, 2])
            return None
        return ctx.complete("joined")

    @app.job("kid")
    def kid(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.input)

    jid = app.start("par", None, job_id="waits")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    kids = cont.pop_all()  # the children's start events, held back
    for _ in range(3):
        clock.advance(DISPATCH_S + 1)
        report = jobstate.sweep(store, cont)
        assert report.waiting_children == 1
        sent = [e["jobstate"]["job_id"] for e in cont.pop_all()]
        assert jid not in sent  # (its children are, backing off: nobody runs them here)
    for event in kids:
        app.handler(event, FakeLambdaContext(clock))
    cont.pop_all()  # the last child's dispatch of the parent is lost
    clock.advance(DISPATCH_S + 1)
    assert [e["jobstate"]["job_id"] for e in jobstate.sweep(store, cont) and cont.pop_all()
            ] == [jid]  # at the first sweep after the dispatch timeout, not hours later
