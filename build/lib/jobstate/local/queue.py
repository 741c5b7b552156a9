"""The local runtime's asynchronous event queue (Lambda's internal queue for Event invokes)."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Delivery:
    """One queued event: what Lambda would deliver to the function."""

    event: dict[str, Any]
    depth: int
    first_at: float
    group: str | None
    attempt: int = 0
    duplicate: bool = False
    source: str = "invoke"
    future: Future[dict[str, Any]] | None = None
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def key(self) -> str:
        """`job_id:step` of a step event (`start:job_id` of a start request)."""
        body = self.event.get("jobstate") or {}
        if isinstance(body.get("start"), dict):
            return f"start:{body['start'].get('job_id')}"
        return f"{body.get('job_id')}:{body.get('step')}"


class EventQueue:
    """A time-ordered queue: `put(d, at)` makes `d` deliverable from `at` (epoch s)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Delivery]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._closed = False
        self._busy = 0

    def put(self, d: Delivery, at: float | None = None) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.time() if at is None else at, next(self._seq), d))
            self._cv.notify()

    def get(self) -> Delivery | None:
        """The next deliverable event (blocks); None once closed. Call `done()` after."""
        with self._cv:
            while not self._closed:
                if self._heap:
                    wait = self._heap[0][0] - time.time()
                    if wait <= 0:
                        self._busy += 1
                        return heapq.heappop(self._heap)[2]
                    self._cv.wait(min(wait, 0.5))
                else:
                    self._cv.wait(0.5)
            return None

    def done(self) -> None:
        with self._cv:
            self._busy -= 1
            self._cv.notify_all()

    def idle(self) -> bool:
        """Nothing queued (even for later) and nothing being delivered."""
        with self._cv:
            return not self._heap and self._busy == 0

    def pending(self) -> int:
        with self._cv:
            return len(self._heap) + self._busy

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
