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

    @classmethod
    def encode(cls, table: Table, cursor: Any, tokens: Any,
               progress: dict[str, Any], *, job_id: str) -> State:
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
                   codec.dumps(progress, "progress"))

    def check(self, input_json: str | None = None, result: str | None = None) -> None:
        codec.check_budget({"cursor": self.cursor, "tokens": self.tokens,
                            "progress": self.progress, "input": input_json, "result": result})
