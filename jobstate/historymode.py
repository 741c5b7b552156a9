"""How much of a job's steps its history keeps: `@app.job(..., history=MODE)`.

- "steps" (the default): every step. Each step's record rides on its commit in the job
  item's recent steps; every `history.RING` (16) steps they move to one history item with
  the checkpoint they lead to (what `redrive --from-step` restores): 1/16 of a write unit
  a step more than the two every step costs anyway.
- "recent": the job item's recent steps only (up to 16: the steps since the last multiple
  of 16), on the writes that happen anyway; older step records are dropped and no
  checkpoint is kept, so a redrive starts from the step it failed at. Two write units a
  step, the floor.
- "step-items": every step in an item of its own, with its owner and request id (the
  most to read back, one more write a step).

In every mode the eventful steps (retries, deferrals, take-overs, failures), callback
answers and operator actions get items of their own: they are rare and off the happy path.
`True` and `False`, which older versions took, mean "step-items" and "steps".
"""

from __future__ import annotations

from typing import Literal

from .errors import InvalidInput

HistoryMode = Literal["steps", "recent", "step-items"]
MODES: tuple[HistoryMode, ...] = ("steps", "recent", "step-items")
DEFAULT: HistoryMode = "steps"


def parse_mode(value: object, where: str) -> HistoryMode:
    """The mode `value` names, or InvalidInput saying which ones there are."""
    if value is True:
        return "step-items"
    if value is False or value is None:
        return DEFAULT
    if isinstance(value, str) and value in MODES:
        return value
    raise InvalidInput(
        f"{where}: history={value!r} is not a history mode; use \"steps\" (the default: "
        "every step, 1/16 of a write a step), \"recent\" (the last steps only, on the "
        "writes a step makes anyway) or \"step-items\" (an item per step).")


def stored(mode: HistoryMode) -> bool | str | None:
    """The job item's `ho` attribute for `mode` (None: absent, the default)."""
    return {"steps": None, "recent": "recent", "step-items": True}[mode]


def of_stored(value: bool | str | None) -> HistoryMode:
    """The mode a job item's `ho` attribute holds (absent or unknown: the default)."""
    if value is True:
        return "step-items"
    return "recent" if value == "recent" else DEFAULT
