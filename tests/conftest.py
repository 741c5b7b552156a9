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
from typing import Any, Self, cast

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


def scan(store: jobstate.JobStore) -> list[dict[str, Any]]:
    """Every item of the store's table, in key order (to prove nothing was written)."""
    items: list[dict[str, Any]] = []
    kw: dict[str, Any] = {"ConsistentRead": True}
    while True:
        resp = store.call("scan", **kw)
        items.extend(resp["Items"])
        if "LastEvaluatedKey" not in resp:
            return sorted(items, key=lambda i: (i["pk"]["S"], i["sk"]["S"]))
        kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


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


ErrorResponse = dict[str, Any]


class ClientFault:
    """Fault injection on the store's client: the first `times` requests that `pick`
    selects (an operation name, or a predicate on (operation, kwargs)) go wrong.

    With `error` None the request is *applied twice, keeping only the second answer*: what
    botocore does when the response to an applied write is lost (a timeout, a reset
    connection) — it resends, and the retry meets the state its own first attempt wrote.
    With `error` (an error response, or a function of the request's kwargs that builds
    one) the request is not applied and raises that ClientError, the way a throttled or
    cancelled request reaches the store. `fired` counts the faults injected.
    """

    def __init__(self, store: jobstate.JobStore,
                 pick: str | Callable[[str, dict[str, Any]], bool], *, times: int = 1,
                 error: ErrorResponse | Callable[[dict[str, Any]], ErrorResponse] | None = None
                 ) -> None:
        self.store, self.left, self.error = store, times, error
        self.pick = (lambda name, _kw: name == pick) if isinstance(pick, str) else pick
        self.fired = 0

    def _call(self, name: str, attr: Callable[..., Any], kw: dict[str, Any]) -> Any:
        from botocore.exceptions import ClientError

        if self.left <= 0 or not self.pick(name, kw):
            return attr(**kw)
        self.left -= 1
        self.fired += 1
        if self.error is None:
            attr(**kw)  # applied; its response is "lost"
            return attr(**kw)
        body = self.error(kw) if callable(self.error) else self.error
        raise ClientError(cast(Any, body), "".join(w.title() for w in name.split("_")))

    def __enter__(self) -> Self:
        real, outer = self.store.client, self

        class Proxy:
            def __getattr__(self, name: str) -> Any:
                attr = getattr(real, name)
                if not callable(attr) or name.startswith("_") or name == "meta":
                    return attr
                return lambda *a, **kw: attr(*a, **kw) if a else outer._call(name, attr, kw)

        self._real = real
        self.store._client = Proxy()
        return self

    def __exit__(self, *exc: object) -> None:
        self.store._client = self._real


class LostResponse(ClientFault):
    """The next `times` `operation` requests are applied twice, keeping the second answer.
    `with LostResponse(store, "update_item") as lost: ...; lost.replayed == 1`"""

    def __init__(self, store: jobstate.JobStore, operation: str, times: int = 1) -> None:
        super().__init__(store, operation, times=times)

    @property
    def replayed(self) -> int:
        return self.fired


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


def break_claim_lease_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation: the claim's condition no longer looks at the lease (its "no live lease"
    part always holds). The suites that must catch a broken claim run under this."""
    from jobstate import schema, transitions

    monkeypatch.setattr(transitions, "lease_over", lambda upd, now: upd.exists(schema.PK))
