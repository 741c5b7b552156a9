"""Figure 3: how much of each invocation's timeout does useful work.

A step loops `while has_time(): do_batch()`; batch durations are drawn from a lognormal
distribution (seeded). Two stopping rules on the same draws:

* jobstate: `jobstate.timebudget.TimeBudget.has_time()` — exactly what `ctx.has_time()`
  calls — with `App`'s default reserve for the commit and the continuation;
* fixed margin (the seeds' rule): stop when less than `margin_s` is left.

Simulated deterministically on a `ManualClock` (no engine, no real waiting): a batch that
would end after `deadline - commit` means Lambda kills the invocation, and everything it
did since its last commit is lost (counted as 0 useful time and one timeout).
"""

from __future__ import annotations

import inspect
import math
import random
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from jobstate.app import App
from jobstate.clock import ManualClock
from jobstate.timebudget import TimeBudget

DEFAULT_RESERVE_MS = int(inspect.signature(App.__init__).parameters["reserve_ms"].default)
COMMIT_MS = 60  # claim is before the loop; commit + async invoke after it (~tens of ms)
MODE = "simulated: ManualClock-driven jobstate.timebudget.TimeBudget (no subprocesses)"


@dataclass(frozen=True)
class Workload:
    timeout_s: float = 60.0
    mean_s: float = 2.0
    sd_s: float = 0.7
    invocations: int = 500
    seed: int = 8

    def lognormal(self) -> tuple[float, float]:
        """(mu, sigma) of the underlying normal for the given mean and sd."""
        sigma2 = math.log(1 + (self.sd_s / self.mean_s) ** 2)
        return math.log(self.mean_s) - sigma2 / 2, math.sqrt(sigma2)

    def draws(self, invocation: int) -> Callable[[], float]:
        """Batch durations (ms) of one invocation: the same for every policy."""
        rng = random.Random(self.seed * 1_000_003 + invocation)
        mu, sigma = self.lognormal()
        return lambda: rng.lognormvariate(mu, sigma) * 1000.0


@dataclass
class Outcome:
    policy: str
    invocations: int
    utilisation: float  # mean share of the timeout spent on batches that were committed
    utilisation_p5: float  # 5th percentile across invocations (timeouts count as 0)
    timeouts: int
    batches_per_invocation: float
    mean_left_s: float  # time left when the loop stopped (invocations that were not killed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# (budget, clock, deadline_ms, next batch's duration in ms) -> start another batch?
Policy = Callable[[TimeBudget, ManualClock, int, float], bool]


def adaptive(budget: TimeBudget, clock: ManualClock, deadline: int, nxt: float) -> bool:
    return budget.has_time()


def fixed_margin(margin_s: float) -> Policy:
    def policy(budget: TimeBudget, clock: ManualClock, deadline: int, nxt: float) -> bool:
        return deadline - clock.now_ms() > margin_s * 1000

    return policy


def oracle(budget: TimeBudget, clock: ManualClock, deadline: int, nxt: float) -> bool:
    """Knows the next batch's duration: the ceiling no stopping rule can beat."""
    return clock.now_ms() + nxt + budget.reserve_ms <= deadline


def best_margin_in_hindsight(work: Workload, *, step_s: float = 0.1) -> tuple[float, Outcome]:
    """The smallest fixed margin with zero timeouts *on these very draws*, and its outcome.

    No rule that decides from the past can beat it without risking a kill on this
    workload (it knows, after the fact, how long the longest final batch was): the
    ceiling for "as much of the timeout as possible, never killed".
    """
    lo, hi = 0.0, work.timeout_s
    while hi - lo > step_s:
        mid = (lo + hi) / 2
        if simulate(fixed_margin(mid), work).timeouts == 0:
            hi = mid
        else:
            lo = mid
    return hi, simulate(fixed_margin(hi), work, name=f"best margin in hindsight ({hi:.1f} s)")


def simulate(policy: Policy, work: Workload, *, name: str = "",
             reserve_ms: int = DEFAULT_RESERVE_MS, commit_ms: int = COMMIT_MS) -> Outcome:
    """Run `work.invocations` invocations; deterministic for a given workload."""
    utils: list[float] = []
    lefts: list[float] = []
    timeouts = 0
    batches = 0
    timeout_ms = int(work.timeout_s * 1000)
    for i in range(work.invocations):
        clock = ManualClock(1_800_000_000_000)
        start = clock.now_ms()
        deadline = start + timeout_ms
        budget = TimeBudget(lambda d=deadline, c=clock: d - c.now_ms(),  # type: ignore[misc]
                            clock.now_ms, reserve_ms=reserve_ms)
        draw = work.draws(i)
        useful = 0.0
        killed = False
        while True:
            d = draw()
            if not policy(budget, clock, deadline, d):
                break
            if clock.now_ms() + d > deadline:
                killed = True
                break
            clock.advance(d / 1000)
            useful += d
            batches += 1
        if not killed and clock.now_ms() + commit_ms > deadline:
            killed = True
        if killed:
            timeouts += 1
            utils.append(0.0)
            continue
        lefts.append((deadline - clock.now_ms()) / 1000)
        utils.append(useful / timeout_ms)
    ordered = sorted(utils)
    return Outcome(
        policy=name, invocations=work.invocations, utilisation=statistics.fmean(utils),
        utilisation_p5=ordered[max(0, int(0.05 * len(ordered)) - 1)] if ordered else 0.0,
        timeouts=timeouts, batches_per_invocation=batches / max(1, work.invocations),
        mean_left_s=statistics.fmean(lefts) if lefts else 0.0,
    )


