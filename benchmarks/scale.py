"""Figure 4: scale — a fan-out of N worker chains, and one job over N items.

Runs on the in-process chaos `Driver` of `jobstate.testing` (events delivered in random
order, a ManualClock for Lambda's remaining time, no real waiting) against the run's
engine over HTTP. Requests, conditional-check failures and capacity are counted with the
same Meter as figure 1; wall time is real.

* fan-out: a parent step spawns N chains over N x 100 items (`ctx.spawn_chains`); each
  chain works through its range in 2 steps and completes, joining the parent; the last
  join dispatches the parent, which completes.
* items: one job over N items in batches of 100 (simulated batch time lognormal, mean 2 s,
  sd 0.7 s) with `while ctx.has_time()` under a 60 s timeout; the cursor is committed each
  step.
"""

from __future__ import annotations

import random
import time
from typing import Any

import jobstate
from jobstate.clock import ManualClock
from jobstate.testing import Driver

from .common import new_store
from .engine import Engine, Meter
from .utilisation import Workload

ITEMS_PER_CHAIN = 100
BATCH_ITEMS = 100
TIMEOUT_MS = 60_000
MODE = "in-process jobstate.testing.Driver (ManualClock, random delivery order)"


def _app(engine: Engine, meter: Meter, seed: int) -> tuple[jobstate.App, Any, ManualClock]:
    clock = ManualClock()
    store = new_store(engine, meter, clock, prefix="scale")
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont, clock=clock)
    work = Workload(seed=seed)
    mu, sigma = work.lognormal()
    rng = random.Random(seed)
    overruns = {"n": 0}

    @app.job("scale-parent")
    def parent(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            n = ctx.input["chains"]
            ctx.spawn_chains("scale-chain", total=n * ITEMS_PER_CHAIN, chains=n)
        return ctx.complete({"chains": ctx.input["chains"]})

    @app.job("scale-chain")
    def chain(ctx: jobstate.StepContext) -> Any:
        start, end = ctx.input["start"], ctx.input["end"]
        pos = ctx.cursor.get("pos", start)
        half = start + (end - start + 1) // 2
        pos = half if pos < half else end
        ctx.cursor["pos"] = pos
        ctx.progress(pos - start, end - start, "items")
        clock.advance(1.0)
        if pos >= end:
            return ctx.complete({"items": end - start})
        return None

    @app.job("scale-items", max_steps=100_000)
    def items(ctx: jobstate.StepContext) -> Any:
        total = ctx.input["total"]
        pos = ctx.cursor.get("pos", 0)
        while pos < total and ctx.has_time():
            clock.advance(rng.lognormvariate(mu, sigma))
            pos = min(total, pos + BATCH_ITEMS)
        if ctx.remaining_ms() < 0:
            overruns["n"] += 1  # Lambda would have killed this invocation
        ctx.cursor["pos"] = pos
        ctx.progress(pos, total, "items")
        if pos >= total:
            return ctx.complete({"items": total})
        return None

    return app, (cont, overruns), clock


def _measure(engine: Engine, job_type: str, inp: dict[str, Any], *, seed: int,
             duplicates: float = 0.0) -> dict[str, Any]:
    meter = Meter()
    app, (cont, overruns), clock = _app(engine, meter, seed)
    driver = Driver(app, cont, clock, seed=seed, duplicates=duplicates,
                    timeout_ms=TIMEOUT_MS)
    began = time.perf_counter()
    before = meter.snapshot()
    job_id = app.start(job_type, inp)
    driver.run_until_done([job_id], max_sweeps=50)
    wall = time.perf_counter() - began
    d = meter.snapshot() - before
    view = app.store.get(job_id)
    assert view.status == jobstate.JobStatus.SUCCEEDED, (view.status, view.error)
    cap = engine.capacity
    return {
        "job_type": job_type, **inp, "duplicates": duplicates,
        "requests": d.requests, "writes": d.writes, "reads": d.reads,
        "condition_failures": d.condition_failures,
        "wru_billed": d.billed_wru if cap else None,
        "rru_billed": d.billed_rru if cap else None,
        "invocations": driver.stats.delivered, "duplicates_delivered": driver.stats.duplicates,
        "sweeps": driver.stats.sweeps, "steps": view.step,
        "timeouts": overruns["n"], "wall_s": wall, "ops": dict(d.ops),
    }


def run(engine: Engine, *, quick: bool, seed: int = 8) -> dict[str, Any]:
    chains = (100, 300) if quick else (100, 300, 1000)
    if quick and engine.name != "dynamodb-local":
        chains = (30, 90)  # moto's tables slow down as they grow: keep --quick < 2 minutes
    items = (10_000, 30_000, 100_000)
    _measure(engine, "scale-parent", {"chains": 20}, seed=seed)  # warm the engine's JIT
    fanout = [_measure(engine, "scale-parent", {"chains": n}, seed=seed) for n in chains]
    fanout.append(_measure(engine, "scale-parent", {"chains": chains[0]}, seed=seed,
                           duplicates=0.1))
    item_rows = [_measure(engine, "scale-items", {"total": n}, seed=seed) for n in items]
    for r in fanout:
        r["per_unit"] = r["chains"]
    for r in item_rows:
        r["per_unit"] = r["total"] / 1000
    return {"mode": MODE, "items_per_chain": ITEMS_PER_CHAIN, "batch_items": BATCH_ITEMS,
            "fanout": fanout, "items": item_rows,
            "fanout_linear": linear([r for r in fanout if not r["duplicates"]]),
            "items_linear": linear(item_rows)}


def run_local(endpoint_url: str) -> dict[str, Any]:
    """Figure 4c: on `jobstate.local.LocalRuntime` — real worker processes, the async
    queue, the sweeper: fan-outs of N chains (2 steps each, then a join), and one job
    over 100,000 items (10 ms of real work per 100) under a 2 s function timeout."""
    import uuid

    from jobstate.local import LocalRuntime

    def measure(job_type: str, inp: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
        with LocalRuntime("benchmarks.localapp:app", timeout_ms=timeout_ms, concurrency=4,
                          endpoint_url=endpoint_url, table=f"fan-{uuid.uuid4().hex[:8]}",
                          recursive_loop="Allow", sweep_interval_s=5.0,
                          dispatch_timeout_s=60.0) as rt:
            began = time.perf_counter()
            view = rt.run(job_type, inp, timeout_s=600)
            wall = time.perf_counter() - began
            total = rt.stats_dict()["total"]
        assert view.status == jobstate.JobStatus.SUCCEEDED, (view.status, view.error)
        return {"job": job_type, **inp, "invocations": total["invocations"],
                "steps": total["steps"], "noops": total["noops"],
                "kills_at_timeout": total["kills_at_timeout"], "wall_s": wall,
                "invocations_per_s": total["invocations"] / wall, "result": view.result}

    rows = [measure("fan-parent", {"chains": n}, 30_000) for n in (100, 1000)]
    for r in rows:
        assert r["result"] == {"chains": r["chains"], "ok": r["chains"]}, r["result"]
    items = measure("items", {"total": 100_000}, 2_000)
    return {"mode": "jobstate.local.LocalRuntime: 4 worker processes, the async queue and "
                    "the sweeper, on the run's engine", "rows": rows, "items": items}


LOCAL_HEADERS = ["job", "invocations", "steps", "no-ops", "killed at timeout", "wall s",
                 "invocations/s"]


def local_rows(fig: dict[str, Any]) -> list[list[Any]]:
    rows = [*fig["rows"], fig["items"]]
    return [[f"{r['chains']} chains" if "chains" in r else f"{r['total']:,} items",
             r["invocations"], r["steps"], r["noops"], r["kills_at_timeout"], r["wall_s"],
             r["invocations_per_s"]] for r in rows]


def linear(rows: list[dict[str, Any]], min_r2: float = 0.99) -> dict[str, Any]:
    """Least-squares fit requests = a + b * units; growth is linear when R^2 >= min_r2."""
    xs = [float(r["per_unit"]) for r in rows]
    ys = [float(r["requests"]) for r in rows]
    return fit(xs, ys, min_r2)


def fit(xs: list[float], ys: list[float], min_r2: float = 0.99) -> dict[str, Any]:
    n = len(xs)
    if n < 2:
        return {"slope": None, "intercept": None, "r2": None, "linear": None}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx if sxx else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return {"slope": slope, "intercept": intercept, "r2": r2, "linear": r2 >= min_r2}


FANOUT_HEADERS = ["chains", "dup", "requests", "writes", "reads", "cond. fails", "WRU billed",
                  "RRU billed", "invocations", "req/chain", "WRU/chain", "wall s"]
ITEMS_HEADERS = ["items", "steps", "requests", "writes", "reads", "cond. fails", "WRU billed",
                 "timeouts", "req/1k items", "wall s"]


def fanout_rows(fig: dict[str, Any]) -> list[list[Any]]:
    return [[r["chains"], f"{r['duplicates']:.0%}", r["requests"], r["writes"], r["reads"],
             r["condition_failures"], r["wru_billed"], r["rru_billed"], r["invocations"],
             r["requests"] / r["chains"],
             None if r["wru_billed"] is None else r["wru_billed"] / r["chains"],
             r["wall_s"]] for r in fig["fanout"]]


def items_rows(fig: dict[str, Any]) -> list[list[Any]]:
    return [[r["total"], r["steps"], r["requests"], r["writes"], r["reads"],
             r["condition_failures"], r["wru_billed"], r["timeouts"],
             r["requests"] / (r["total"] / 1000), r["wall_s"]] for r in fig["items"]]
