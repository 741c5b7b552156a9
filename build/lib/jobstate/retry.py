"""Per-job retry policy, composed from tenacity's wait strategies.

Retries are scheduled through the job record (`not_before`/`due_at`), never by raising
into Lambda's own async retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import tenacity
from tenacity.wait import wait_base

from .errors import (
    EffectOutcomeUnknown,
    InvalidInput,
    InvalidStepResult,
    StateNotSerializable,
    StateTooLarge,
    TokensUnreadable,
)

PERMANENT: tuple[type[BaseException], ...] = (
    InvalidInput, StateNotSerializable, StateTooLarge, InvalidStepResult,
    EffectOutcomeUnknown, TokensUnreadable,
)
"""Errors a retry cannot fix: the job fails at once with the message."""


def _default_wait() -> wait_base:
    # Composed, not wait_exponential_jitter: its arguments changed across tenacity 8-9.
    return tenacity.wait_exponential(multiplier=2, max=300) + tenacity.wait_random(0, 1)


def tenacity_delay_ms(strategy: wait_base, attempt: int) -> int:
    """The delay a tenacity wait strategy gives after `attempt` attempts, in ms."""
    state = tenacity.RetryCallState(retry_object=cast(Any, None), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return int(max(0.0, float(strategy(state))) * 1000)


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is retried.

    `wait` is any tenacity wait strategy (`wait_exponential(multiplier=2) +
    wait_random(0, 1)`, `wait_fixed(5)`, ...); `retry_on` limits which exceptions are retried.
    """

    max_attempts: int = 3
    wait: wait_base = field(default_factory=_default_wait)
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise InvalidInput(f"max_attempts must be a positive int, got {self.max_attempts!r}")

    def delay_ms(self, attempt: int) -> int:
        """Backoff before attempt `attempt + 1`, from the tenacity strategy."""
        return tenacity_delay_ms(self.wait, attempt)

    def next_delay_ms(self, exc: BaseException, attempt: int) -> int | None:
        """None if `exc` after `attempt` attempts is final; else the backoff in ms."""
        if isinstance(exc, PERMANENT) or not isinstance(exc, self.retry_on):
            return None
        if attempt >= self.max_attempts:
            return None
        return self.delay_ms(attempt)
