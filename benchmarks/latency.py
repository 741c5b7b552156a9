"""Figure 2: latency of the per-step bookkeeping: jobstate vs Powertools vs the floor.

jobstate: `App.handler` for one step of a trivial job — whatever requests it makes to
claim and commit, the step function (does nothing), continuation to an in-memory queue.
Powertools: an `@idempotent` handler for the same event — put INPROGRESS (PutItem), the
handler (appends the next event to a list), update COMPLETED (UpdateItem).
The floor: what any fenced step must at least do, with plain boto3 — a conditional
PutItem of a new item and a conditional UpdateItem of it, the item as large as the job
item jobstate's step writes (sized by AWS's item-size rules after a real step, from the
keys its write requests name; see `item_size`).
All three use the real clock and the same engine over HTTP, interleaved: each round
runs the three in the next of the six orders, so drift in the engine (JIT warm-up, GC)
hits all of them alike. Times are reported as ratios, never asserted.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import jobstate

from .common import LambdaContext, new_store, powertools_layer
from .engine import Engine


def item_size(item: dict[str, Any]) -> int:
    """Bytes of a DynamoDB item (wire format) by AWS's rules: attribute names plus values.

    From "DynamoDB item sizes and formats" (Amazon DynamoDB Developer Guide): strings and
    names are their UTF-8 bytes; a number is 1 byte per two significant digits plus 1;
    binary is its raw bytes; null and Boolean 1 byte; a list or map 3 bytes plus its
    elements, each element 1 byte more; a set is the sum of its elements.
    """
    return sum(len(name.encode()) + _value_size(value) for name, value in item.items())


def _value_size(value: dict[str, Any]) -> int:
    (kind, v), = value.items()
    if kind == "S":
        return len(v.encode())
    if kind == "N":
        return _number_size(v)
    if kind == "B":
        return len(v)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "L":
        return 3 + sum(1 + _value_size(x) for x in v)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _value_size(x) for k, x in v.items())
    if kind == "SS":
        return sum(len(x.encode()) for x in v)
    if kind == "NS":
        return sum(_number_size(x) for x in v)
    if kind == "BS":
        return sum(len(x) for x in v)
    raise ValueError(f"unknown DynamoDB type {kind!r}")


def _number_size(text: str) -> int:
    digits = Decimal(text).as_tuple().digits
    significant = "".join(map(str, digits)).strip("0") or "0"
    return (len(significant) + 1) // 2 + 1


class WrittenKeys:
    """The keys of the items a client's write requests name (whatever the operation)."""

    def __init__(self, client: Any, table_name: str) -> None:
        schema = client.describe_table(TableName=table_name)["Table"]["KeySchema"]
        self.key_names = [k["AttributeName"] for k in schema]
        self.keys: dict[str, dict[str, Any]] = {}
        self._events = client.meta.events

    def __enter__(self) -> WrittenKeys:
        self._events.register("before-parameter-build.dynamodb.*", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        self._events.unregister("before-parameter-build.dynamodb.*", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        actions: list[tuple[str, dict[str, Any]]] = []
        if model.name in ("UpdateItem", "DeleteItem"):
            actions.append(("Key", params))
        elif model.name == "PutItem":
            actions.append(("Item", params))
        elif model.name == "TransactWriteItems":
            for a in params.get("TransactItems", []):
                for kind, body in a.items():
                    if kind != "ConditionCheck":
                        actions.append(("Item" if kind == "Put" else "Key", body))
        for field, body in actions:
            key = {k: body[field][k] for k in self.key_names}
            self.keys[json.dumps(key, sort_keys=True)] = key


def largest_written_item(client: Any, table_name: str, keys: WrittenKeys) -> int:
    """Size of the largest item the recorded writes touched, read back consistently."""
    sizes = [item_size(client.get_item(TableName=table_name, Key=k, ConsistentRead=True)
                       .get("Item", {})) for k in keys.keys.values()]
    return max(sizes, default=0)


class Floor:
    """The two-write floor: a conditional put of a new item, then a conditional update.

    By default on a table of its own with no index, as Powertools' is. With `like`, on a
    table created by that table's own definition (`JobStore.create_table`: jobstate's
    keys and GSIs), writing items that no index holds, as a jobstate step's writes are:
    the difference between the two floors is what the engine charges a write for the
    table's indexes alone."""

    def __init__(self, engine: Engine, item_bytes: int,
                 like: jobstate.JobStore | None = None) -> None:
        from jobstate.local.engines import dynamodb_client

        self.client = dynamodb_client(engine.endpoint_url)
        if like is None:
            self.table, self.hash_key, self.range = f"floor-{uuid.uuid4().hex[:8]}", "id", {}
            self.client.create_table(
                TableName=self.table, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}])
        else:
            twin = jobstate.JobStore(f"floor-gsi-{uuid.uuid4().hex[:8]}",
                                     endpoint_url=engine.endpoint_url)
            twin.create_table()
            self.table, self.hash_key, self.range = twin.table_name, "pk", {"sk": {"S": "F"}}
        self.client.get_waiter("table_exists").wait(
            TableName=self.table, WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
        self.n = 0
        base = item_size({self.hash_key: {"S": self._id(0)}, **self.range,
                          "st": {"S": "RUN"}, "d": {"S": ""}})
        self.pad = "x" * max(0, item_bytes - base)
        self.item_bytes = base + len(self.pad)

    @staticmethod
    def _id(n: int) -> str:
        return f"floor#{n:09d}"

    def step(self) -> None:
        self.n += 1
        key = {self.hash_key: {"S": self._id(self.n)}, **self.range}
        self.client.put_item(TableName=self.table,
                             Item={**key, "st": {"S": "RUN"}, "d": {"S": self.pad}},
                             ConditionExpression=f"attribute_not_exists({self.hash_key})")
        self.client.update_item(TableName=self.table, Key=key,
                                UpdateExpression="SET st = :end",
                                ConditionExpression="st = :run",
                                ExpressionAttributeValues={":end": {"S": "END"},
                                                           ":run": {"S": "RUN"}})


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
    fl_req: list[float] = []

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

    # The floor's item is as large as the item a warm jobstate step writes.
    step_jobstate()
    with WrittenKeys(store.client, store.table_name) as written:
        step_jobstate()
    size = largest_written_item(store.client, store.table_name, written)
    floor, indexed = Floor(engine, size), Floor(engine, size, like=store)
    fl_timer, ix_timer = RequestTimer(floor.client), RequestTimer(indexed.client)

    ix_req: list[float] = []

    def floor_arm(two_writes: Floor, timer: RequestTimer, req: list[float]
                  ) -> Callable[[], float]:
        def step() -> float:
            timer.spent = 0.0
            began = time.perf_counter()
            two_writes.step()
            took = (time.perf_counter() - began) * 1000
            req.append(timer.spent * 1000)
            return took
        return step

    step_floor = floor_arm(floor, fl_timer, fl_req)
    step_indexed_floor = floor_arm(indexed, ix_timer, ix_req)

    arms = {"jobstate": step_jobstate, "powertools": step_powertools, "floor": step_floor,
            "floor_indexed": step_indexed_floor}
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    for req in (js_req, pt_req, fl_req, ix_req):
        req.clear()
    for t in (js_timer, pt_timer, fl_timer, ix_timer):
        t.sent = t.received = 0
    took: dict[str, list[float]] = {k: [] for k in arms}
    orders = list(itertools.permutations(arms))
    for i in range(iterations):
        for name in orders[i % len(orders)]:
            took[name].append(arms[name]())
    js, pt, fl, ix = took["jobstate"], took["powertools"], took["floor"], took["floor_indexed"]

    def stats(xs: list[float], req: list[float], timer: RequestTimer) -> dict[str, float]:
        return {"bytes_sent_per_step": timer.sent / len(xs),
                "bytes_received_per_step": timer.received / len(xs),
                "median_ms": statistics.median(xs), "p99_ms": percentile(xs, 99),
                "mean_ms": statistics.fmean(xs), "min_ms": min(xs),
                "median_in_requests_ms": statistics.median(req),
                "median_outside_requests_ms": statistics.median(
                    [x - r for x, r in zip(xs, req, strict=True)])}

    a, b = stats(js, js_req, js_timer), stats(pt, pt_req, pt_timer)
    c, d = stats(fl, fl_req, fl_timer), stats(ix, ix_req, ix_timer)
    return {
        "iterations": iterations, "warmup": warmup,
        "order": "interleaved, each round in the next of the 24 orders of the 4",
        "item_bytes": floor.item_bytes,
        "jobstate": a, "powertools": b, "floor": c, "floor_indexed": d,
        # What the engine charges a write for the table's two GSIs alone (no key moved).
        "index_overhead": d["median_ms"] / c["median_ms"],
        "ratio_indexed_floor_median": a["median_ms"] / d["median_ms"],
        "ratio_median": a["median_ms"] / b["median_ms"],
        "ratio_p99": a["p99_ms"] / b["p99_ms"],
        "ratio_floor_median": a["median_ms"] / c["median_ms"],
        "ratio_floor_p99": a["p99_ms"] / c["p99_ms"],
    }


HEADERS = ["who", "median ms", "p99 ms", "mean ms", "min ms", "median in DynamoDB ms",
           "median in Python ms", "bytes sent/step", "bytes received/step"]
WHO = {"jobstate": "jobstate", "powertools": "Powertools @idempotent",
       "floor": "floor: cond. put + cond. update",
       "floor_indexed": "the same floor on a table with jobstate's two GSIs"}


def table_rows(fig: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for who, label in WHO.items():
        if who not in fig:
            continue
        s = fig[who]
        rows.append([label, s["median_ms"], s["p99_ms"], s["mean_ms"], s["min_ms"],
                     s["median_in_requests_ms"], s["median_outside_requests_ms"],
                     s["bytes_sent_per_step"], s["bytes_received_per_step"]])
    rows.append(["ratio jobstate/powertools", fig["ratio_median"], fig["ratio_p99"], None,
                 None, None, None, None, None])
    rows.append(["ratio jobstate/floor", fig["ratio_floor_median"], fig["ratio_floor_p99"],
                 None, None, None, None, None, None])
    if "floor_indexed" in fig:
        rows.append(["ratio indexed floor/floor (the engine's GSI charge)",
                     fig["index_overhead"], None, None, None, None, None, None, None])
    return rows
