"""`ctx.has_time()`: the adaptive budget learns this invocation's batch durations."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

import jobstate
from jobstate.testing import Driver, StepOverran
from jobstate.timebudget import TimeBudget


def budget(clock: jobstate.ManualClock, timeout_ms: int, reserve_ms: int = 1_500
           ) -> TimeBudget:
    deadline = clock.now_ms() + timeout_ms
    return TimeBudget(lambda: deadline - clock.now_ms(), clock.now_ms, reserve_ms=reserve_ms)


def run(clock: jobstate.ManualClock, b: TimeBudget, durations: list[float]) -> list[float]:
    done = []
    for d in durations:
        if not b.has_time():
            break
        clock.advance(d)
        done.append(d)
    return done


def test_the_first_call_only_marks_the_start_and_says_yes() -> None:
    clock = jobstate.ManualClock()
    b = budget(clock, 60_000)
    assert b.has_time() and b.batches == 0 and b.expected_batch_ms() == 0.0


def test_it_stops_before_a_batch_like_the_ones_seen_would_overrun() -> None:
    clock = jobstate.ManualClock()
    b = budget(clock, 60_000)
    done = run(clock, b, [5.0] * 100)
    left = b.remaining_ms()
    # Eleven 5 s batches fit in 60 s - 1.5 s of reserve; a twelfth would not.
    assert len(done) == 11 and left >= b.reserve_ms
    assert left - b.reserve_ms <= b.expected_batch_ms()


def test_a_slow_batch_raises_the_estimate_at_once() -> None:
    clock = jobstate.ManualClock()
    b = budget(clock, 60_000)
    run(clock, b, [1.0] * 5)
    quick = b.expected_batch_ms()
    clock.advance(9.0)
    b.has_time()
    assert b.expected_batch_ms() >= 9_000 > quick


def test_an_explicit_estimate_overrides_what_was_learned() -> None:
    clock = jobstate.ManualClock()
    b = budget(clock, 10_000)
    assert b.has_time(estimate_ms=8_000)
    assert not b.has_time(estimate_ms=9_000)  # 10 s - 1.5 s reserve < 9 s


def test_fits_leaves_room_for_a_batch_and_the_reserve() -> None:
    clock = jobstate.ManualClock()
    b = budget(clock, 30_000)
    run(clock, b, [4.0, 4.0])
    assert b.fits(10_000)
    assert not b.fits(30_000 - 8_000 - 1_500 - 4_000 + 1)


@pytest.mark.parametrize("seed", range(20))
def test_never_killed_on_batches_with_variance(seed: int) -> None:
    # Batches of 2 s +- 0.7 s (lognormal): the loop always stops with the reserve intact.
    rng = random.Random(seed)
    clock = jobstate.ManualClock()
    b = budget(clock, 60_000)
    draws = [rng.lognormvariate(0.64, 0.34) for _ in range(200)]
    run(clock, b, draws)
    assert b.remaining_ms() >= b.reserve_ms
    assert b.remaining_ms() < b.reserve_ms + 12_000  # and it used most of the time


# -- the reserve trap (issue 20) --------------------------------------------------------------


@pytest.mark.parametrize("timeout_ms", [1_000, 1_500])
def test_a_timeout_at_or_below_the_reserve_fails_the_first_step_naming_both(
        app: jobstate.App, driver: Callable[..., Driver], timeout_ms: int) -> None:
    ran: list[int] = []

    @app.job("no-room")
    def no_room(ctx: jobstate.StepContext) -> object:
        while ctx.has_time():
            ran.append(ctx.step)
        return None

    job_id = app.start("no-room", {})
    driver(timeout_ms=timeout_ms).run()
    view = app.store.get(job_id)
    assert view.status is jobstate.JobStatus.FAILED and view.step == 0 and ran == []
    assert view.error_type == "NoTimeForWork"
    assert "reserve_ms (1500 ms)" in (view.error or "")
    assert f"({timeout_ms} ms, the function timeout)" in (view.error or "")


def test_a_timeout_just_above_the_reserve_runs(app: jobstate.App,
                                              driver: Callable[..., Driver]) -> None:
    @app.job("some-room")
    def some_room(ctx: jobstate.StepContext) -> object:
        return ctx.complete(ctx.has_time(estimate_ms=0))

    job_id = app.start("some-room", {})
    driver(timeout_ms=1_501).run()
    view = app.store.get(job_id)
    assert view.status is jobstate.JobStatus.SUCCEEDED and view.result is True


def test_the_driver_flags_a_step_that_overruns_its_invocation(
        app: jobstate.App, driver: Callable[..., Driver], clock: jobstate.ManualClock) -> None:
    @app.job("slow")
    def slow(ctx: jobstate.StepContext) -> object:
        clock.advance(200)  # a 200 s batch in a 60 s invocation
        return ctx.complete("done")

    job_id = app.start("slow", {})
    with pytest.raises(StepOverran, match="ran past its invocation's timeout"):
        driver(timeout_ms=60_000).run()
    # Killed like Lambda kills: nothing after the deadline was written.
    assert app.store.get(job_id).status is not jobstate.JobStatus.SUCCEEDED


def test_the_driver_can_kill_overruns_and_go_on(
        app: jobstate.App, driver: Callable[..., Driver], clock: jobstate.ManualClock) -> None:
    calls: list[int] = []

    @app.job("slow-once")
    def slow_once(ctx: jobstate.StepContext) -> object:
        calls.append(ctx.step)
        if len(calls) == 1:
            clock.advance(200)
        return ctx.complete("done")

    job_id = app.start("slow-once", {})
    d = driver(timeout_ms=60_000, on_overrun="kill")
    d.run_until_done([job_id])
    assert d.stats.overruns == 1 and len(calls) == 2
    assert app.store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
