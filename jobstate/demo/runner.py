"""`jobstate demo`: the scenarios on the local runtime, with chaos, checked end to end."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import JobStateError
from ..fanout import rollup
from ..local import Chaos, LocalRuntime
from ..records import JobView
from ..status import JobStatus
from . import sink

APP_REF = "jobstate.demo.app:app"
APPROVAL = {"approved_by": "the demo's approver"}


@dataclass
class Scenario:
    name: str
    title: str
    job_type: str
    job_types: tuple[str, ...]
    input: dict[str, Any]
    effects_expected: int
    check: Callable[[Any], str | None]
    job_id: str = ""
    started: float = 0.0
    ended: float | None = None
    view: JobView | None = None
    done: float = 0.0
    total: float | None = None
    unit: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoConfig:
    seed: int = 1
    chaos: Chaos | None = None  # None: Chaos.default(seed)
    lines: int = 20_000
    batch_lines: int = 400
    users: int = 2_000
    chains: int = 8
    mail_batch: int = 25
    etl_seconds: float = 5.0
    approve_after_s: float = 2.0  # the demo's "human" answers the approval this late
    timeout_ms: int = 1_500
    concurrency: int = 4
    # The run stops when no scenario has moved (status, step, progress) for `stall_s`
    # (at least two killed invocations' leases, so a long --timeout-ms is not a stall), or
    # after `time_limit_s` in all: a busy machine is slow, not stuck, so only a stall
    # ends a run early.
    time_limit_s: float = 300.0
    stall_s: float = 45.0
    endpoint_url: str | None = None
    keep_dir: bool = False

    @property
    def stall_window_s(self) -> float:
        lease_s = self.timeout_ms / 1000 + 5.0  # a killed invocation's lease (grace: ≤ 5 s)
        return max(self.stall_s, 2 * lease_s + 10.0)


Progress = Callable[[list[Scenario]], None]


def _make_file(path: Path, lines: int) -> int:
    total = 0
    with open(path, "w") as f:
        for i in range(lines):
            value = (i * 7919 + 13) % 1000
            total += value
            f.write(f"user-{i:06d},{value},{'x' * (i % 17)}\n")
    return total


def _scenarios(cfg: DemoConfig, root: Path, db: str) -> list[Scenario]:
    path = root / "big-input.csv"
    expected_sum = _make_file(path, cfg.lines)
    batches = -(-cfg.lines // cfg.batch_lines)

    def file_ok(result: Any) -> str | None:
        want = {"lines": cfg.lines, "sum": expected_sum}
        return None if result == want else f"result {result} != expected {want}"

    def etl_ok(result: Any) -> str | None:
        return None if result == {"rows": 4242} else f"unexpected result {result}"

    def approval_ok(result: Any) -> str | None:
        return None if result == APPROVAL else f"unexpected result {result}"

    def mail_ok(result: Any) -> str | None:
        want = {"sent": cfg.users, "chains": min(cfg.chains, cfg.users)}
        return None if result == want else f"result {result} != expected {want}"

    return [
        Scenario("file", f"{cfg.lines:,} lines in batches, many short invocations",
                 "demo-file", ("demo-file",),
                 {"path": str(path), "lines": cfg.lines, "batch": cfg.batch_lines,
                  "sink": db, "work_s": 0.03}, batches + 1, file_ok),
        Scenario("etl", "external ETL: start once, poll by token, notify once",
                 "demo-etl", ("demo-etl",),
                 {"sink": db, "seconds": cfg.etl_seconds, "rows": 4242}, 2, etl_ok),
        Scenario("mail", f"{cfg.users:,} users mailed by {cfg.chains} worker chains + join",
                 "demo-mail", ("demo-mail", "demo-mail-chain"),
                 {"sink": db, "users": cfg.users, "chains": cfg.chains,
                  "batch": cfg.mail_batch, "latency_s": 0.001}, cfg.users + 1, mail_ok),
        Scenario("approval", "a human approval: waits on a callback, no invocation meanwhile",
                 "demo-approval", ("demo-approval",), {"sink": db, "timeout_s": 600}, 2,
                 approval_ok),
    ]


def _executed(sc: Scenario, db: str) -> tuple[int, int]:
    """(effects executed, distinct effects) as the outside world saw them."""
    outbox = sink.Outbox(db)
    if sc.name == "file":
        return outbox.count(("file-batch", "file-summary"))
    if sc.name == "approval":
        return outbox.count(("approval-request", "approval-done"))
    if sc.name == "etl":
        runs, _ = sink.FakeEtl(db).runs(sc.job_id)
        rows, distinct = outbox.count(("etl-notify",))
        return runs + rows, min(runs, 1) + distinct
    return outbox.count(("mail", "mail-summary"))


def _approve(rt: LocalRuntime, db: str, cfg: DemoConfig, scs: list[Scenario],
             answered: set[str]) -> None:
    """The outside approver: answers each approval request `approve_after_s` after its
    scenario started, with the token the job sent it. The job is due at once and the
    runtime's sweeper runs it (a `JobStore` answer; `App.complete_callback` would invoke
    the function itself)."""
    started = {sc.job_id: sc.started for sc in scs}
    for job_id, payload in sink.Outbox(db).sent("approval-request"):
        if job_id in answered or time.monotonic() - started.get(job_id, 0) < \
                cfg.approve_after_s:
            continue
        rt.store.complete_callback(payload["token"], APPROVAL)
        answered.add(job_id)


def _poll(rt: LocalRuntime, scs: list[Scenario]) -> None:
    for sc in scs:
        if sc.ended is not None:
            continue
        view = rt.store.get(sc.job_id)
        sc.view = view
        prog = rollup(rt.store, view) if view.children_total else view.progress
        sc.done, sc.total, sc.unit = prog.done, prog.total, prog.unit or ""
        if view.status.terminal:
            sc.ended = time.monotonic()


def run_demo(cfg: DemoConfig | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run the scenarios; returns the JSON-ready summary (`ok`, `scenarios`, ...)."""
    cfg = cfg or DemoConfig()
    chaos = cfg.chaos if cfg.chaos is not None else Chaos.default(cfg.seed)
    root = Path(tempfile.mkdtemp(prefix="jobstate-demo-"))
    db = str(root / "outside-world.sqlite")
    sink.create(db)
    began = time.monotonic()
    scs = _scenarios(cfg, root, db)
    rt = LocalRuntime(APP_REF, timeout_ms=cfg.timeout_ms, endpoint_url=cfg.endpoint_url,
                      table=f"jobstate-demo-{uuid.uuid4().hex[:8]}", chaos=chaos,
                      max_retry_attempts=2, recursive_loop="Allow",
                      concurrency=cfg.concurrency, sweep_interval_s=1.0, time_scale=0.02,
                      work_dir=str(root / "runtime"))
    timed_out: str | None = None
    try:
        with rt:
            for sc in scs:
                sc.started = time.monotonic()
                # Chaos decisions are keyed by job id and step: fixed ids make a seed
                # reproducible (the table is new for every run).
                sc.job_id = rt.start(sc.job_type, sc.input, job_id=f"{sc.job_type}-{cfg.seed}")
            seen: tuple[Any, ...] = ()
            moved = time.monotonic()
            answered: set[str] = set()
            while True:
                _approve(rt, db, cfg, scs, answered)
                _poll(rt, scs)
                if progress is not None:
                    progress(scs)
                if all(sc.ended is not None for sc in scs):
                    break
                now = time.monotonic()
                state = tuple((sc.view.status, sc.view.step, sc.done) if sc.view else None
                              for sc in scs)
                if state != seen:
                    seen, moved = state, now
                if now - moved > cfg.stall_window_s:
                    timed_out = f"made no progress for {cfg.stall_window_s:g}s"
                    break
                if now - began > cfg.time_limit_s:
                    timed_out = f"did not finish within the {cfg.time_limit_s:g}s limit"
                    break
                time.sleep(0.4)
            stats = rt.stats_dict()
            messages = list(rt.messages)
        return _summary(cfg, chaos, scs, rt, stats, messages, db, began, timed_out)
    finally:
        if not cfg.keep_dir:
            shutil.rmtree(root, ignore_errors=True)


