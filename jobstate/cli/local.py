"""`jobstate demo` and `jobstate run`: jobs on the local Lambda runtime, with chaos."""

from __future__ import annotations

import os
import sys

import click

from ..codec import validate_job_type
from ..demo import DemoConfig, run_demo
from ..demo.render import DemoProgress, summary_table
from ..local import Chaos, LocalRuntime
from ..status import JobStatus
from .base import (
    cli,
    connection,
    emit,
    err,
    follow,
    json_flag,
    out,
    parse_json,
    print_job,
    settings,
)


@cli.command()
@connection
@json_flag
@click.option("--seed", type=int, default=1, show_default=True, help="Chaos seed.")
@click.option("--chaos", "chaos_spec", default="on", show_default=True,
              help="'on', 'off' or e.g. 'duplicate=0.2,crash=0.1,lost=0.05'.")
@click.option("--users", type=click.IntRange(1, 100_000), default=2_000, show_default=True)
@click.option("--chains", type=click.IntRange(1, 100), default=8, show_default=True)
@click.option("--lines", type=click.IntRange(1, 1_000_000), default=20_000, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--timeout-ms", type=click.IntRange(500, 900_000), default=1_500,
              show_default=True, help="The emulated Lambda timeout (raise it on a slow machine).")
@click.option("--time-limit", type=click.FloatRange(5, 3_600), default=300, show_default=True,
              help="Seconds before the run gives up (it also stops after 45 s without "
                   "progress, longer with a long --timeout-ms).")
@click.option("--keep", is_flag=True, help="Keep the temp dir (worker logs, sqlite sink).")
def demo(as_json: bool, seed: int, chaos_spec: str, users: int, chains: int, lines: int,
         concurrency: int, timeout_ms: int, time_limit: float, keep: bool) -> None:
    """Run the four scenarios end to end on the local runtime, with chaos, and check them."""
    cfg = DemoConfig(seed=seed, chaos=Chaos.parse(chaos_spec, seed), users=users,
                     chains=chains, lines=lines, concurrency=concurrency,
                     timeout_ms=timeout_ms, time_limit_s=time_limit,
                     endpoint_url=settings().endpoint_url
                     or os.environ.get("JOBSTATE_ENDPOINT_URL") or None, keep_dir=keep)
    if not as_json:
        err.print(f"jobstate demo: seed {seed}, chaos {chaos_spec}; starting a local Lambda "
                  f"emulation ({concurrency} workers, {cfg.timeout_ms} ms timeout)...")
    with DemoProgress(err) as progress:
        result = run_demo(cfg, progress)
    if as_json:
        emit(result)
    else:
        out.print(summary_table(result))
        for s in result["scenarios"]:
            if s["problem"]:
                out.print(f"[red]{s['name']}: {s['problem']}")
        for m in result["messages"]:
            err.print(f"note: {m}")
        out.print("[green]all scenarios succeeded with every effect executed exactly once"
                  if result["ok"] else "[red]demo FAILED")
    if not result["ok"]:
        raise click.exceptions.Exit(1)


@cli.command()
@connection
@json_flag
@click.argument("app_ref", metavar="MODULE:APP")
@click.argument("job_type")
@click.option("--input", "input_json", default="null", help="Job input as JSON.")
@click.option("--job-id", default=None, help="Job id (default: generated).")
@click.option("--timeout-ms", type=click.IntRange(100, 900_000), default=3_000,
              show_default=True, help="Function timeout of each invocation.")
@click.option("--chaos", "chaos_spec", default="off", show_default=True,
              help="'on', 'off' or e.g. 'duplicate=0.2,crash=0.1,lost=0.05'.")
@click.option("--seed", type=int, default=0, show_default=True, help="Chaos seed.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@click.option("--max-retry-attempts", type=click.IntRange(0, 2), default=2, show_default=True)
@click.option("--recursive-loop", type=click.Choice(["Terminate", "Allow"]), default="Allow",
              show_default=True, help="Lambda's RecursiveLoop setting to emulate.")
@click.option("--time-scale", type=float, default=0.02, show_default=True,
              help="Scale of Lambda's retry delays and event age (1 = real time).")
@click.option("--dispatch-timeout-s", type=float, default=5.0, show_default=True,
              help="Override the store's dispatch timeout in the workers (0: keep the app's).")
@click.option("--wait", "wait_s", type=float, default=600.0, show_default=True,
              help="Give up after this many seconds.")
def run(as_json: bool, app_ref: str, job_type: str, input_json: str, job_id: str | None,
        timeout_ms: int, chaos_spec: str, seed: int, concurrency: int,
        max_retry_attempts: int, recursive_loop: str, time_scale: float,
        dispatch_timeout_s: float, wait_s: float) -> None:
    """Run one job of MODULE:APP on the local runtime until it finishes."""
    if ":" not in app_ref:
        raise click.BadParameter("must look like 'package.module:app'.", param_hint="MODULE:APP")
    validate_job_type(job_type)
    payload = parse_json(input_json, "--input")
    chaos = Chaos.parse(chaos_spec, seed)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # so the workers import modules of this directory
    s = settings()
    endpoint = s.endpoint_url or os.environ.get("JOBSTATE_ENDPOINT_URL") or None
    if job_id is None and endpoint is None:
        job_id = f"{job_type}-{seed}"  # a fresh embedded table: a fixed id keeps chaos
        # reproducible (its decisions are keyed by job id and step)
    rt = LocalRuntime(app_ref, timeout_ms=timeout_ms, endpoint_url=endpoint,
                      table=s.table, region=s.region, chaos=chaos,
                      max_retry_attempts=max_retry_attempts,
                      recursive_loop="Allow" if recursive_loop == "Allow" else "Terminate",
                      concurrency=concurrency, time_scale=time_scale,
                      dispatch_timeout_s=dispatch_timeout_s or None,
                      sweep_interval_s=1.0)
    with rt:
        jid = rt.start(job_type, payload, job_id=job_id)
        view = follow(rt.store, jid, wait_s, quiet=as_json)
        stats = rt.stats_dict()
        messages = list(rt.messages)
    ok = view.status == JobStatus.SUCCEEDED
    if as_json:
        emit({"ok": ok, "job": view.to_dict(), "stats": stats, "messages": messages})
    else:
        print_job(view)
        t = stats["total"]
        out.print(f"{t['invocations']} invocations, {t['steps']} steps, "
                  f"{t['duplicates_delivered']} duplicates delivered, "
                  f"{t['crashes_injected']} crashes injected, {t['kills_at_timeout']} kills "
                  f"at timeout, {t['lost_continuations']} lost events, "
                  f"{stats['wall_s']:.1f}s")
        for m in messages:
            err.print(f"note: {m}")
    if not ok:
        raise click.exceptions.Exit(1)
