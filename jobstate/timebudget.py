"""The adaptive time budget behind `ctx.has_time()`.

Each call marks a batch boundary; the time between calls is a batch's duration. The next
batch is expected to take at most max(longest seen, mean + 3 sd) of this invocation's
batches (mean and sd over all of them, by Welford's method: steadier than a moving
average, which under-estimated heavy-tailed batches), so a loop `while ctx.has_time():
do_batch()` uses nearly the whole timeout and still leaves `reserve_ms` for the commit
and the continuation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

NO_ROOM = "NoTimeForWork"  # error_type of a job whose function timeout is <= reserve_ms


def no_room(timeout_ms: int, reserve_ms: int) -> str | None:
    """Why an invocation of `timeout_ms` can do no work, or None if it can.

    `has_time()` keeps `reserve_ms` for the commit and the continuation: an invocation
    that has no more than that is never given time, and a chain of such steps would commit
    nothing forever (issue 20: 339 empty steps in 600 s).
    """
    if timeout_ms > reserve_ms:
        return None
    return (f"the invocation's time ({timeout_ms} ms, the function timeout) is at or below "
            f"reserve_ms ({reserve_ms} ms), so ctx.has_time() can never be true and no step "
            "can do work: raise the function's Timeout well above reserve_ms, or pass a "
            "smaller App(reserve_ms=...)")


class TimeBudget:
    def __init__(
        self,
        remaining_ms: Callable[[], int],
        now_ms: Callable[[], int],
        *,
        reserve_ms: int = 1_500,
    ) -> None:
        self._remaining = remaining_ms
        self._now = now_ms
        self.reserve_ms = reserve_ms
        self._last: int | None = None
        self._mean = 0.0
        self._m2 = 0.0  # Welford's running sum of squared deviations
        self._max = 0
        self.batches = 0

    def remaining_ms(self) -> int:
        return int(self._remaining())

    def expected_batch_ms(self) -> float:
        if self.batches == 0:
            return 0.0
        sd = math.sqrt(self._m2 / self.batches) if self.batches > 1 else 0.0
        return max(float(self._max), self._mean + 3.0 * sd)

    def observe(self) -> None:
        now = self._now()
        if self._last is not None:
            d = max(0, now - self._last)
            self.batches += 1
            delta = d - self._mean
            self._mean += delta / self.batches
            self._m2 += delta * (d - self._mean)
            self._max = max(self._max, d)
        self._last = now

    def has_time(self, estimate_ms: float | None = None) -> bool:
        self.observe()
        need = estimate_ms if estimate_ms is not None else self.expected_batch_ms()
        return self.remaining_ms() - self.reserve_ms > need

    def fits(self, wait_ms: float) -> bool:
        """Whether an in-process wait of `wait_ms` leaves room for a batch and the commit."""
        return self.remaining_ms() - self.reserve_ms - self.expected_batch_ms() > wait_ms
