"""Failure modes from docs/guarantees.md that no other test file covers: throttling
(DynamoDB and Lambda invoke) and clock skew between hosts."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jobstate
from jobstate import faults
from jobstate.testing import Driver, FakeLambdaContext


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body

    def read(self, *_: Any, **__: Any) -> bytes:
        body, self._body = self._body, b""
        return body


@pytest.fixture(scope="module")
def moto_server() -> Any:
    # A real HTTP endpoint: a `before-send` answer then really replaces the request. (With
    # in-process mock_aws, moto's own before-send handler applies the request as well.)
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def http_app(moto_server: str, jobstate_clock: jobstate.ManualClock,
             jobstate_continuation: jobstate.InMemoryContinuation) -> jobstate.App:
    store = jobstate.JobStore(f"thr-{uuid.uuid4().hex[:8]}", endpoint_url=moto_server,
                              region="us-east-1", clock=jobstate_clock)
    store.create_table()
    return jobstate.App(store, jobstate_continuation)


class Throttler:
    """Answers chosen DynamoDB requests with ThrottlingException instead of sending them."""

    def __init__(self, store: jobstate.JobStore, *, every: int = 0,
                 operations: tuple[str, ...] = ()) -> None:
        self.every, self.operations = every, operations
        self.on = True
        self.seen = self.throttled = 0
        self._last = False
        store.client.meta.events.register("before-send.dynamodb", self)

    def __call__(self, request: Any, **_: Any) -> AWSResponse | None:
        op = request.headers.get("X-Amz-Target", b"")
        op = (op.decode() if isinstance(op, bytes) else op).rpartition(".")[2]
        if not self.on or (self.operations and op not in self.operations):
            return None
        self.seen += 1
        if self.every and (self._last or self.seen % self.every):
            self._last = False
            return None
        self._last = True
        self.throttled += 1
        body = json.dumps({"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                           "message": "Rate of requests exceeds the allowed throughput"})
        return AWSResponse(request.url, 400, {"Content-Type": "application/x-amz-json-1.0"},
                           _Raw(body.encode()))


def counting_app(app: jobstate.App, effects: list[int]) -> None:
    @app.job("count", max_steps=100)
    def count(ctx: jobstate.StepContext) -> Any:
        n = ctx.cursor.get("n", 0)
        ctx.once(f"fx-{n}", effects.append, n)
        ctx.cursor["n"] = n + 1
        return ctx.complete(n + 1) if n + 1 >= 6 else None


def test_dynamodb_throttling_is_retried_by_the_client(
    http_app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    jobstate_app = http_app
    effects: list[int] = []
    counting_app(jobstate_app, effects)
    throttle = Throttler(jobstate_app.store, every=3)  # every third request, never twice
    job_id = jobstate_app.start("count", {})
    Driver(jobstate_app, jobstate_continuation, jobstate_clock, seed=1,
           duplicates=0.3).run_until_done([job_id])
    assert throttle.throttled >= 5  # botocore's standard retry mode absorbed them
    assert jobstate_app.store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert effects == list(range(6))


def test_persistent_throttling_surfaces_and_the_sweeper_recovers(
    http_app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    jobstate_app = http_app
    effects: list[int] = []
    counting_app(jobstate_app, effects)
    job_id = jobstate_app.start("count", {})
    driver = Driver(jobstate_app, jobstate_continuation, jobstate_clock)
    jobstate_app.handler(jobstate_continuation.pop_all()[0], FakeLambdaContext(jobstate_clock))
    throttle = Throttler(jobstate_app.store, operations=("UpdateItem",))
    throttle.on = False
    [event] = jobstate_continuation.pop_all()

    def throttle_the_commit(name: str, info: dict[str, Any]) -> None:
        if name == "before_commit":
            throttle.on = True  # the commit of step 1 keeps getting throttled

    with faults.installed(throttle_the_commit), pytest.raises(jobstate.StoreUnavailable,
                                                              match="after retries"):
        jobstate_app.handler(event, FakeLambdaContext(jobstate_clock))
    assert throttle.throttled == 4  # 1 + 3 retries (PynamoDB's standard-mode client)
    throttle.on = False
    job = jobstate_app.store.get(job_id)
    assert job.step == 1 and job.lease_owner  # nothing committed; the lease is left to expire
    driver.run_until_done([job_id])  # the sweeper re-dispatches after the lease expires
    assert jobstate_app.store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert effects == list(range(6))  # step 1's effect was DONE: not run again


class StubLambda:
    def __init__(self, throttles: int) -> None:
        self.throttles = throttles
        self.calls = 0
        self.delivered: list[dict[str, Any]] = []

    def invoke(self, FunctionName: str, InvocationType: str, Payload: bytes) -> dict[str, Any]:
        self.calls += 1
        if self.calls <= self.throttles:
            raise ClientError({"Error": {"Code": "TooManyRequestsException",
                                         "Message": "Rate exceeded"},
                               "ResponseMetadata": {"HTTPStatusCode": 429}}, "Invoke")
        self.delivered.append(json.loads(Payload))
        return {"StatusCode": 202}


def test_invoke_throttling_is_retried_then_left_to_the_sweeper(
    jobstate_store: jobstate.JobStore, jobstate_clock: jobstate.ManualClock,
) -> None:
    stub = StubLambda(throttles=2)
    cont = jobstate.LambdaContinuation("worker", client=stub, max_wait_s=0.01)
    cont.dispatch(jobstate.step_event("j", 1, "t"))
    assert stub.calls == 3 and len(stub.delivered) == 1  # retried with backoff (tenacity)

    stub = StubLambda(throttles=10**6)  # throttled for longer than the retries last
    app = jobstate.App(jobstate_store, jobstate.LambdaContinuation(
        "worker", client=stub, attempts=3, max_wait_s=0.01))
    app.job("t")(lambda ctx: None if ctx.step == 0 else ctx.complete())
    job_id = app.start("t")  # step 0's dispatch fails: the job stays due
    assert stub.delivered == [] and stub.calls == 3
    jobstate_clock.advance(jobstate_store.dispatch_timeout_ms / 1000 + 1)
    memory = jobstate.InMemoryContinuation()
    assert jobstate.sweep(jobstate_store, memory).dispatched == 1
    report = app.handler(memory.pop_all()[0], FakeLambdaContext(jobstate_clock))
    assert report["outcome"] == "committed"  # committed although its continuation failed
    assert jobstate_store.get(job_id).step == 1
    jobstate_clock.advance(jobstate_store.dispatch_timeout_ms / 1000 + 1)
    assert jobstate.sweep(jobstate_store, memory).lost_continuations == 1


def test_invoke_retries_never_outlast_the_invocation() -> None:
    # Backoff into the timeout would get the container killed after its commit (the
    # demo saw it): with the deadline near, the continuation gives up and the sweeper
    # re-sends it.
    class Ctx:
        function_name = "worker"

        def __init__(self, remaining_ms: int) -> None:
            self.remaining_ms = remaining_ms

        def get_remaining_time_in_millis(self) -> int:
            return self.remaining_ms

    slept: list[float] = []
    for remaining, calls in ((100, 1), (60_000, 4)):
        stub = StubLambda(throttles=10**6)
        cont = jobstate.LambdaContinuation(client=stub, attempts=4, sleep=slept.append)
        with pytest.raises(jobstate.DispatchFailed, match="sweeper"):
            cont.dispatch(jobstate.step_event("j", 1, "t"), context=Ctx(remaining))
        assert stub.calls == calls
    assert slept and max(slept) < 0.5  # short waits: 50 ms doubling, 50 ms jitter


class SkewedClock:
    """Another host's clock: `skew_s` ahead of the reference clock."""

    def __init__(self, base: jobstate.ManualClock, skew_s: float) -> None:
        self.base, self.skew_ms = base, int(skew_s * 1000)

    def now_ms(self) -> int:
        return self.base.now_ms() + self.skew_ms

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)


