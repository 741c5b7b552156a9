"""Figure 1: DynamoDB requests and consumed capacity per unit of work.

Units: a happy-path step, an effect (`ctx.once`), a batched effect (`ctx.once_batch` of
25, per effect), a child join, a callback's answer (`App.complete_callback`, issue 18).
Three ways to do the same unit:

* jobstate, through `App.handler` (claim + commit + continuation to an in-memory queue);
* a Powertools `@idempotent` handler (DynamoDBPersistenceLayer on the same engine), which
  guards each delivery but keeps no job state; effects use `@idempotent_function`, a join
  is an idempotent counter decrement on the parent's item;
* naive recursion: the cursor travels in the event, nothing is stored (0 requests, and
  nothing is protected against duplicates).

Steps are measured in three regimes, each a chain of steps of one job on one warm
container (the same App and JobStore run its consecutive steps; the first step, which
fills per-container caches, is left out):

* back-to-back: each step takes 50 ms of the job's clock and the next one is claimed as
  soon as it committed;
* long: each step takes 60 s of the job's clock, so steps are 60 s apart (whatever a
  design caches per container for less than that is read again every step);
* big input: back-to-back steps of a job whose input is 4 KB (4,096 base64 characters)
  and whose cursor carries 200 B that change every step.

Lambda's remaining time comes from the job's clock: a 900 s timeout (template.yaml's
WorkerTimeout default) counted from each delivery.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass
from typing import Any, cast

import jobstate
from jobstate.clock import ManualClock
from jobstate.history import RING

from .common import LambdaContext, new_store, powertools_layer
from .engine import Engine, Meter, Snapshot

BATCH = 25
CHILDREN = 25
POLICY_MIN = 2  # issue 19: the policy spawn is decided by its second success
LONG_STEP_S = 60.0  # steps 60 s apart on the job's clock: each step takes 60 s
SHORT_STEP_S = 0.05  # back-to-back: the next step is claimed as soon as this one committed
TIMEOUT_S = 900.0  # template.yaml's WorkerTimeout default
BIG_INPUT_BYTES = 4096
BIG_CURSOR_BYTES = 200


def big_input_blob(seed: int = 17) -> str:
    """4,096 base64 characters: a 4 KB input that does not compress to nothing."""
    raw = random.Random(seed).randbytes(BIG_INPUT_BYTES * 3 // 4)
    return base64.b64encode(raw).decode("ascii")


def cursor_pad(step: int) -> str:
    """200 B of cursor that change every step."""
    out = ""
    while len(out) < BIG_CURSOR_BYTES:
        out += hashlib.sha256(f"{step}-{len(out)}".encode()).hexdigest()
    return out[:BIG_CURSOR_BYTES]


@dataclass
class Unit:
    """Average cost of one unit of work."""

    requests: float
    writes: float
    reads: float
    wcu: float | None
    gsi_wcu: float | None
    billed_wru: float | None
    rcu: float | None
    billed_rru: float | None
    invokes: float
    items_written: float | None = None

    @classmethod
    def of(cls, snaps: list[Snapshot], capacity: bool, invokes: float = 0.0,
           per: int = 1) -> Unit:
        n = max(1, len(snaps)) * per

        def avg(f: Any) -> float:
            return float(sum(f(s) for s in snaps)) / n

        return cls(
            requests=avg(lambda s: s.requests), writes=avg(lambda s: s.writes),
            reads=avg(lambda s: s.reads),
            wcu=avg(lambda s: s.wcu) if capacity else None,
            gsi_wcu=avg(lambda s: s.gsi_wcu) if capacity else None,
            billed_wru=avg(lambda s: s.billed_wru) if capacity else None,
            rcu=avg(lambda s: s.rcu) if capacity else None,
            billed_rru=avg(lambda s: s.billed_rru) if capacity else None,
            invokes=invokes,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


NAIVE = Unit(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)
NAIVE_FX = Unit(0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _jobstate(engine: Engine, steps: int) -> dict[str, Any]:
    meter = Meter()
    clock = ManualClock()
    store = new_store(engine, meter, clock)
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont, clock=clock)
    inner: dict[str, list[Snapshot]] = {"once": [], "batch": []}

    def effect(i: int = 0) -> dict[str, int]:
        return {"sent": i}

    # history "recent": the step's own requests (issue 17's figures); the default
    # history's share is measured on its own below (bench-history).
    @app.job("bench-step", max_steps=steps + 10, history="recent")
    def bench_step(ctx: jobstate.StepContext) -> Any:
        mode = ctx.input["mode"]
        if ctx.step >= ctx.input["steps"]:
            return ctx.complete({"steps": ctx.step})
        clock.advance(ctx.input["step_s"])
        if "blob" in ctx.input:
            ctx.cursor["pad"] = cursor_pad(ctx.step)
        if mode == "once":
            before = meter.snapshot()
            ctx.once(f"fx-{ctx.step}", effect, ctx.step)
            inner["once"].append(meter.snapshot() - before)
        elif mode == "batch":
            before = meter.snapshot()
            ctx.once_batch({f"b{ctx.step}-{i}": (i,) for i in range(BATCH)}, effect)
            inner["batch"].append(meter.snapshot() - before)
        ctx.cursor["done"] = ctx.step + 1
        return None

    @app.job("bench-parent")
    def bench_parent(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn("bench-child", [{"i": i} for i in range(CHILDREN)])
        return ctx.complete({"children": len(ctx.children())})

    @app.job("bench-child")
    def bench_child(ctx: jobstate.StepContext) -> Any:
        return ctx.complete({"ok": True})

    @app.job("bench-history", max_steps=10 * RING)
    def bench_history(ctx: jobstate.StepContext) -> Any:
        if ctx.step >= ctx.input["steps"]:
            return ctx.complete(None)
        ctx.cursor["done"] = ctx.step + 1
        return None

    @app.job("bench-policy")
    def bench_policy(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:  # issue 19: decided by the second success
            ctx.spawn("bench-child", [{"i": i} for i in range(CHILDREN)],
                      completion=jobstate.CompletionPolicy(min_successful=POLICY_MIN))
        return ctx.complete({"reason": ctx.completion_reason})

    @app.job("bench-single")
    def bench_single(ctx: jobstate.StepContext) -> Any:
        return ctx.complete({"ok": True})

    tokens: list[str] = []

    @app.job("bench-callback")
    def bench_callback(ctx: jobstate.StepContext) -> Any:
        cb = ctx.callback("answer", timeout_s=3600)
        tokens.append(cb.token)
        return ctx.complete(cb.result())

    def deliver(event: dict[str, Any]) -> tuple[Snapshot, int]:
        before = meter.snapshot()
        deadline = clock.now_ms() + int(TIMEOUT_S * 1000)
        ctx = LambdaContext(lambda: deadline - clock.now_ms())
        app.handler(event, ctx)
        return meter.snapshot() - before, len(cont.events)

    def chain(mode: str, step_s: float, **extra: Any) -> tuple[list[Snapshot],
                                                                list[Snapshot], float]:
        """Runs a job of `steps` steps; returns (step 0, middle steps, invokes per step)."""
        app.start("bench-step", {"mode": mode, "steps": steps, "step_s": step_s, **extra})
        first: list[Snapshot] = []
        middle: list[Snapshot] = []
        invokes = 0
        while cont.events:
            event = cont.pop_all()[0]
            step = event["jobstate"]["step"]
            snap, sent = deliver(event)
            if step == 0:
                first.append(snap)
            elif step < steps:
                middle.append(snap)
                invokes += sent
        return first, middle, invokes / max(1, len(middle))

    # Fresh "container": the first step reads the pause flag (cold cache).
    cold, long_steps, invokes = chain("plain", LONG_STEP_S)
    _, short_steps, _ = chain("plain", SHORT_STEP_S)
    chain("once", SHORT_STEP_S)  # fills inner["once"]
    chain("batch", SHORT_STEP_S)  # fills inner["batch"]
    _, big_steps, _ = chain("plain", SHORT_STEP_S, blob=big_input_blob())
    # the default history's share: steps 1..3*RING of a chain long enough to move its
    # step records to a history item RING steps at a time (issue 20).
    app.start("bench-history", {"steps": 3 * RING + 1})
    history_steps: list[Snapshot] = []
    while cont.events:
        event = cont.pop_all()[0]
        snap, _ = deliver(event)
        if 0 < event["jobstate"]["step"] <= 3 * RING:
            history_steps.append(snap)
    cap = engine.capacity

    # child join: a child's terminal step vs a parentless job's terminal step, on a
    # container that already ran both kinds (a throwaway tree first), so whatever it
    # caches per job type is warm for both and neither pays for it
    def tree() -> tuple[list[Snapshot], list[Snapshot], list[Snapshot], list[Snapshot]]:
        app.start("bench-single", {})
        single = [deliver(e)[0] for e in cont.pop_all()]
        app.start("bench-parent", {})
        parent0 = [deliver(e)[0] for e in cont.pop_all()]
        kids: list[Snapshot] = []
        resumed: list[Snapshot] = []
        while cont.events:
            for e in cont.pop_all():
                snap, _ = deliver(e)
                (kids if e["jobstate"]["job_type"] == "bench-child" else resumed).append(snap)
        return single, parent0, kids, resumed

    def answers(n: int) -> tuple[list[Snapshot], float]:
        """`n` jobs each waiting on a callback, then answered through the App: the
        answer's requests (its invoke counted apart), once the waits are written."""
        snaps: list[Snapshot] = []
        sent = 0
        for _ in range(n):
            app.start("bench-callback", {})
            for e in cont.pop_all():
                deliver(e)
            assert not cont.events  # waiting: nothing runs
            before = meter.snapshot()
            app.complete_callback(tokens[-1], {"ok": True})
            snaps.append(meter.snapshot() - before)
            sent += len(cont.events)
            for e in cont.pop_all():
                deliver(e)
        return snaps, sent / max(1, n)

    answer_snaps, answer_invokes = answers(5)

    def policy_tree() -> dict[str, list[Snapshot]]:
        """A spawn decided by a policy: the children counted before the decision, the one
        whose join decided, those that finished after it, the parent's resume."""
        app.start("bench-policy", {})
        for e in cont.pop_all():
            deliver(e)
        seen: dict[str, list[Snapshot]] = {"counted": [], "decided": [], "after": [],
                                           "resume": []}
        def parent_events() -> int:
            return sum(x["jobstate"]["job_type"] == "bench-policy" for x in cont.events)

        while cont.events:
            for e in cont.pop_all():
                before = parent_events()
                snap, _ = deliver(e)
                if e["jobstate"]["job_type"] == "bench-policy":
                    seen["resume"].append(snap)
                elif parent_events() > before and not seen["decided"]:
                    seen["decided"].append(snap)  # its join made the parent ready
                else:
                    seen["after" if seen["decided"] else "counted"].append(snap)
        return seen

    tree()
    single, parent0, child_snaps, parent_resume = tree()
    policy = policy_tree()
    child = Unit.of(child_snaps, cap, 0.0)
    alone = Unit.of(single, cap, 0.0)
    join = Unit(
        requests=child.requests - alone.requests, writes=child.writes - alone.writes,
        reads=child.reads - alone.reads,
        wcu=None if child.wcu is None or alone.wcu is None else child.wcu - alone.wcu,
        gsi_wcu=None if child.gsi_wcu is None or alone.gsi_wcu is None
        else child.gsi_wcu - alone.gsi_wcu,
        billed_wru=None if child.billed_wru is None or alone.billed_wru is None
        else child.billed_wru - alone.billed_wru,
        rcu=None if child.rcu is None or alone.rcu is None else child.rcu - alone.rcu,
        billed_rru=None if child.billed_rru is None or alone.billed_rru is None
        else child.billed_rru - alone.billed_rru,
        invokes=0.0,
        items_written=sum(s.txn_items for s in child_snaps) / max(1, len(child_snaps)) - 1,
    )
    return {
        "step_long": Unit.of(long_steps, cap, invokes),
        "step_short": Unit.of(short_steps, cap, invokes),
        "step_big_input": Unit.of(big_steps, cap, invokes),
        "step_first_in_container": Unit.of(cold, cap),
        "effect": Unit.of(inner["once"], cap, 0.0),
        "batched_effect": Unit.of(inner["batch"], cap, 0.0, per=BATCH),
        "join": join,
        "child_terminal_step": child,
        "parent_spawn_step": Unit.of(parent0, cap),
        "parent_resume_step": Unit.of(parent_resume, cap),
        "callback_answer": Unit.of(answer_snaps, cap, answer_invokes),
        "step_with_history": Unit.of(history_steps, cap, invokes),
        "children": CHILDREN,
        "policy": {
            "min_successful": POLICY_MIN,
            "counted_join": Unit.of(policy["counted"], cap).to_dict(),
            "deciding_join": Unit.of(policy["decided"], cap).to_dict(),
            "join_after_decision": Unit.of(policy["after"], cap).to_dict(),
            "parent_resume": Unit.of(policy["resume"], cap).to_dict(),
            # items per transaction of the deciding child (its refused try and its decide),
            # less its own item: what its join writes, as fanout.writes_per_join counts
            "deciding_items_written": sum(s.txn_items for s in policy["decided"])
            / max(1, sum(s.ops["TransactWriteItems"] for s in policy["decided"])) - 1,
        },
    }