def _hints(cfg: DemoConfig, stats: dict[str, Any], timed_out: str | None) -> list[str]:
    """What to try when a run failed for the machine's sake rather than jobstate's."""
    hints = []
    kills = int(stats["total"].get("kills_at_timeout", 0))
    if kills:
        hints.append(f"{kills} invocation(s) ran past the {cfg.timeout_ms} ms timeout and "
                     "were killed: this machine looks slow or busy; give the emulated "
                     f"Lambda longer with --timeout-ms {max(cfg.timeout_ms * 4, 6_000)}")
    if timed_out and timed_out.startswith("made no progress"):
        hints.append(f"the run {timed_out}; `jobstate demo --keep` keeps the workers' logs "
                     "to see why (on a busy machine, raise --timeout-ms)")
    elif timed_out:
        hints.append(f"the run {timed_out}; on a slow or busy machine try --time-limit "
                     f"{cfg.time_limit_s * 2:g}, or fewer --users/--lines")
    return hints


def _summary(cfg: DemoConfig, chaos: Chaos, scs: list[Scenario], rt: LocalRuntime,
             stats: dict[str, Any], messages: list[str], db: str, began: float,
             timed_out: str | None) -> dict[str, Any]:
    out = []
    for sc in scs:
        s = rt.stats.for_types(sc.job_types)
        executed, distinct = _executed(sc, db)
        view = sc.view
        status = view.status.value if view else "UNKNOWN"
        problem = None
        if view is None or view.status != JobStatus.SUCCEEDED:
            problem = (view.error if view and view.error else
                       f"{sc.name} is still {status}: the run {timed_out}")
        elif (bad := sc.check(view.result)) is not None:
            problem = bad
        elif executed != sc.effects_expected or distinct != sc.effects_expected:
            problem = (f"{executed} effects executed ({distinct} distinct), "
                       f"{sc.effects_expected} expected")
        out.append({
            "name": sc.name, "title": sc.title, "job_id": sc.job_id, "status": status,
            "ok": problem is None, "problem": problem,
            "invocations": s.invocations, "steps": s.steps,
            "duplicates_delivered": s.duplicates_delivered,
            "crashes_injected": s.crashes_injected, "kills_at_timeout": s.kills_at_timeout,
            "lost_continuations": s.lost_continuations, "throttled_invokes": s.throttled_invokes,
            "throttled_dynamodb": s.throttled_dynamodb, "lambda_retries": s.retries,
            "takeovers": s.takeovers, "noops": s.noops, "swept": s.swept,
            "effects_expected": sc.effects_expected, "effects_executed": executed,
            "effects_distinct": distinct,
            "wall_s": round((sc.ended or time.monotonic()) - sc.started, 2),
            "result": view.result if view else None,
        })
    ok = all(o["ok"] for o in out) and not timed_out
    return {
        "ok": ok,
        "seed": cfg.seed,
        "chaos": chaos.to_dict(),
        "wall_s": round(time.monotonic() - began, 2),
        "scenarios": out,
        "runtime": {"sweeps": stats["sweeps"], "cold_starts": stats["cold_starts"],
                    "concurrency": cfg.concurrency, "timeout_ms": cfg.timeout_ms,
                    "total": stats["total"]},
        "messages": messages if ok else [*messages, *_hints(cfg, stats, timed_out)],
    }


__all__ = ["DemoConfig", "JobStateError", "Scenario", "run_demo"]
