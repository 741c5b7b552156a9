"""Test helpers for your own job code (also a pytest plugin: fixtures below).

    def test_my_job(jobstate_app, jobstate_driver):
        @jobstate_app.job("resize")
        def resize(ctx): ...
        job_id = jobstate_app.start("resize", {"n": 10})
        jobstate_driver(seed=7, duplicates=0.3, crashes=0.2, lost=0.1).run_until_done()
        assert jobstate_app.store.get(job_id).status is jobstate.JobStatus.SUCCEEDED

The driver delivers dispatched events in-process with seeded chaos: duplicate
deliveries, kills at the protocol's named crash points (an exception no `except
Exception` can catch, so nothing after the point runs), lost continuations, and time
travel past leases and waits followed by a sweep — the failure modes of Lambda.
"""

from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import extras, faults
from .app import App, step_event
from .clock import ManualClock
from .continuation import InMemoryContinuation
from .errors import MissingExtra
from .status import JobStatus
from .store import JobStore
from .sweeper import sweep

try:  # pytest is optional at runtime; the fixtures exist only when it is installed.
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]


_SESSION: Any = None
_SESSION_LOCK = threading.Lock()


def dynamodb_client(endpoint_url: str | None = None, region: str = "us-east-1") -> Any:
    """A new DynamoDB client from one botocore session shared by the whole test run.

    A store that makes its own client starts a botocore session and parses the service
    model again (~0.2 s); a test suite that makes a store per test (or per hypothesis
    example) spends minutes on it. Pass this as `JobStore(..., client=...)`; each call
    returns a fresh client, so event hooks a test registers stay its own.
    """
    global _SESSION
    from botocore.config import Config
    from botocore.session import get_session

    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = get_session()
        return _SESSION.create_client(
            "dynamodb", region, endpoint_url=endpoint_url,
            config=Config(retries={"mode": "standard", "total_max_attempts": 4}))


class Crash(BaseException):
    """Raised at a crash point: the 'process' dies there; nothing after it runs."""


class StepOverran(AssertionError):
    """A delivered step ran past its invocation's timeout: Lambda would have killed it.

    The driver kills it at the first crash point past the deadline (nothing after runs, as
    after Lambda's kill) and raises this, unless `Driver(on_overrun="kill")`.
    """


@dataclass
class FakeLambdaContext:
    """A Lambda context whose remaining time follows a (manual) clock."""

    clock: Any
    timeout_ms: int = 60_000
    function_name: str = "jobstate-test"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started_ms: int = 0

    def __post_init__(self) -> None:
        self.started_ms = self.clock.now_ms()

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self.started_ms + self.timeout_ms - self.clock.now_ms()))


@dataclass
class ChaosStats:
    delivered: int = 0
    duplicates: int = 0
    crashes: int = 0
    overruns: int = 0
    lost: int = 0
    sweeps: int = 0
    crash_points: dict[str, int] = field(default_factory=dict)


