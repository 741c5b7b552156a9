"""Control-flow signals a step raises to end itself early.

They are BaseExceptions, so a step's own `except Exception` cannot swallow them: the
runtime must see them to write the right transition.
"""

from __future__ import annotations

from typing import Any


class Suspend(BaseException):
    """Raised by ctx.sleep/ctx.poll/ctx.spawn to end the step waiting (its state commits)."""

    def __init__(self, wait: Any) -> None:
        super().__init__(getattr(wait, "reason", "children"))
        self.wait = wait


class Deferred(BaseException):
    """The step cannot go on before `until_ms` and did nothing that must be kept.

    Its state is not committed, no attempt is counted, and the same step runs again at
    `until_ms`: raised by `ctx.once` when an at-most-once effect may still be in flight
    under an earlier owner (`App(reconcile_guard_s=...)`).
    """

    def __init__(self, until_ms: int, reason: str) -> None:
        super().__init__(reason)
        self.until_ms = until_ms
        self.reason = reason
