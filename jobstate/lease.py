"""What a running step holds (its lease) and what it commits (its encoded state)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .errors import StateNotSerializable
from .records import JobView
from .table import Table


@dataclass(frozen=True)
class Lease:
    """What an invocation holds while it runs step `step` of a job."""

    job_id: str
    job_type: str
    step: int
    owner: str
    expires_at: int
    claimed_at: int
    request_id: str
    job: JobView
    takeover: bool = False
    # The state as the job item held it when the step was claimed (None: not known).
    stored: State | None = field(default=None, repr=False)


def new_owner(request_id: str) -> str:
    """A lease owner: random (Lambda may deliver one event twice with the same request
    id, and two deliveries must never share a lease), short (every write of the step
    carries it). The request id is kept in the step's history items."""
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class State:
    """Encoded user state, checked before any write."""

    cursor: str
    tokens: str = field(repr=False)  # never shown: tracebacks and debuggers print reprs
    progress: str
    # What the job item holds now, under this step's lease (None: not known): a write of
    # this state leaves out the parts equal to it (they would change nothing).
    stored: State | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, cursor: str | None, tokens: str | None, progress: str | None) -> State | None:
        """The state as an item holds it (None if a part is missing)."""
        if cursor is None or tokens is None or progress is None:
            return None
        return cls(cursor, tokens, progress)

    def changed(self, cursor: str, tokens: str, progress: str) -> list[tuple[str, str]]:
        """(attribute, text) of the parts a write must send, given their attribute names:
        all of them, or those that differ from what the item holds (`stored`)."""
        held = self.stored
        return [(attr, text) for attr, text, was in (
            (cursor, self.cursor, held and held.cursor),
            (tokens, self.tokens, held and held.tokens),
            (progress, self.progress, held and held.progress)) if held is None or text != was]

    @classmethod
    def encode(cls, table: Table, cursor: Any, tokens: Any,
               progress: dict[str, Any], *, job_id: str,
               stored: State | None = None) -> State:
        if not isinstance(cursor, dict):
            raise StateNotSerializable(
                f"ctx.cursor must be a dict, got {type(cursor).__name__}; store positions "
                "as e.g. {'offset': 1200}."
            )
        if not isinstance(tokens, dict):
            raise StateNotSerializable(
                f"ctx.tokens must be a dict, got {type(tokens).__name__}."
            )
        return cls(codec.dumps(cursor, "cursor"), table.encode_tokens(tokens, job_id=job_id),
                   codec.dumps(progress, "progress"), stored)

    def check(self, input_json: str | None = None, result: str | None = None) -> None:
        codec.check_budget({"cursor": self.cursor, "tokens": self.tokens,
                            "progress": self.progress, "input": input_json, "result": result})