def _powertools(engine: Engine, steps: int) -> dict[str, Any]:
    from aws_lambda_powertools.utilities.idempotency import (
        IdempotencyConfig,
        idempotent,
        idempotent_function,
    )

    meter = Meter()
    layer, client = powertools_layer(engine, meter)
    table = layer().table_name
    config = IdempotencyConfig(event_key_jmespath="jobstate.[job_id, step]",
                               raise_on_no_idempotency_key=True)
    queue: list[dict[str, Any]] = []

    @idempotent(persistence_store=layer(), config=config)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        body = event["jobstate"]
        nxt = {"jobstate": {**body, "step": body["step"] + 1}}
        queue.append(nxt)  # the continuation: the cursor travels in the event
        return {"next_step": body["step"] + 1}

    ctx = LambdaContext(lambda: 60_000)
    fx_config = IdempotencyConfig(event_key_jmespath="key")
    fx_config.register_lambda_context(cast(Any, ctx))
    join_config = IdempotencyConfig(event_key_jmespath="child")
    join_config.register_lambda_context(cast(Any, ctx))

    @idempotent_function(data_keyword_argument="call", persistence_store=layer(),
                         config=fx_config)
    def effect(call: dict[str, Any]) -> dict[str, Any]:
        return {"sent": call["key"]}

    @idempotent_function(data_keyword_argument="call", persistence_store=layer(),
                         config=join_config)
    def join(call: dict[str, Any]) -> dict[str, Any]:
        resp = client.update_item(
            TableName=table, Key={"id": {"S": f"parent#{call['parent']}"}},
            UpdateExpression="ADD pending :m", ExpressionAttributeValues={":m": {"N": "-1"}},
            ReturnValues="UPDATED_NEW")
        return {"last": int(resp["Attributes"]["pending"]["N"]) <= 0}

    cap = engine.capacity

    def timed(fn: Any, *a: Any, **kw: Any) -> Snapshot:
        before = meter.snapshot()
        fn(*a, **kw)
        return meter.snapshot() - before

    step_snaps = [timed(handler, {"jobstate": {"job_id": "pt-job", "step": i}}, ctx)
                  for i in range(steps)]
    fx_snaps = [timed(effect, call={"key": f"fx-{i}"}) for i in range(steps)]
    batch_snaps = []
    for s in range(max(2, steps // 4)):
        before = meter.snapshot()
        for i in range(BATCH):
            effect(call={"key": f"b{s}-{i}"})
        batch_snaps.append(meter.snapshot() - before)
    client.put_item(TableName=table, Item={"id": {"S": "parent#p"},
                                           "pending": {"N": str(CHILDREN)}})
    join_snaps = [timed(join, call={"parent": "p", "child": f"c{i}"})
                  for i in range(CHILDREN)]
    # a duplicate delivery: Powertools answers from its record (1 failed conditional put)
    dup = timed(handler, {"jobstate": {"job_id": "pt-job", "step": 0}}, ctx)
    return {
        "step": Unit.of(step_snaps, cap, len(queue) / max(1, steps)),
        "effect": Unit.of(fx_snaps, cap, 0.0),
        "batched_effect": Unit.of(batch_snaps, cap, 0.0, per=BATCH),
        "join": Unit.of(join_snaps, cap, 0.0),
        "duplicate_delivery": Unit.of([dup], cap),
    }


def run(engine: Engine, *, quick: bool) -> dict[str, Any]:
    steps = 12 if quick else 40
    js = _jobstate(engine, steps)
    pt = _powertools(engine, steps)
    rows = []
    for unit, js_u, pt_u, naive in (
        ("step (back-to-back)", js["step_short"], pt["step"], NAIVE),
        (f"step ({LONG_STEP_S:g} s apart)", js["step_long"], pt["step"], NAIVE),
        ("step (4 KB input, back-to-back)", js["step_big_input"], "-", "-"),
        ("effect (once)", js["effect"], pt["effect"], NAIVE_FX),
        (f"batched effect (/{BATCH}, per effect)", js["batched_effect"], pt["batched_effect"],
         NAIVE_FX),
        ("child join", js["join"], pt["join"], None),
        ("callback answer (App)", js["callback_answer"], "-", "-"),
    ):
        for who, u in (("jobstate", js_u), ("powertools", pt_u), ("naive", naive)):
            if u == "-":
                continue  # not measured for this unit
            rows.append({"unit": unit, "who": who, **(u.to_dict() if u else {})})
    return {"steps_measured": steps, "batch": BATCH, "children": CHILDREN,
            "capacity_reported": engine.capacity,
            "regimes": {"short_step_s": SHORT_STEP_S, "long_step_s": LONG_STEP_S,
                        "timeout_s": TIMEOUT_S, "big_input_bytes": BIG_INPUT_BYTES,
                        "big_cursor_bytes": BIG_CURSOR_BYTES},
            "jobstate": {k: (v.to_dict() if isinstance(v, Unit) else v) for k, v in js.items()},
            "powertools": {k: v.to_dict() for k, v in pt.items()},
            "rows": rows}


HEADERS = ["unit", "who", "requests", "writes", "reads", "WCU engine", "of which GSI",
           "WRU billed", "RCU engine", "RRU billed", "invokes"]


def table_rows(fig: dict[str, Any]) -> list[list[Any]]:
    out = []
    for r in fig["rows"]:
        if "requests" not in r:
            out.append([r["unit"], r["who"], *([None] * (len(HEADERS) - 2))])
            continue
        out.append([r["unit"], r["who"], r["requests"], r["writes"], r["reads"], r["wcu"],
                    r["gsi_wcu"], r["billed_wru"], r["rcu"], r["billed_rru"], r["invokes"]])
    return out
