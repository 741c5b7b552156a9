"""Completion policies and fail-fast (issue 19): a parent resumes as soon as its spawn's
outcome is decided; children not started never start, running ones stop at their next
step; the decision is taken once, by one child's join, under duplicates and crashes.

Everything is read back from the store's own items (never from counters kept here).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from conftest import drain

import jobstate
from jobstate import CompletionPolicy, JobStatus, completion, joins
from jobstate.completion import Thresholds
from jobstate.testing import Driver, FakeLambdaContext

pytestmark = pytest.mark.integration

OK, FAIL = completion.MIN_SUCCESSFUL_REACHED, completion.FAILURE_TOLERANCE_EXCEEDED


def decided_events(caplog: pytest.LogCaptureFixture, parent: str) -> list[dict[str, Any]]:
    out = []
    for rec in caplog.records:
        try:
            line = json.loads(rec.getMessage())
        except ValueError:
            continue
        if line.get("jobstate") == "completion_decided" and line.get("job_id") == parent:
            out.append(line)
    return out


def register(app: jobstate.App, *, policy: CompletionPolicy | None = None,
             on_child_failure: str = "fail", max_concurrency: int | None = None,
             kid_steps: int = 1, fails: tuple[int, ...] = ()) -> dict[str, Any]:
    """A parent spawning `kid` children (input i fails when i in `fails`) and recording
    what it sees after the join."""
    seen: dict[str, Any] = {}

    @app.job("par")
    def par(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn("kid", ctx.input, max_concurrency=max_concurrency,
                      on_child_failure=on_child_failure, completion=policy)
        seen["reason"] = ctx.completion_reason
        seen["children"] = [(c.index, c.status.value) for c in ctx.children()]
        return ctx.complete(seen["reason"])

    @app.job("kid", max_attempts=1)
    def kid(ctx: jobstate.StepContext) -> Any:
        if ctx.step + 1 < kid_steps:
            return None
        if ctx.input in fails:
            raise RuntimeError(f"child {ctx.input} fails")
        return ctx.complete(ctx.input)

    return seen


def kids(store: jobstate.JobStore, parent: str, n: int) -> list[jobstate.JobView]:
    return [store.get(f"{parent}.s0.{i}") for i in range(n)]


# -- the rules -------------------------------------------------------------------------------


def test_thresholds_bound_failures_by_count_percentage_and_reachability() -> None:
    t = completion.thresholds
    assert t(None, 5, "fail") == Thresholds(None, 0)  # fail-fast
    assert t(None, 5, "continue") == Thresholds(None, None)  # wait for all
    assert t(CompletionPolicy(min_successful=2), 5, "continue") == Thresholds(2, 3)
    assert t(CompletionPolicy(tolerated_failure_count=4,
                              tolerated_failure_percentage=25), 10, "fail") == Thresholds(None, 2)
    assert t(CompletionPolicy(tolerated_failure_percentage=100), 3, "fail") == Thresholds(None, 3)
    assert completion.verdict(0, 3, Thresholds(None, 2)) == FAIL
    assert completion.verdict(2, 0, Thresholds(2, 3)) == OK
    assert completion.verdict(1, 2, Thresholds(2, 3)) is None
    assert completion.final_reason(1, 2, Thresholds(None, 2)) == completion.ALL_COMPLETED


@pytest.mark.parametrize("kw, words", [
    ({"min_successful": 0}, "min_successful must be an int >= 1"),
    ({"tolerated_failure_count": -1}, "tolerated_failure_count must be an int >= 0"),
    ({"tolerated_failure_percentage": 101}, "from 0 to 100"),
    ({"min_successful": True}, "min_successful"),
])
def test_a_bad_policy_is_refused_when_it_is_made(kw: dict[str, Any], words: str) -> None:
    with pytest.raises(jobstate.InvalidInput, match=words):
        CompletionPolicy(**kw)


def test_an_unreachable_min_successful_fails_the_step_before_any_child_is_written(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, store: jobstate.JobStore,
        clock: jobstate.ManualClock) -> None:
    register(app, policy=CompletionPolicy(min_successful=3))
    app.start("par", [0, 1], job_id="p")
    report = app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    assert report["outcome"] == "failed"
    assert "min_successful=3 but only 2 children" in store.get("p").error
    assert store.get_job_item("p.s0.0") is None


# -- deciding early --------------------------------------------------------------------------


def test_min_successful_resumes_the_parent_and_queued_children_never_start(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, store: jobstate.JobStore,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobstate")
    seen = register(app, policy=CompletionPolicy(min_successful=2),
                    on_child_failure="continue", max_concurrency=2)
    app.start("par", list(range(6)), job_id="p")
    drain(app, cont)
    parent = store.get("p")
    assert parent.status is JobStatus.SUCCEEDED and parent.result == OK
    assert seen["reason"] == OK and parent.pending_children == 0
    statuses = [k.status for k in kids(store, "p", 6)]
    assert statuses.count(JobStatus.SUCCEEDED) >= 2
    # Children 0 and 1 ran; child 2 was released by child 0's join (before the decision);
    # 3, 4, 5 were queued when child 1 decided: never claimed, now CANCELLED.
    for k in kids(store, "p", 6)[3:]:
        assert k.status is JobStatus.CANCELLED and k.invocations == 0
    assert seen["children"] == [(i, s.value) for i, s in enumerate(statuses)]
    assert len(decided_events(caplog, "p")) == 1


def test_running_children_are_cancelled_at_their_next_step(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, store: jobstate.JobStore,
        clock: jobstate.ManualClock) -> None:
    seen = register(app, policy=CompletionPolicy(min_successful=1),
                    on_child_failure="continue", kid_steps=3)
    app.start("par", [0, 1, 2], job_id="p")
    ctx = FakeLambdaContext(clock)
    app.handler(cont.pop_all()[0], ctx)
    first = {e["jobstate"]["job_id"]: e for e in cont.pop_all()}
    app.handler(first["p.s0.1"], ctx)  # child 1 is at step 1 now, between steps
    later = cont.pop_all()
    app.handler(first["p.s0.0"], ctx)
    for _ in range(2):  # child 0 runs its three steps and decides
        app.handler(cont.pop_all()[0], ctx)
    parent_event = cont.pop_all()
    assert [e["jobstate"]["job_id"] for e in parent_event] == ["p"]
    app.handler(parent_event[0], ctx)  # the parent resumes and cancels the rest
    assert store.get("p").status is JobStatus.SUCCEEDED
    report = app.handler(later[0], ctx)  # child 1's next step: refused
    assert report["outcome"] == "finished"
    one, two = store.get("p.s0.1"), store.get("p.s0.2")
    assert one.status is JobStatus.CANCELLED and one.step == 1
    assert two.status is JobStatus.CANCELLED and two.invocations == 0
    assert seen["children"] == [(0, "SUCCEEDED"), (1, "CANCELLED"), (2, "CANCELLED")]


def test_fail_fast_no_queued_sibling_starts_after_the_first_failure(
        app: jobstate.App, cont: jobstate.InMemoryContinuation,
        store: jobstate.JobStore) -> None:
    register(app, max_concurrency=1, fails=(1,))
    app.start("par", list(range(5)), job_id="p")
    drain(app, cont)
    parent = store.get("p")
    assert parent.status is JobStatus.FAILED and parent.error_type == "ChildFailed"
    assert FAIL in (parent.error or "")
    k = kids(store, "p", 5)
    assert [x.status for x in k[:2]] == [JobStatus.SUCCEEDED, JobStatus.FAILED]
    assert all(x.status is JobStatus.CANCELLED and x.invocations == 0 for x in k[2:])


@pytest.mark.parametrize("fails, status, reason", [
    ((0,), JobStatus.SUCCEEDED, completion.ALL_COMPLETED),
    ((0, 2), JobStatus.FAILED, FAIL),
])
def test_failures_within_tolerance_do_not_fail_the_parent(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, store: jobstate.JobStore,
        fails: tuple[int, ...], status: JobStatus, reason: str) -> None:
    register(app, policy=CompletionPolicy(tolerated_failure_percentage=25),  # 1 of 4
             max_concurrency=1, fails=fails)
    app.start("par", list(range(4)), job_id="p")
    drain(app, cont)
    parent = store.get("p")
    assert parent.status is status
    assert (parent.result if status is JobStatus.SUCCEEDED else parent.error or "").count(
        reason) == 1


def test_two_children_finishing_at_once_decide_once(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, store: jobstate.JobStore,
        clock: jobstate.ManualClock, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="jobstate")
    register(app, fails=(0, 1))
    app.start("par", [0, 1], job_id="p")
    ctx = FakeLambdaContext(clock)
    app.handler(cont.pop_all()[0], ctx)
    events = {e["jobstate"]["job_id"]: e for e in cont.pop_all()}
    original = joins.Join.parent_for
    calls: list[str] = []

    def interleaved(self: joins.Join, old: Any) -> Any:
        # Child 0 saw the parent undecided; before it writes, child 1 finishes and decides.
        calls.append(self.job.job_id)
        if len(calls) == 1:
            app.handler(events["p.s0.1"], ctx)
        return original(self, old)

    monkeypatch.setattr(joins.Join, "parent_for", interleaved)
    app.handler(events["p.s0.0"], ctx)
    assert decided_events(caplog, "p") and len(decided_events(caplog, "p")) == 1
    raw = store.get_job_item("p")
    assert raw is not None and raw.verdict == FAIL and raw.pending == 0
    assert raw.children_failed == -1  # counted by the deciding join only
    monkeypatch.undo()
    drain(app, cont)
    parent = store.get("p")
    assert parent.status is JobStatus.FAILED and "2 of 2 children" in (parent.error or "")


# -- under chaos -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_policies_hold_under_duplicates_crashes_and_lost_events(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, store: jobstate.JobStore,
        clock: jobstate.ManualClock, seed: int) -> None:
    seen = register(app, policy=CompletionPolicy(min_successful=3), max_concurrency=2,
                    on_child_failure="continue", kid_steps=2, fails=(0, 3, 6))
    app.start("par", list(range(9)), job_id="p")
    d = Driver(app, cont, clock, seed=seed, duplicates=0.2, crashes=0.1, lost=0.05)
    d.run_until_done(["p"], calm_after=30)
    d.run_until_done(calm_after=0)  # the cancelled children settle too
    parent = store.get("p")
    assert parent.status is JobStatus.SUCCEEDED and parent.result == OK
    k = kids(store, "p", 9)
    assert sum(x.status is JobStatus.SUCCEEDED for x in k) >= 3
    assert all(x.status.terminal for x in k)
    # Once decided, nothing more was counted or released: of 9 children with 2 at a time,
    # at most 3 successes + 3 failures + 2 in flight ran.
    assert sum(x.invocations > 0 for x in k) <= 8
    assert seen["reason"] == OK and store.get_job_item("p").pending == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", [4, 5])
def test_fail_fast_holds_under_chaos(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                                     store: jobstate.JobStore, clock: jobstate.ManualClock,
                                     seed: int) -> None:
    register(app, max_concurrency=1, kid_steps=2, fails=(2,))
    app.start("par", list(range(6)), job_id="p")
    d = Driver(app, cont, clock, seed=seed, duplicates=0.2, crashes=0.1, lost=0.05)
    d.run_until_done(calm_after=30)
    assert store.get("p").status is JobStatus.FAILED
    k = kids(store, "p", 6)
    assert [x.status for x in k[:3]] == [JobStatus.SUCCEEDED] * 2 + [JobStatus.FAILED]
    assert all(x.status is JobStatus.CANCELLED and x.invocations == 0 for x in k[3:])
