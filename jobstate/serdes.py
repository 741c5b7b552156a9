"""Custom serialisation of results (issue 19): effect results, a job's result as its parent
sees it (`ctx.children()`), and callback results.

A serdes is an object with `dumps(value) -> str` and `loads(text) -> value`, or a pair
`(dumps, loads)`. It is chosen per call (`ctx.once(..., serdes=...)`), else per job type
(`@app.job(..., serdes=...)`), else JSON — `for_job` says which, and is the one function
other result kinds (callbacks) call. The default JSON is stored as it always was; a custom
serdes' text is stored as a JSON string, so every reader (CLI, status API, `JobView`)
still reads the item, and only the code that knows the serdes turns it back into a value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from . import codec
from .errors import InvalidInput, StateNotSerializable


@runtime_checkable
class Serdes(Protocol):
    """Turns a result into text and back."""

    def dumps(self, value: Any) -> str: ...

    def loads(self, text: str) -> Any: ...


class JsonSerdes:
    """The default: compact JSON (values JSON can hold, checked with a path in errors)."""

    def dumps(self, value: Any) -> str:
        return codec.dumps(value, "value")

    def loads(self, text: str) -> Any:
        return codec.loads(text)

    def __repr__(self) -> str:
        return "JSON"


JSON = JsonSerdes()


@dataclass(frozen=True)
class Pair:
    """A serdes made of two functions."""

    dumps_fn: Callable[[Any], str]
    loads_fn: Callable[[str], Any]

    def dumps(self, value: Any) -> str:
        return self.dumps_fn(value)

    def loads(self, text: str) -> Any:
        return self.loads_fn(text)


SerdesLike = Serdes | tuple[Callable[[Any], str], Callable[[str], Any]]


def resolve(spec: SerdesLike | None, where: str = "serdes") -> Serdes | None:
    """A serdes from what a user passed (None stays None), or InvalidInput saying why."""
    if spec is None or isinstance(spec, JsonSerdes):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2 and all(callable(f) for f in spec):
        return Pair(spec[0], spec[1])
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        return spec  # type: ignore[return-value]
    raise InvalidInput(f"{where} must be an object with dumps(value) -> str and loads(text), "
                       f"or a (dumps, loads) pair of functions; got {type(spec).__name__}")


def pick(*choices: Serdes | None) -> Serdes:
    """The first serdes given, else JSON."""
    return next((c for c in choices if c is not None), JSON)


def for_job(specs: Mapping[str, Any], job_type: str | None,
            call: SerdesLike | None = None) -> Serdes:
    """The serdes for a result of a job of `job_type`: the call's, else the job type's
    (`@app.job(..., serdes=...)`, read from the App's specs), else JSON."""
    spec = specs.get(job_type) if job_type is not None else None
    return pick(resolve(call), getattr(spec, "serdes", None))


def _name(serdes: Serdes) -> str:
    return type(serdes).__name__ if not isinstance(serdes, Pair) else getattr(
        serdes.dumps_fn, "__qualname__", "dumps")


def encode(serdes: Serdes, value: Any, what: str) -> str:
    """The stored text of `value` (`what` names it: "result of effect 'k'")."""
    if isinstance(serdes, JsonSerdes):
        return codec.dumps(value, what)
    try:
        text = serdes.dumps(value)
    except Exception as exc:
        # Its type only: the exception's text may quote the value, which may hold tokens.
        raise StateNotSerializable(
            f"{what}: serdes {_name(serdes)} could not serialise the "
            f"{type(value).__name__} value ({type(exc).__name__}); fix its dumps or return "
            "a value it handles.") from exc
    if not isinstance(text, str):
        raise StateNotSerializable(
            f"{what}: serdes {_name(serdes)}.dumps returned {type(text).__name__} for the "
            f"{type(value).__name__} value; it must return str.")
    return codec.dumps(text, what)


def decode(serdes: Serdes, text: str | None, what: str) -> Any:
    """The value stored as `text` (None when nothing was stored)."""
    stored = codec.loads(text)
    if isinstance(serdes, JsonSerdes) or not isinstance(stored, str):
        return stored  # JSON; or stored before this serdes was chosen (plain JSON)
    try:
        return serdes.loads(stored)
    except Exception as exc:
        raise StateNotSerializable(
            f"{what}: serdes {_name(serdes)} could not read the stored text "
            f"({type(exc).__name__}); was it stored with another serdes?") from exc