@pytest.mark.parametrize(("skew_s", "taken_over"), [(3.0, False), (12.0, True)])
def test_clock_skew_between_hosts(
    jobstate_store: jobstate.JobStore, jobstate_clock: jobstate.ManualClock,
    skew_s: float, taken_over: bool,
) -> None:
    """Host A runs a step; a duplicate lands on host B, whose clock is ahead, while A is in
    its last second. Within the lease grace (5 s) B sees the lease live. Beyond it, B takes
    the step over, and A's late commit is fenced: one continuation, not two."""
    cont = jobstate.InMemoryContinuation()
    store_b = jobstate.JobStore(jobstate_store.table_name, region="us-east-1",
                               clock=SkewedClock(jobstate_clock, skew_s))
    host_a = jobstate.App(jobstate_store, cont)
    host_b = jobstate.App(store_b, cont)
    nested: list[dict[str, Any]] = []

    def step(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0 and ctx.store is jobstate_store and not nested:
            jobstate_clock.advance(59)  # host A is 1 s before its 60 s timeout
            event = jobstate.step_event(ctx.job_id, 0, "skew")
            nested.append(host_b.handler(event, FakeLambdaContext(jobstate_clock)))
        return None if ctx.step == 0 else ctx.complete()

    host_a.job("skew")(step)
    host_b.job("skew")(step)
    host_a.start("skew", job_id="skewed")
    first = host_a.handler(cont.pop_all()[0], FakeLambdaContext(jobstate_clock))
    if taken_over:
        assert nested[0]["outcome"] == "committed"  # B took the live lease over
        assert first["outcome"] == "lease_lost"  # A's commit was fenced
    else:
        assert nested[0]["outcome"] == "in_flight"
        assert first["outcome"] == "committed"
    events = cont.pop_all()
    assert [e["jobstate"]["step"] for e in events] == [1]  # never two continuations
