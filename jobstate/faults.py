"""Named crash points of the step protocol, for fault-injection tests and chaos runs.

The runtime calls `point(name)` at each place a real invocation can die. Production
code never installs a hook, so each call is one global lookup. Tests install a hook
that raises a BaseException (an in-process "kill") or SIGKILLs the worker process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

POINTS = (
    "before_claim",
    "after_claim",
    "effect_started",  # effect recorded STARTED, external call not made yet
    "effect_called",  # external call made, DONE not recorded yet
    "before_commit",
    "after_commit",  # committed, continuation not sent yet
    "after_dispatch",
)
# Crash points of the sweeper's own writes (not chosen by chaos: the sweeper is no step).
SWEEPER_POINTS = (
    "sweeper_children_cancelled",  # a late parent's children cancelled, parent not failed
)

# Crash points of a callback answer's sender (App/JobStore.complete_callback and the rest).
CALLBACK_POINTS = (
    "callback_answered",  # the answer recorded, the job not woken
    "callback_woken",  # the job woken, the answer not noted in its history
)

Hook = Callable[[str, dict[str, Any]], None]
_hook: Hook | None = None


def point(name: str, **info: Any) -> None:
    if _hook is not None:
        _hook(name, info)


def install(hook: Hook | None) -> Hook | None:
    """Install `hook` (None removes it); returns the previous one."""
    global _hook
    prev, _hook = _hook, hook
    return prev


@contextmanager
def installed(hook: Hook) -> Iterator[None]:
    prev = install(hook)
    try:
        yield
    finally:
        install(prev)