def local_runtime_status() -> str:
    """Whether jobstate.local.LocalRuntime exists with a time_scale (not used if so: the
    simulation is what the tests pin down; reported for the record)."""
    try:
        from jobstate.local import LocalRuntime
    except Exception:
        return "jobstate.local.LocalRuntime not available"
    params = inspect.signature(LocalRuntime).parameters
    return ("jobstate.local.LocalRuntime has time_scale" if "time_scale" in params
            else "jobstate.local.LocalRuntime has no time_scale")


def run_local(endpoint_url: str, *, invocations: int, seed: int = 8) -> dict[str, Any]:
    """Cross-check on `jobstate.local.LocalRuntime`: real worker subprocesses, SIGKILLed at
    a real deadline, both policies side by side, everything scaled by 1/10 (see
    benchmarks/localapp.py). `time_scale` scales Lambda's own delays (its retries after a
    kill) by the same factor; it does not scale the timeout, so the workload is scaled.
    """
    import uuid

    from jobstate.local import LocalRuntime

    from . import localapp

    timeout_ms = int(60_000 * localapp.SCALE)
    inp = {"mean_s": 2.0, "sd_s": 0.7, "seed": seed, "margin_s": 12.0,
           "invocations": invocations}
    with LocalRuntime("benchmarks.localapp:app", timeout_ms=timeout_ms,
                      endpoint_url=endpoint_url, table=f"util-{uuid.uuid4().hex[:8]}",
                      concurrency=2, time_scale=localapp.SCALE, sweep_interval_s=1.0,
                      lease_grace_s=0.5, dispatch_timeout_s=2.0) as rt:
        ids = {"jobstate has_time()": rt.start("util-adaptive", inp),
               "fixed 12 s margin": rt.start("util-fixed", inp)}
        views = rt.wait(list(ids.values()), timeout_s=invocations * timeout_ms / 1000 * 4 + 60)
        stats = rt.stats_dict()
    rows = []
    for (policy, jid), jt in zip(ids.items(), ("util-adaptive", "util-fixed"), strict=True):
        view = views[jid]
        res = view.result if isinstance(view.result, dict) else {}
        kills = int(stats["by_type"].get(jt, {}).get("kills_at_timeout", 0))
        committed = int(res.get("committed", 0))
        total = committed + kills
        rows.append({
            "policy": policy, "status": view.status.value, "invocations": total,
            "timeouts": kills,
            "utilisation": res.get("useful_ms", 0.0) / (total * timeout_ms) if total else 0.0,
            "mean_left_s": res.get("left_ms", 0.0) / max(1, committed) / 1000 / localapp.SCALE,
        })
    return {"mode": f"jobstate.local.LocalRuntime, worker subprocesses killed at a real "
                    f"{timeout_ms} ms deadline; workload scaled x{localapp.SCALE:g}",
            "timeout_ms": timeout_ms, "rows": rows}


def run(*, quick: bool, seed: int = 8) -> dict[str, Any]:
    n = 300 if quick else 2000
    rows = []
    for timeout_s, sd_s in ((60.0, 0.7), (60.0, 1.4), (300.0, 0.7), (900.0, 0.7)):
        work = Workload(timeout_s=timeout_s, sd_s=sd_s, invocations=n, seed=seed)
        _, hindsight = best_margin_in_hindsight(work)
        for out in (simulate(adaptive, work, name="jobstate has_time()"),
                    simulate(fixed_margin(12.0), work, name="fixed 12 s margin"),
                    hindsight,
                    simulate(oracle, work, name="oracle (knows each batch's length)")):
            rows.append({"timeout_s": timeout_s, "batch_mean_s": work.mean_s,
                         "batch_sd_s": sd_s, **out.to_dict()})
    headline = rows[0]
    return {"mode": MODE, "local_runtime": local_runtime_status(),
            "reserve_ms": DEFAULT_RESERVE_MS, "commit_ms": COMMIT_MS, "seed": seed,
            "rows": rows, "headline": headline, "fixed": rows[1], "hindsight": rows[2],
            "oracle": rows[3]}


HEADERS = ["timeout s", "batch mean/sd s", "policy", "invocations", "utilisation",
           "p5", "timeouts", "batches/inv", "left at stop s"]


def table_rows(fig: dict[str, Any]) -> list[list[Any]]:
    return [[r["timeout_s"], f"{r['batch_mean_s']:g}/{r['batch_sd_s']:g}", r["policy"],
             r["invocations"], f"{100 * r['utilisation']:.1f}%",
             f"{100 * r['utilisation_p5']:.1f}%", r["timeouts"],
             r["batches_per_invocation"], r["mean_left_s"]] for r in fig["rows"]]
