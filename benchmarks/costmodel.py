"""Figure 5's cost model: dollars per million steps with the sweeper's cost included.

Measured, not assumed. The model (printed with the figure and stated in
docs/performance.md):

* J jobs (50: template.yaml's WorkerReservedConcurrency default) run at once, each on its
  own warm container: its own `App` and `JobStore` (so whatever a container caches is
  per job, as when a chain's next step lands on the environment that just finished), all
  sharing one botocore client, started P/J apart;
* every job steps with period P on its container's own `ManualClock`: the step takes P
  seconds of that clock and the next step is claimed as soon as it committed (P = 10 s
  for back-to-back steps, 60 s for long steps); Lambda's remaining time counts down from
  a 900 s timeout (template.yaml's WorkerTimeout default) at each delivery;
* the sweeper runs every S = 60 s (template.yaml's `rate(1 minute)`) on its own JobStore
  and clock: `jobstate.sweep`, following `next_token` until it is None; whatever it
  dispatches is delivered to the job's container like any step event;
* after one period of warm-up (each job started and ran its first step), a window of H
  simulated seconds (3,600; 180 with --quick: in steady state the per-step figures do
  not depend on H) is metered: every request of the steps and of the sweeper, on two
  Meters. Per step = total / steps committed in the window. Lambda requests = step
  deliveries + one sweeper invocation per S. Dollars with cost.py's prices;
* each period twice: the job type with history "recent" (the step's own two writes: the
  figures issue 17 targets) and with the default history, "steps" (every step kept: one
  history item per 16 steps more, what issue 20 priced).

Events are processed in order of their start time; a step's handler call is atomic (it
claims, runs and commits before the next event), which is what one container per job
does anyway.
"""

from __future__ import annotations

import heapq
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import jobstate
from jobstate.clock import ManualClock
from jobstate.historymode import HistoryMode
from jobstate.local.engines import dynamodb_client

from .common import LambdaContext
from .cost import PerStep
from .engine import REGION, Engine, Meter, Snapshot

JOBS = 50
SWEEP_S = 60.0
TIMEOUT_S = 900.0
BACK_TO_BACK_S = 10.0
LONG_S = 60.0
WINDOW_S = 3600.0
QUICK_WINDOW_S = 180.0
T0_MS = 1_800_000_000_000
JOB_TYPE = "cost-step"


@dataclass(frozen=True)
class Model:
    """One cost-model run: J jobs stepping every `step_s`, the sweeper every `sweep_s`."""

    name: str
    step_s: float
    jobs: int = JOBS
    sweep_s: float = SWEEP_S
    window_s: float = WINDOW_S
    timeout_s: float = TIMEOUT_S
    history: HistoryMode = "recent"  # the job type's history mode

    def describe(self) -> str:
        return (f"{self.jobs} jobs, a step every {self.step_s:g} s each, sweep every "
                f"{self.sweep_s:g} s, {self.window_s:g} s simulated, history={self.history!r}")


@dataclass
class Totals:
    """What one run metered inside its window."""

    steps: int  # steps committed (each dispatched its next step)
    deliveries: int  # step events delivered to the worker (Lambda requests)
    sweeps: int  # sweeper invocations (Lambda requests)
    redispatched: int  # step events the sweeper sent
    scanned: int  # jobs the sweeper looked at (SweepReport.scanned)
    steps_usage: dict[str, float | None]  # writes, reads, wru, rru of the workers
    sweeper_usage: dict[str, float | None]  # the same for the sweeper

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usage(snap: Snapshot, capacity: bool) -> dict[str, float | None]:
    return {"requests": float(snap.requests), "writes": float(snap.writes),
            "reads": float(snap.reads),
            "wru": snap.billed_wru if capacity else None,
            "rru": snap.billed_rru if capacity else None}


def per_step(totals: Totals, model: Model) -> dict[str, Any]:
    """Units and dollars per committed step, the sweeper's share separately (pure).

    Capacity when the engine reported it; otherwise 1 unit per request (moto), as in
    `cost.run`.
    """
    n = max(1, totals.steps)

    def units(u: dict[str, float | None]) -> tuple[float, float]:
        if u["wru"] is not None and u["rru"] is not None:
            return float(u["wru"]), float(u["rru"])
        return float(u["writes"] or 0.0), float(u["reads"] or 0.0)

    sw_wru, sw_rru = units(totals.steps_usage)
    sp_wru, sp_rru = units(totals.sweeper_usage)
    steps = PerStep(sw_wru / n, sw_rru / n, totals.deliveries / n)
    sweeper = PerStep(sp_wru / n, sp_rru / n, totals.sweeps / n)
    total = PerStep(steps.wru + sweeper.wru, steps.rru + sweeper.rru,
                    steps.lambda_requests + sweeper.lambda_requests)
    return {
        "model": asdict(model), "detail": model.describe(), "totals": totals.to_dict(),
        "steps": asdict(steps), "sweeper": asdict(sweeper), "total": asdict(total),
        "usd_per_million": total.usd_per_million(),
        "usd_per_million_steps_only": steps.usd_per_million(),
        "usd_per_million_sweeper": sweeper.usd_per_million(),
        "basis": ("measured capacity, AWS billing rules"
                  if totals.steps_usage["wru"] is not None
                  else "request counts, 1 unit per request (engine reports no capacity)"),
    }


