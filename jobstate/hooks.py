"""Effect hooks (issue 19): observers called on each effect's start, success, failure and
replay. A hook observes; it never changes the job: whatever it raises is logged (its type
only: its text may quote anything) and dropped, as for the App's step hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from . import observe
from .errors import InvalidInput

EffectHook = Callable[[str, dict[str, Any]], None]
STARTED, SUCCEEDED, FAILED, REPLAYED = "started", "succeeded", "failed", "replayed"
EVENTS = (STARTED, SUCCEEDED, FAILED, REPLAYED)


def validate(hooks: Sequence[EffectHook] | None) -> list[EffectHook]:
    """The hooks as a list, each checked callable (at registration, not at the call)."""
    out = list(hooks or [])
    for hook in out:
        if not callable(hook):
            raise InvalidInput(f"effect_hooks must be callables hook(event, info), got "
                               f"{type(hook).__name__}")
    return out


def notify(hooks: Sequence[EffectHook], event: str, info: dict[str, Any]) -> None:
    """Call each hook with `event` and a copy of `info`; a raising hook is logged only."""
    for hook in hooks:
        try:
            hook(event, dict(info))
        except Exception as exc:
            name = getattr(hook, "__qualname__", None) or type(hook).__name__
            observe.event("hook_failed", logging.WARNING, job_id=info.get("job_id"),
                          job_type=info.get("job_type"), step=info.get("step"),
                          detail=f"effect hook {name} raised {type(exc).__name__} on "
                                 f"{event!r} of effect {info.get('key')!r}")
