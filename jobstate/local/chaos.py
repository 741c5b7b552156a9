"""Seeded, reproducible chaos for the local runtime.

Every decision is drawn from its own `random.Random` seeded with a string built from the
run's seed and what is being decided (`"dup:<job>:<step>:<n>"`), so a decision does not
depend on thread scheduling or on how many other decisions were made before it: the same
seed injects the same faults into the same steps.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import faults
from ..errors import InvalidInput

KINDS = ("duplicate", "crash", "lost", "throttle_invoke", "throttle_dynamodb")
DEFAULT_CHAOS = {"duplicate": 0.15, "crash": 0.08, "lost": 0.05, "throttle_invoke": 0.1,
                 "throttle_dynamodb": 0.002}


@dataclass(frozen=True)
class Chaos:
    """Fault probabilities; each is per delivery, dispatch or DynamoDB request.

    - `duplicate`: an async event is delivered twice (the copy a little later);
    - `crash`: the worker SIGKILLs itself at a random named crash point of the step
      (`jobstate.faults.POINTS`) if the step reaches it;
    - `lost`: a continuation is acknowledged but never delivered;
    - `throttle_invoke`: the continuation's first invoke attempt fails with a retryable
      TooManyRequestsException;
    - `throttle_dynamodb`: a DynamoDB request is answered with ThrottlingException before
      it reaches the table (boto's retry recovers; never twice in a row).

    `crash_first=True` crashes only the first delivery of each step that reaches the
    chosen point (a fault matrix: with `crash=1` and one crash point, every step that
    reaches it is killed there exactly once, however slow the machine).
    """

    seed: int = 0
    duplicate: float = 0.0
    crash: float = 0.0
    lost: float = 0.0
    throttle_invoke: float = 0.0
    throttle_dynamodb: float = 0.0
    crash_points: tuple[str, ...] = field(default=faults.POINTS)
    crash_first: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InvalidInput(f"chaos seed must be an int, got {self.seed!r}")
        for kind in KINDS:
            p = getattr(self, kind)
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
                raise InvalidInput(f"chaos {kind} must be a probability in [0, 1], got {p!r}")
        unknown = set(self.crash_points) - set(faults.POINTS)
        if unknown:
            raise InvalidInput(f"unknown crash points {sorted(unknown)}; known: {faults.POINTS}")

    @classmethod
    def off(cls, seed: int = 0) -> Chaos:
        return cls(seed)

    @classmethod
    def default(cls, seed: int = 0) -> Chaos:
        """The demo's chaos: every kind of fault, often enough to show up in a short run."""
        return cls._of(seed, DEFAULT_CHAOS)

    @classmethod
    def _of(cls, seed: int, p: dict[str, float]) -> Chaos:
        return cls(seed=seed, duplicate=p.get("duplicate", 0.0), crash=p.get("crash", 0.0),
                   lost=p.get("lost", 0.0), throttle_invoke=p.get("throttle_invoke", 0.0),
                   throttle_dynamodb=p.get("throttle_dynamodb", 0.0))

    @classmethod
    def parse(cls, spec: str | None, seed: int = 0) -> Chaos:
        """`"on"`, `"off"`, or `"duplicate=0.2,crash=0.1,lost=0,..."` (unnamed kinds: 0).

        `"on,crash=0.3"` starts from the defaults and overrides some.
        """
        text = (spec or "off").strip().lower()
        values: dict[str, float] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            if part in ("on", "default", "true"):
                values.update(DEFAULT_CHAOS)
                continue
            if part in ("off", "none", "false"):
                values.clear()
                continue
            name, sep, raw = part.partition("=")
            name = name.strip().replace("-", "_")
            if not sep or name not in KINDS:
                raise InvalidInput(
                    f"bad chaos spec {part!r}: use 'on', 'off' or kind=probability with kind "
                    f"one of {', '.join(KINDS)} (e.g. 'duplicate=0.2,crash=0.1')."
                )
            try:
                values[name] = float(raw)
            except ValueError:
                raise InvalidInput(f"bad chaos probability {raw!r} for {name}") from None
        return cls._of(seed, values)

    @property
    def enabled(self) -> bool:
        return any(getattr(self, k) > 0 for k in KINDS)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["crash_points"] = list(self.crash_points)
        return out

    def quiet(self) -> Chaos:
        return Chaos(seed=self.seed, crash_points=self.crash_points,
                     crash_first=self.crash_first)


class Dice:
    """Reproducible decisions: the n-th time `what` is asked, the answer is the same."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def rng(self, what: str) -> random.Random:
        with self._lock:
            n = self._counts.get(what, 0)
            self._counts[what] = n + 1
        return random.Random(f"{self.seed}:{what}:{n}")

    def nth(self, what: str) -> int:
        """How many times `what` was asked before (0 the first time)."""
        with self._lock:
            n = self._counts.get(what, 0)
            self._counts[what] = n + 1
        return n

    def roll(self, what: str, p: float) -> bool:
        return p > 0 and self.rng(what).random() < p

    def token(self, what: str) -> str:
        """A seed string for decisions made elsewhere (inside a worker)."""
        with self._lock:
            n = self._counts.get("token:" + what, 0)
            self._counts["token:" + what] = n + 1
        return f"{self.seed}:{what}:{n}"


class CrashPlan:
    """Where each delivery is killed. With `crash_first`, each step's crash is drawn once
    and aimed at every delivery of the step until one reaches the point: a delivery that
    ends before it (a real deadline on a slow machine) does not use it up, so a fault
    matrix kills every step at its point whatever the machine's speed."""

    def __init__(self, chaos: Chaos, dice: Dice) -> None:
        self.chaos, self.dice = chaos, dice
        self._aims: dict[str, str | None] = {}
        self._fired: set[str] = set()
        self._lock = threading.Lock()

    def aim(self, key: str) -> str | None:
        if not self.chaos.crash_first:
            return self._draw(key)
        with self._lock:
            if key in self._fired:
                return None
            if key not in self._aims:
                self._aims[key] = self._draw(key)
            return self._aims[key]

    def fired(self, key: str) -> None:
        """A delivery of `key` was killed at its point."""
        with self._lock:
            self._fired.add(key)

    def _draw(self, key: str) -> str | None:
        rng = self.dice.rng(f"crash:{key}")
        hit = rng.random() < self.chaos.crash
        return rng.choice(self.chaos.crash_points) if hit else None