class Driver:
    """Delivers an app's dispatched events with seeded chaos until jobs finish."""

    def __init__(
        self,
        app: App,
        cont: InMemoryContinuation,
        clock: ManualClock,
        *,
        seed: int = 0,
        duplicates: float = 0.0,
        crashes: float = 0.0,
        lost: float = 0.0,
        crash_points: tuple[str, ...] = faults.POINTS,
        timeout_ms: int = 60_000,
        on_overrun: str = "raise",
    ) -> None:
        if on_overrun not in ("raise", "kill"):
            raise ValueError(f"on_overrun must be 'raise' or 'kill', got {on_overrun!r}")
        self.app, self.cont, self.clock = app, cont, clock
        self.on_overrun = on_overrun
        self.rng = random.Random(seed)
        self.p_dup, self.p_crash, self.p_lost = duplicates, crashes, lost
        self.crash_points = crash_points
        self.timeout_ms = timeout_ms
        self.stats = ChaosStats()
        self.queue: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []

    def _collect(self) -> None:
        for event in self.cont.pop_all():
            if self.p_lost and self.rng.random() < self.p_lost:
                self.stats.lost += 1
                continue
            self.queue.append(event)
            if self.p_dup and self.rng.random() < self.p_dup:
                self.stats.duplicates += 1
                self.queue.append(event)

    def deliver(
        self, event: dict[str, Any], *, crash_at: str | None = None
    ) -> dict[str, Any] | None:
        """Run one event; `crash_at` (or chaos) kills it at that point. None if killed."""
        target = crash_at
        if target is None and self.p_crash and self.rng.random() < self.p_crash:
            target = self.rng.choice(self.crash_points)

        ctx = FakeLambdaContext(self.clock, self.timeout_ms)
        overran: list[str] = []

        def hook(name: str, info: dict[str, Any]) -> None:
            if ctx.get_remaining_time_in_millis() <= 0:
                overran.append(name)  # Lambda's kill came before this point
                raise Crash("timeout")
            if name == target:
                self.stats.crashes += 1
                self.stats.crash_points[name] = self.stats.crash_points.get(name, 0) + 1
                raise Crash(name)

        self.stats.delivered += 1
        report: dict[str, Any] | None = None
        try:
            with faults.installed(hook):
                report = self.app.handler(event, ctx)
        except Crash:
            pass
        if overran or ctx.get_remaining_time_in_millis() <= 0:
            self.stats.overruns += 1
            if self.on_overrun == "raise":
                where = f"before {overran[0]!r}" if overran else "before it returned"
                raise StepOverran(
                    f"step {event.get('jobstate', {}).get('step')} of job "
                    f"{event.get('jobstate', {}).get('job_id')!r} ran past its invocation's "
                    f"timeout ({self.timeout_ms} ms; killed {where}): on Lambda it would be "
                    "killed and retried. Loop with `while ctx.has_time():` around smaller "
                    "batches, or raise the function's timeout (Driver(timeout_ms=...)).")
            return None
        if report is not None:
            self.reports.append(report)
        return report

    def step(self) -> bool:
        """Deliver one queued event (random order). False if nothing was queued."""
        self._collect()
        if not self.queue:
            return False
        event = self.queue.pop(self.rng.randrange(len(self.queue)))
        self.deliver(event)
        self._collect()
        return True

    def sweep(self, advance_s: float | None = None) -> None:
        """Move time past leases/waits/dispatch timeouts and run the sweeper."""
        store = self.app.store
        self.clock.advance(advance_s if advance_s is not None else
                           (self.timeout_ms + self.app.lease_grace_ms) / 1000
                           + store.dispatch_timeout_ms / 1000 + 1)
        token = None
        while True:
            report = sweep(store, self.cont, limit=1000, next_token=token)
            token = report.next_token
            if token is None:
                break
        self.stats.sweeps += 1

    def run(self, max_events: int = 100_000) -> None:
        """Deliver until the queue is empty (no sweeping)."""
        for _ in range(max_events):
            if not self.step():
                return
        raise AssertionError(f"still delivering after {max_events} events: a runaway chain?")

    def run_until_done(self, job_ids: list[str] | None = None, *, max_sweeps: int = 200,
                       calm_after: int | None = None) -> None:
        """Deliver and sweep until every job (or the given ones) is terminal.

        With `calm_after`, chaos stops after that many sweeps (liveness once faults end).
        """
        for i in range(max_sweeps):
            if calm_after is not None and i >= calm_after:
                self.p_dup = self.p_crash = self.p_lost = 0.0
            self.run()
            if self._all_done(job_ids):
                return
            self.sweep()
        raise AssertionError(f"jobs not finished after {max_sweeps} sweeps")

    def _all_done(self, job_ids: list[str] | None) -> bool:
        store = self.app.store
        if job_ids is None:
            return all(j.status.terminal for j in store.iter_jobs())
        return all(store.get(j).status.terminal for j in job_ids)

    def redeliver(self, job_id: str, step: int, job_type: str) -> dict[str, Any] | None:
        """Deliver a (duplicate) event for a given step."""
        return self.deliver(step_event(job_id, step, job_type))


# -- pytest fixtures (registered through the `pytest11` entry point) ------------------------

if pytest is not None:

    @pytest.fixture
    def jobstate_clock() -> ManualClock:
        return ManualClock()

    @pytest.fixture
    def jobstate_store(jobstate_clock: ManualClock) -> Iterator[JobStore]:
        """A JobStore on moto in-process, with a fresh table."""
        try:
            from moto import mock_aws
        except ImportError as exc:  # a core install with pytest: say which extra
            error = extras.missing("testing", "the jobstate_store fixture", exc)
            if not isinstance(error, MissingExtra):
                raise
            pytest.fail(str(error), pytrace=False)

        env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            with mock_aws():
                store = JobStore(f"jobstate-{uuid.uuid4().hex[:8]}", region="us-east-1",
                                 clock=jobstate_clock, client=dynamodb_client())
                store.create_table()
                yield store
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    @pytest.fixture
    def jobstate_continuation() -> InMemoryContinuation:
        return InMemoryContinuation()

    @pytest.fixture
    def jobstate_app(jobstate_store: JobStore,
                     jobstate_continuation: InMemoryContinuation) -> App:
        return App(jobstate_store, jobstate_continuation)

    @pytest.fixture
    def jobstate_driver(jobstate_app: App, jobstate_continuation: InMemoryContinuation,
                        jobstate_clock: ManualClock) -> Callable[..., Driver]:
        def make(**chaos: Any) -> Driver:
            return Driver(jobstate_app, jobstate_continuation, jobstate_clock, **chaos)

        return make


def finished_ok(store: JobStore, job_id: str) -> bool:
    return store.get(job_id).status == JobStatus.SUCCEEDED
