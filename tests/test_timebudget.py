"""`ctx.has_time()`: the adaptive budget learns this invocation's batch durations."""

from __future__ import annotations

import random

import pytest

import jobstate
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
