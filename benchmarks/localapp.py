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


@app.job("util-adaptive", max_steps=1000)
def util_adaptive(ctx: jobstate.StepContext) -> Any:
    return _loop(ctx, adaptive=True)


@app.job("util-fixed", max_steps=1000)
def util_fixed(ctx: jobstate.StepContext) -> Any:
    return _loop(ctx, adaptive=False)