class _Container:
    """One warm Lambda environment running one job's steps."""

    def __init__(self, table: str, engine: Engine, client: Any, model: Model) -> None:
        self.clock = ManualClock(T0_MS)
        store = jobstate.JobStore(table, endpoint_url=engine.endpoint_url, region=REGION,
                                  client=client, clock=self.clock)
        self.continuation = jobstate.InMemoryContinuation()
        self.app = jobstate.App(store, self.continuation, clock=self.clock)
        clock, step_s = self.clock, model.step_s

        @self.app.job(JOB_TYPE, max_steps=1_000_000, deadline=None, history=model.history)
        def cost_step(ctx: jobstate.StepContext) -> None:
            clock.advance(step_s)
            ctx.cursor["n"] = ctx.step + 1


def simulate(engine: Engine, model: Model) -> Totals:
    """Runs the model on the engine; returns what was metered inside the window."""
    workers, sweeper_meter = Meter(), Meter()
    table = f"cost-{uuid.uuid4().hex[:8]}"
    setup = jobstate.JobStore(table, endpoint_url=engine.endpoint_url, region=REGION)
    setup.create_table()
    shared = workers.attach(dynamodb_client(engine.endpoint_url))
    containers = [_Container(table, engine, shared, model) for _ in range(model.jobs)]
    sweep_clock = ManualClock(T0_MS)
    sweep_store = jobstate.JobStore(table, endpoint_url=engine.endpoint_url, region=REGION,
                                    client=sweeper_meter.attach(
                                        dynamodb_client(engine.endpoint_url)),
                                    clock=sweep_clock)
    sweep_cont = jobstate.InMemoryContinuation()

    period_ms = int(model.step_s * 1000)
    begin = T0_MS + period_ms
    end = begin + int(model.window_s * 1000)
    queue: list[tuple[int, int, int, str, Any]] = []  # (time, order, seq, kind, data)
    seq = 0

    def push(t: int, kind: str, data: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(queue, (t, 1 if kind == "sweep" else 0, seq, kind, data))

    for i in range(model.jobs):
        push(T0_MS + i * period_ms // model.jobs, "start", i)
    sweep_ms = int(model.sweep_s * 1000)
    for t in range(begin, end, sweep_ms):
        push(t, "sweep", None)

    owner: dict[str, int] = {}
    steps = deliveries = sweeps = redispatched = scanned = 0
    at_begin: tuple[Snapshot, Snapshot] | None = None
    while queue and queue[0][0] < end:
        t, _, _, kind, data = heapq.heappop(queue)
        if at_begin is None and t >= begin:
            at_begin = (workers.snapshot(), sweeper_meter.snapshot())
        counted = t >= begin
        if kind == "sweep":
            sweep_clock.set(t)
            sweeps += 1
            token: str | None = None
            while True:
                report = jobstate.sweep(sweep_store, sweep_cont, next_token=token)
                scanned += report.scanned
                token = report.next_token
                if token is None:
                    break
            for event in sweep_cont.pop_all():
                redispatched += 1
                push(t, "deliver", (owner[event["jobstate"]["job_id"]], event))
            continue
        if kind == "start":
            box = containers[data]
            box.clock.set(t)
            owner[box.app.start(JOB_TYPE, {"job": data})] = data
        else:
            i, event = data
            box = containers[i]
            box.clock.set(max(t, box.clock.now_ms()))
            deadline = box.clock.now_ms() + int(model.timeout_s * 1000)
            clock = box.clock
            box.app.handler(event, LambdaContext(lambda c=clock, d=deadline: d - c.now_ms()))
            deliveries += counted
        sent = box.continuation.pop_all()
        if kind == "deliver" and counted:
            steps += len(sent)
        for event in sent:
            push(box.clock.now_ms(), "deliver", (owner[event["jobstate"]["job_id"]], event))
    if at_begin is None:
        raise RuntimeError("the cost model's window saw no event")
    cap = engine.capacity
    return Totals(steps, deliveries, sweeps, redispatched, scanned,
                  usage(workers.snapshot() - at_begin[0], cap),
                  usage(sweeper_meter.snapshot() - at_begin[1], cap))


def models(quick: bool) -> list[Model]:
    window = QUICK_WINDOW_S if quick else WINDOW_S
    # The floor (history "recent": the step's two writes) and the default ("steps":
    # every step kept, one history item per 16 steps), each for both step periods.
    return [Model("back-to-back", BACK_TO_BACK_S, window_s=window),
            Model("long", LONG_S, window_s=window),
            Model("back-to-back, default history", BACK_TO_BACK_S, window_s=window,
                  history="steps"),
            Model("long, default history", LONG_S, window_s=window, history="steps")]


def run(engine: Engine, *, quick: bool) -> dict[str, Any]:
    return {m.name: per_step(simulate(engine, m), m) for m in models(quick)}


HEADERS = ["model", "steps", "WRU steps", "RRU steps", "WRU sweeper", "RRU sweeper",
           "Lambda req", "$ / M steps", "of which sweeper"]


def table_rows(fig: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for name, r in fig.items():
        rows.append([f"{name}: {r['detail']}", r["totals"]["steps"], r["steps"]["wru"],
                     r["steps"]["rru"], r["sweeper"]["wru"], r["sweeper"]["rru"],
                     r["total"]["lambda_requests"], f"${r['usd_per_million']:.2f}",
                     f"${r['usd_per_million_sweeper']:.4f}"])
    return rows
