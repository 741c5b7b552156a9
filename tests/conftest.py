"""Shared fixtures: the DynamoDB backend (JOBSTATE_TEST_BACKEND), stores, apps, drivers.

Tests marked `integration` run unchanged on every backend; CI runs them on moto and on
AWS's DynamoDB Local. Everything else is the fast unit tier on moto in-process.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backends import (
    DYNAMODB_LOCAL_PACKAGE_DIR,
    DynamoDBLocal,
    MotoServer,
    dummy_aws_env,
    selected_backend,
)

import jobstate
from jobstate.testing import Driver, dynamodb_client

os.environ.update(dummy_aws_env())
for _k in ("JOBSTATE_TABLE", "JOBSTATE_ENDPOINT_URL"):
    os.environ.pop(_k, None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--slow", action="store_true",
                     help="the long run: 2000 examples per property (HYPOTHESIS_PROFILE=slow)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--slow"):
        os.environ.setdefault("HYPOTHESIS_PROFILE", "slow")


def pytest_report_header(config: pytest.Config) -> str:
    return f"jobstate test backend: {selected_backend()}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # Printed even under -q, so a CI log shows which engine the tests ran on.
    from conftest_hypothesis import profile_name

    terminalreporter.write_line(f"jobstate test backend: {selected_backend()}; hypothesis "
                                f"profile: {profile_name()}")


@pytest.fixture(scope="session")
def engine() -> Iterator[str | None]:
    """The endpoint URL of the selected backend (None for moto in-process)."""
    backend = selected_backend()
    if backend == "moto":
        yield None
    elif backend == "moto-server":
        with MotoServer() as server:
            yield server.endpoint_url
    else:
        with DynamoDBLocal(package_dir=DYNAMODB_LOCAL_PACKAGE_DIR) as ddb:
            yield ddb.endpoint_url


@pytest.fixture
def clock() -> jobstate.ManualClock:
    return jobstate.ManualClock()


@pytest.fixture
def make_store(engine: str | None, clock: jobstate.ManualClock) -> Iterator[
    Callable[..., jobstate.JobStore]
]:
    """Factory of stores on fresh tables of the selected backend."""
    mock = None
    if engine is None:
        from moto import mock_aws

        mock = mock_aws()
        mock.start()

    def make(**kw: Any) -> jobstate.JobStore:
        kw.setdefault("clock", clock)
        kw.setdefault("client", dynamodb_client(engine))
        store = jobstate.JobStore(f"t-{uuid.uuid4().hex[:10]}", endpoint_url=engine,
                                  region="us-east-1", **kw)
        store.create_table()
        return store

    try:
        yield make
    finally:
        if mock is not None:
            mock.stop()


@pytest.fixture
def store(make_store: Callable[..., jobstate.JobStore]) -> jobstate.JobStore:
    return make_store()


@pytest.fixture
def cont() -> jobstate.InMemoryContinuation:
    return jobstate.InMemoryContinuation()


@pytest.fixture
def app(store: jobstate.JobStore, cont: jobstate.InMemoryContinuation) -> jobstate.App:
    return jobstate.App(store, cont)


@pytest.fixture
def driver(app: jobstate.App, cont: jobstate.InMemoryContinuation,
           clock: jobstate.ManualClock) -> Callable[..., Driver]:
    def make(**chaos: Any) -> Driver:
        return Driver(app, cont, clock, **chaos)

    return make


class RequestLog:
    """Counts DynamoDB requests made through a store's client, by operation."""

    WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems",
                        "BatchWriteItem"})
    READS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})

    def __init__(self, store: jobstate.JobStore) -> None:
        self.ops: list[str] = []
        store.client.meta.events.register("before-call.dynamodb", self._on_call)

    def _on_call(self, model: Any, **_: Any) -> None:
        self.ops.append(model.name)

    def reset(self) -> None:
        self.ops.clear()

    @property
    def writes(self) -> int:
        return sum(op in self.WRITES for op in self.ops)

    @property
    def reads(self) -> int:
        return sum(op in self.READS for op in self.ops)


@pytest.fixture
def requests_log(store: jobstate.JobStore) -> RequestLog:
    return RequestLog(store)


class LostResponse:
    """Makes the next `operation` request apply twice, keeping only the second answer.

    That is what botocore does when the response to an applied write is lost (a timeout,
    a reset connection): it sends the same request again, and the retry meets the state
    its own first attempt wrote. `with LostResponse(store, "update_item"): ...`
    """

    def __init__(self, store: jobstate.JobStore, operation: str, times: int = 1) -> None:
        self.store, self.operation, self.left = store, operation, times
        self.replayed = 0

    def __enter__(self) -> LostResponse:
        real = self.store.client

        outer = self

        class Proxy:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(real, name)
                if name != outer.operation or outer.left <= 0:
                    return attr

                def twice(**kwargs: Any) -> Any:
                    outer.left -= 1
                    outer.replayed += 1
                    attr(**kwargs)  # applied; its response is "lost"
                    return attr(**kwargs)

                return twice

        self._real = real
        self.store._client = Proxy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.store._client = self._real


def drain(app: jobstate.App, cont: jobstate.InMemoryContinuation,
          context: Any = None, limit: int = 10_000) -> list[dict[str, Any]]:
    """Deliver every dispatched event in order until none is left."""
    reports = []
    for _ in range(limit):
        events = cont.pop_all()
        if not events:
            return reports
        for e in events:
            reports.append(app.handler(e, context))
    raise AssertionError("runaway: events kept coming")
