"""The app behind figure 3's cross-check on `jobstate.local.LocalRuntime`.

Loaded by the runtime's worker subprocesses as `benchmarks.localapp:app`. Everything is
scaled by `SCALE` (1/10: a 6 s timeout for Lambda's 60 s, 200 ms batches for 2 s, and the
App's 1.5 s reserve becomes 150 ms), because the runtime kills workers in real time.
"""

from __future__ import annotations

import random
import time
from typing import Any

import jobstate

from .utilisation import Workload

SCALE = 0.1
app = jobstate.App(store=jobstate.JobStore(), reserve_ms=int(1500 * SCALE))


def _loop(ctx: jobstate.StepContext, adaptive: bool) -> Any:
    inp = ctx.input
    work = Workload(mean_s=inp["mean_s"], sd_s=inp["sd_s"], seed=inp["seed"])
    mu, sigma = work.lognormal()
    rng = random.Random(f"{inp['seed']}-{ctx.step}-{ctx.attempt}")
    useful_ms = 0.0
    while True:
        go = ctx.has_time() if adaptive else ctx.remaining_ms() > inp["margin_s"] * SCALE * 1000
        if not go:
            break
        d = rng.lognormvariate(mu, sigma) * SCALE
        time.sleep(d)
        useful_ms += d * 1000
    c = ctx.cursor
    c["useful_ms"] = c.get("useful_ms", 0.0) + useful_ms
    c["left_ms"] = c.get("left_ms", 0.0) + max(0, ctx.remaining_ms())
    c["committed"] = c.get("committed", 0) + 1
    if c["committed"] >= inp["invocations"]:
        return ctx.complete(dict(c))
    return None


@app.job("fan-parent", max_steps=10)
def fan_parent(ctx: jobstate.StepContext) -> Any:
    """Figure 4c: a fan-out of N chains on real worker processes."""
    if ctx.step == 0:
        n = ctx.input["chains"]
        ctx.spawn_chains("fan-chain", total=n * 100, chains=n)
    kids = ctx.children()
    return ctx.complete({"chains": len(kids),
                         "ok": sum(k.status is jobstate.JobStatus.SUCCEEDED for k in kids)})


@app.job("fan-chain", max_steps=10)
def fan_chain(ctx: jobstate.StepContext) -> Any:
    """Two steps over its range (a cursor committed in between), then it joins."""
    start, end = ctx.input["start"], ctx.input["end"]
    if "pos" not in ctx.cursor:
        ctx.cursor["pos"] = (start + end) // 2
        return None
    return ctx.complete({"items": end - start})


@app.job("items", max_steps=10_000)
def items(ctx: jobstate.StepContext) -> Any:
    """Figure 4c: one job over N items, 100 per batch, each batch 10 ms of real work."""
    total, pos = ctx.input["total"], ctx.cursor.get("pos", 0)
    while pos < total and ctx.has_time():
        time.sleep(0.01)
        pos = min(total, pos + 100)
    ctx.cursor["pos"] = pos
    ctx.progress(pos, total, "items")
    return ctx.complete({"items": pos}) if pos >= total else None


@app.job("util-adaptive", max_steps=1000)
def util_adaptive(ctx: jobstate.StepContext) -> Any:
    return _loop(ctx, adaptive=True)


@app.job("util-fixed", max_steps=1000)
def util_fixed(ctx: jobstate.StepContext) -> Any:
    return _loop(ctx, adaptive=False)
