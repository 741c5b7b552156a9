"""Figure 2: latency of the per-step bookkeeping, jobstate vs Powertools, interleaved.

jobstate: `App.handler` for one step of a trivial job — claim (UpdateItem), the step
function (does nothing), commit (UpdateItem), continuation to an in-memory queue.
Powertools: an `@idempotent` handler for the same event — put INPROGRESS (PutItem), the
handler (appends the next event to a list), update COMPLETED (UpdateItem).
Both use the real clock and the same engine over HTTP; A and B alternate (ABBA order) so
drift in the engine (JIT warm-up, GC) hits both. Times are reported, never asserted.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import jobstate

from .common import LambdaContext, new_store, powertools_layer
from .engine import Engine


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


class RequestTimer:
    """Time spent inside DynamoDB requests (botocore `before-call` to `after-call`)."""

    def __init__(self, client: Any) -> None:
        self.spent = 0.0
        self.sent = 0
        self.received = 0
        self._began = 0.0
        client.meta.events.register("before-call.dynamodb", self._before)
        client.meta.events.register("after-call.dynamodb", self._after)

    def _before(self, params: Any = None, **_: Any) -> None:
        body = params.get("body", b"") if isinstance(params, dict) else b""
        self.sent += len(body) if isinstance(body, bytes | str) else 0
        self._began = time.perf_counter()

    def _after(self, http_response: Any = None, **_: Any) -> None:
        self.spent += time.perf_counter() - self._began
        self.received += len(getattr(http_response, "content", b"") or b"")


def run(engine: Engine, *, quick: bool) -> dict[str, Any]:
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent

    iterations = 300 if quick else 3000
    warmup = 50 if quick else 200

    store = new_store(engine, None, prefix="latency")
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)

    @app.job("latency-step", max_steps=iterations + warmup + 10)
    def latency_step(ctx: jobstate.StepContext) -> None:
        ctx.cursor["n"] = ctx.step + 1

    layer, pt_client = powertools_layer(engine, None)
    js_timer, pt_timer = RequestTimer(store.client), RequestTimer(pt_client)
    config = IdempotencyConfig(event_key_jmespath="jobstate.[job_id, step]",
                               raise_on_no_idempotency_key=True)
    queue: list[dict[str, Any]] = []

    @idempotent(persistence_store=layer(), config=config)
    def pt_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        body = event["jobstate"]
        queue.append({"jobstate": {**body, "step": body["step"] + 1}})
        return {"next_step": body["step"] + 1}

    app.start("latency-step", {})
    ctx = LambdaContext(lambda: 60_000)
    pt_event: dict[str, Any] = {"jobstate": {"job_id": "pt-latency", "step": 0}}

    js_req: list[float] = []
    pt_req: list[float] = []

    def step_jobstate() -> float:
        event = cont.pop_all()[0]
        js_timer.spent = 0.0
        began = time.perf_counter()
        app.handler(event, ctx)
        took = (time.perf_counter() - began) * 1000
        js_req.append(js_timer.spent * 1000)
        return took

    def step_powertools() -> float:
        nonlocal pt_event
        pt_timer.spent = 0.0
        began = time.perf_counter()
        pt_handler(pt_event, ctx)
        took = (time.perf_counter() - began) * 1000
        pt_req.append(pt_timer.spent * 1000)
        pt_event = queue.pop()
        return took

    for _ in range(warmup):
        step_jobstate()
        step_powertools()
    js_req.clear()
    pt_req.clear()
    for t in (js_timer, pt_timer):
        t.sent = t.received = 0
    js: list[float] = []
    pt: list[float] = []
    for i in range(iterations):
        if i % 2 == 0:
            js.append(step_jobstate())
            pt.append(step_powertools())
        else:
            pt.append(step_powertools())
            js.append(step_jobstate())

    def stats(xs: list[float], req: list[float], timer: RequestTimer) -> dict[str, float]:
        return {"bytes_sent_per_step": timer.sent / len(xs),
                "bytes_received_per_step": timer.received / len(xs),
                "median_ms": statistics.median(xs), "p99_ms": percentile(xs, 99),
                "mean_ms": statistics.fmean(xs), "min_ms": min(xs),
                "median_in_requests_ms": statistics.median(req),
                "median_outside_requests_ms": statistics.median(
                    [x - r for x, r in zip(xs, req, strict=True)])}

    a, b = stats(js, js_req, js_timer), stats(pt, pt_req, pt_timer)
    return {
        "iterations": iterations, "warmup": warmup, "order": "ABBA interleaved",
        "jobstate": a, "powertools": b,
        "ratio_median": a["median_ms"] / b["median_ms"],
        "ratio_p99": a["p99_ms"] / b["p99_ms"],
    }


HEADERS = ["who", "median ms", "p99 ms", "mean ms", "min ms", "median in DynamoDB ms",
           "median in Python ms", "bytes sent/step", "bytes received/step"]


def table_rows(fig: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for who in ("jobstate", "powertools"):
        s = fig[who]
        rows.append([who, s["median_ms"], s["p99_ms"], s["mean_ms"], s["min_ms"],
                     s["median_in_requests_ms"], s["median_outside_requests_ms"],
                     s["bytes_sent_per_step"], s["bytes_received_per_step"]])
    rows.append(["ratio jobstate/powertools", fig["ratio_median"], fig["ratio_p99"], None,
                 None, None, None, None, None])
    return rows
