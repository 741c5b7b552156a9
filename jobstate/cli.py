"""The `jobstate` command line: run jobs locally, inspect and operate them on DynamoDB.

Connection options (`--table`, `--endpoint-url`, `--region`; env JOBSTATE_TABLE,
JOBSTATE_ENDPOINT_URL, AWS_REGION) go before or after the command. Read commands take
`--json`. Tokens are always redacted. Errors are one line on stderr and exit code 1
(2 for bad usage, still one line); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from . import extras

try:
    import click
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table
    from rich.text import Text
except ImportError as exc:  # the core install: `pip install 'jobstate[cli]'`
    raise extras.missing("cli", "the jobstate command line", exc) from None

from . import __version__, config, tabledef
from .app import step_event
from .codec import validate_job_type
from .effects import list_effects, mark_effect
from .errors import InvalidInput, JobStateError
from .fanout import cancel_tree, rollup
from .records import JobView
from .records import Progress as JobProgress
from .status import JobStatus
from .store import JobStore, routing

F = TypeVar("F", bound=Callable[..., Any])
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
err = Console(stderr=True, highlight=False)


@dataclass
class Settings:
    table: str | None = None
    endpoint_url: str | None = None
    region: str | None = None
    debug: bool = False

    def store(self) -> JobStore:
        if self.endpoint_url or os.environ.get("JOBSTATE_ENDPOINT_URL"):
            # A local engine (DynamoDB Local, moto) takes any credentials: use dummy ones
            # when none are configured, rather than failing to sign the request.
            from .local.engines import dummy_credentials

            for k, v in dummy_credentials(force=False).items():
                os.environ.setdefault(k, v)
        return JobStore(self.table, self.endpoint_url, self.region)


class CliError(click.ClickException):
    """One line on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {' '.join(self.format_message().split())}", err=True)


class BadInput(CliError):
    """A value the library rejected (an id, a spec, a reason): bad usage, exit code 2."""

    exit_code = 2


class JobstateGroup(click.Group):
    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True,
             **extra: Any) -> Any:
        """click's main, with every error one line on stderr (usage errors too)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "jobstate"
            click.echo(f"error: {' '.join(exc.format_message().split())} (see "
                       f"'{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            settings = ctx.find_object(Settings)
            if settings is not None and settings.debug:
                raise
            if isinstance(exc, InvalidInput):  # a bad id, spec or value: bad usage
                raise BadInput(str(exc)) from None
            if isinstance(exc, JobStateError | TimeoutError):
                raise CliError(str(exc)) from None
            raise CliError(f"{type(exc).__name__}: {exc}") from None


def _setter(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def set_value(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            setattr(ctx.ensure_object(Settings), name, value)
            if name == "debug":
                logging.basicConfig(level=logging.INFO, stream=sys.stderr)
                logging.getLogger("jobstate").propagate = True

    return set_value


def connection(f: F) -> F:
    """--table/--endpoint-url/--region/--debug, accepted on the group and every command."""
    for name, flag, help_text, env in reversed((
        ("table", "--table", "DynamoDB table name.", "JOBSTATE_TABLE"),
        ("endpoint_url", "--endpoint-url", "DynamoDB endpoint (e.g. DynamoDB Local).",
         "JOBSTATE_ENDPOINT_URL"),
        ("region", "--region", "AWS region.", "AWS_REGION"),
    )):
        f = click.option(flag, name, default=None, expose_value=False, is_eager=True,
                         callback=_setter(name), help=f"{help_text} [env: {env}]")(f)
    f = click.option("--debug", is_flag=True, default=False, expose_value=False,
                     is_eager=True, callback=_setter("debug"),
                     help="Show tracebacks and library logs.")(f)
    return f


def json_flag(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(f)


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str, sort_keys=False))


def parse_json(value: str | None, what: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON ({exc.msg} at char {exc.pos}): "
                                 f"{value[:60]!r}") from None


def when(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000).isoformat(sep=" ", timespec="seconds")


def fail(message: str) -> NoReturn:
    raise CliError(message)


def resume_limits(fn: F) -> F:
    fn = click.option("--deadline", type=click.FloatRange(min=1), default=None,
                      help="Job only: a new deadline, in seconds from now.")(fn)
    return click.option("--max-steps", type=click.IntRange(min=1), default=None,
                        help="Job only: raise its max_steps guard (it failed that guard?)."
                        )(fn)


def lambda_options(f: F) -> F:
    f = click.option("--lambda-endpoint-url", default=None, envvar="JOBSTATE_LAMBDA_ENDPOINT_URL",
                     help="Lambda endpoint for --function (e.g. a local emulator) "
                          "[env: JOBSTATE_LAMBDA_ENDPOINT_URL].")(f)
    return f


def continuation(function_name: str, endpoint_url: str | None) -> Any:
    from .continuation import LambdaContinuation

    client = None
    if endpoint_url:
        import boto3

        region = config.resolve_region(settings().region, endpoint=endpoint_url)
        client = boto3.client("lambda", endpoint_url=endpoint_url, region_name=region.name)
    return LambdaContinuation(function_name, client=client)


@click.group(cls=JobstateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jobstate")
@connection
def cli() -> None:
    """Durable recursive AWS Lambda jobs on DynamoDB.

    Start with `jobstate demo`: three real scenarios on a local Lambda emulation with
    chaos on (duplicate deliveries, killed containers, lost events).
    """
    # Library log lines would interleave with the command's own output: silence them for
    # the command's duration (--debug shows them), and put logging back afterwards, so a
    # command run in-process (CliRunner, a script calling `main`) leaves no trace.
    log = logging.getLogger("jobstate")
    quiet, was = logging.NullHandler(), log.propagate
    log.addHandler(quiet)
    if not settings().debug:
        log.propagate = False

    def restore() -> None:
        log.removeHandler(quiet)
        log.propagate = was

    click.get_current_context().call_on_close(restore)


# -- local runs ------------------------------------------------------------------------------


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
    """Run the three scenarios end to end on the local runtime, with chaos, and check them."""
    from .demo import DemoConfig, run_demo
    from .demo.render import DemoProgress, summary_table
    from .local import Chaos

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
    from .local import Chaos, LocalRuntime

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
        view = _follow(rt.store, jid, wait_s, quiet=as_json)
        stats = rt.stats_dict()
        messages = list(rt.messages)
    ok = view.status == JobStatus.SUCCEEDED
    if as_json:
        emit({"ok": ok, "job": view.to_dict(), "stats": stats, "messages": messages})
    else:
        _print_job(view)
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


# -- reads -------------------------------------------------------------------------------------


@cli.command()
@connection
@json_flag
@click.argument("job_id")
def status(as_json: bool, job_id: str) -> None:
    """Show a job (tokens redacted)."""
    store = settings().store()
    view = store.get(job_id)
    prog = rollup(store, view) if view.children_total else view.progress
    if as_json:
        data = view.to_dict()
        if view.children_total:
            data["children_progress"] = prog.to_dict()
        emit(data)
    else:
        _print_job(view, prog)


@cli.command("list")
@connection
@json_flag
@click.option("--type", "job_type", default=None, help="Only this job type.")
@click.option("--status", "status_", type=click.Choice([s.value for s in JobStatus],
                                                       case_sensitive=False), default=None)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
def list_jobs(as_json: bool, job_type: str | None, status_: str | None, limit: int) -> None:
    """List jobs, newest first."""
    page = settings().store().list(job_type, status_.upper() if status_ else None, limit=limit)
    if as_json:
        emit({"jobs": [j.to_dict() for j in page.jobs], "next_token": page.next_token})
        return
    table = Table("job id", "type", "status", "step", "progress", "updated")
    for j in page.jobs:
        table.add_row(j.job_id, j.job_type, j.status.value, str(j.step),
                      _progress_text(j.progress), when(j.updated_at))
    out.print(table if page.jobs else "no jobs")


@cli.command()
@connection
@json_flag
@click.argument("job_id")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True)
@click.option("--timeout", "timeout_s", type=float, default=None,
              help="Give up after this many seconds (default: wait).")
def watch(as_json: bool, job_id: str, interval: float, timeout_s: float | None) -> None:
    """Follow a job's progress (rate and ETA) until it finishes."""
    store = settings().store()
    view = _follow(store, job_id, timeout_s, interval=interval, quiet=as_json)
    if as_json:
        emit(view.to_dict())
    else:
        _print_job(view)
    if view.status != JobStatus.SUCCEEDED:
        raise click.exceptions.Exit(1)


@cli.command()
@connection
@json_flag
@click.argument("job_id")
def history(as_json: bool, job_id: str) -> None:
    """Step history: failures, retries, takeovers (every step if history is on)."""
    store = settings().store()
    store.get(job_id)  # a clear JobNotFound first
    entries = store.history(job_id)
    if as_json:
        emit([e.to_dict() for e in entries])
        return
    table = Table("step", "event", "attempt", "started", "duration ms", "detail")
    for e in entries:
        table.add_row(str(e.step), e.event, str(e.attempt or ""), when(e.started_at),
                      str(e.duration_ms or ""), (e.detail or "")[:120])
    out.print(table if entries else f"no history items for {job_id}")


# -- operator writes -----------------------------------------------------------------------------


@cli.command()
@connection
@json_flag
@click.argument("job_id")
@click.option("--reason", default="cancelled by operator", show_default=True)
def cancel(as_json: bool, job_id: str, reason: str) -> None:
    """Cancel a job and its unfinished children; running steps stop at their next write."""
    count = cancel_tree(settings().store(), job_id, reason)
    if as_json:
        emit({"job_id": job_id, "cancelled": count})
    else:
        out.print(f"cancelled {job_id}" + (f" and {count - 1} children" if count > 1 else ""))


@cli.command()
@connection
@json_flag
@click.argument("job_type")
@click.option("--reason", default="paused by operator", show_default=True)
def pause(as_json: bool, job_type: str, reason: str) -> None:
    """Pause every job of a type (the kill switch): steps stop at their next claim."""
    settings().store().set_paused(job_type, True, reason)
    if as_json:
        emit({"job_type": job_type, "paused": True})
    else:
        out.print(f"paused {job_type}: its jobs stop at their next claim and stay due; "
                  f"`jobstate resume {job_type}` lets them run again")


@cli.command()
@connection
@json_flag
@click.argument("target")
@click.option("--job", "kind", flag_value="job", help="TARGET is a job id.")
@click.option("--type", "kind", flag_value="type", help="TARGET is a job type.")
@click.option("--function", "function_name", default=None,
              help="Job only: invoke this Lambda function for its step now.")
@resume_limits
@lambda_options
def resume(as_json: bool, target: str, kind: str | None, function_name: str | None,
           max_steps: int | None, deadline: float | None,
           lambda_endpoint_url: str | None) -> None:
    """Resume a paused job TYPE, or a failed/cancelled job (TARGET is a job id)."""
    store = settings().store()
    state: bool | None = None
    if kind is None:
        if store.get_raw(target) is not None:
            kind = "job"
        else:
            state = store.pause_state(target)
            if state is None:
                raise CliError(f"no job {target!r} and no job type {target!r} that was "
                               f"ever paused in table {store.table_name!r}; check the name "
                               "(or say --job / --type).")
            kind = "type"
    if kind == "job":
        _resume_job(store, target, function_name, lambda_endpoint_url, as_json,
                    max_steps=max_steps, deadline_s=deadline)
        return
    if max_steps is not None or deadline is not None:
        raise CliError("--max-steps and --deadline apply to a job, not to a job type.")
    if function_name is not None:
        raise CliError("--function applies to a job, not to a job type: the sweeper "
                       "dispatches a resumed type's jobs.")
    if state is None:
        state = store.pause_state(target)
    if state is None:
        raise CliError(f"job type {target!r} was never paused in table "
                       f"{store.table_name!r}, so there is nothing to resume; check the "
                       "name (`jobstate list --type TYPE` shows a type's jobs).")
    # Not paused: a no-op, unless an earlier resume died while waking the jobs (then
    # this finishes it).
    woken = store.set_paused(target, False)
    if as_json:
        emit({"job_type": target, "paused": False, "due_now": woken})
    elif state or woken:
        out.print(f"resumed {target}: {woken} of its jobs are due now; the sweeper "
                  "dispatches them on its next run")
    else:
        out.print(f"{target} is not paused; nothing to do")


@cli.command("resume-job")
@connection
@json_flag
@click.argument("job_id")
@click.option("--function", "function_name", default=None,
              help="Invoke this Lambda function for the job's step now.")
@resume_limits
@lambda_options
def resume_job(as_json: bool, job_id: str, function_name: str | None, max_steps: int | None,
               deadline: float | None, lambda_endpoint_url: str | None) -> None:
    """Make a FAILED or CANCELLED job runnable again from its last committed step."""
    _resume_job(settings().store(), job_id, function_name, lambda_endpoint_url, as_json,
                max_steps=max_steps, deadline_s=deadline)


def _resume_job(store: JobStore, job_id: str, function_name: str | None,
                lambda_endpoint_url: str | None, as_json: bool, *,
                max_steps: int | None = None, deadline_s: float | None = None) -> None:
    view = store.resume(job_id, max_steps=max_steps, deadline_s=deadline_s)
    dispatched = False
    if function_name:
        continuation(function_name, lambda_endpoint_url).dispatch(
            step_event(view.job_id, view.step, view.job_type, **routing(view)))
        dispatched = True
    if as_json:
        emit({"job": view.to_dict(), "dispatched": dispatched})
    elif dispatched:
        out.print(f"resumed {job_id} at step {view.step}; invoked {function_name}")
    else:
        out.print(f"resumed {job_id} at step {view.step} ({view.status.value}); the sweeper "
                  "dispatches it on its next run (or pass --function NAME to invoke now)")


@cli.group()
def effect() -> None:
    """Inspect and settle a job's side effects (`ctx.once`)."""


@effect.command("list")
@connection
@json_flag
@click.argument("job_id")
def effect_list(as_json: bool, job_id: str) -> None:
    """List a job's effects and their state."""
    store = settings().store()
    store.get(job_id)
    items = list_effects(store, job_id)
    if as_json:
        emit(items)
        return
    table = Table("key", "state", "step", "runs", "last error", "result")
    for e in items:
        table.add_row(e["key"], str(e["state"]), str(e["step"]), str(e["runs"]),
                      e["last_error"] or "", json.dumps(e["result"])[:80])
    out.print(table if items else f"no effects recorded for {job_id}")


@effect.command("done")
@connection
@json_flag
@click.argument("job_id")
@click.argument("key")
@click.option("--result", "result_json", default="null", help="The effect's result (JSON).")
def effect_done(as_json: bool, job_id: str, key: str, result_json: str) -> None:
    """Record that a STARTED effect did happen (with its result)."""
    mark_effect(settings().store(), job_id, key, done=True,
                result=parse_json(result_json, "--result"))
    _effect_settled(as_json, job_id, key, "DONE")


@effect.command("retry")
@connection
@json_flag
@click.argument("job_id")
@click.argument("key")
def effect_retry(as_json: bool, job_id: str, key: str) -> None:
    """Record that a STARTED effect did not happen, so it runs again."""
    mark_effect(settings().store(), job_id, key, done=False)
    _effect_settled(as_json, job_id, key, "forgotten (will run again)")


def _effect_settled(as_json: bool, job_id: str, key: str, state: str) -> None:
    if as_json:
        emit({"job_id": job_id, "key": key, "state": state})
    else:
        out.print(f"effect {key!r} of {job_id}: {state}; `jobstate resume {job_id}` runs "
                  "the job again if it was parked")


@cli.command()
@connection
@json_flag
@click.option("--function", "function_name", default=None,
              help="Lambda function that runs the jobs [env: JOBSTATE_FUNCTION].")
@click.option("--limit", type=click.IntRange(1, 100_000), default=500, show_default=True)
@lambda_options
def sweep(as_json: bool, function_name: str | None, limit: int,
          lambda_endpoint_url: str | None) -> None:
    """Re-dispatch jobs that are due (lost events, expired leases, waits that are over)."""
    from .sweeper import sweep as run_sweep

    name = function_name or os.environ.get("JOBSTATE_FUNCTION")
    if not name:
        raise click.UsageError("sweep needs --function NAME (the Lambda function that runs "
                               "the jobs), or JOBSTATE_FUNCTION.")
    store = settings().store()
    report = run_sweep(store, continuation(name, lambda_endpoint_url), limit=limit)
    if as_json:
        emit(report.to_dict())
    else:
        out.print(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in report.to_dict().items()
                            if v and isinstance(v, int)) or "nothing due")
        if report.next_token:
            out.print("more jobs are due: run it again")
    if report.dispatch_errors:
        # Exit 1 so a script notices; those jobs are postponed, not lost.
        click.echo(f"error: could not dispatch {report.dispatch_errors} due job(s), the first "
                   f"because: {report.first_dispatch_error} They are due again in "
                   f"{store.dispatch_timeout_ms // 1000} s; fix the cause and sweep again "
                   "then.", err=True)
        raise click.exceptions.Exit(1)


@cli.command("create-table")
@connection
@json_flag
def create_table(as_json: bool) -> None:
    """Create the table with its indexes and TTL (idempotent)."""
    store = settings().store()
    created = store.create_table()
    if as_json:
        emit({"table": store.table_name, "created": created})
    else:
        out.print(f"{'created' if created else 'table already exists:'} {store.table_name}")


@cli.command("table-definition")
@connection
@click.option("--format", "fmt", type=click.Choice(tabledef.FORMATS), default="sam",
              show_default=True, help="SAM/CloudFormation YAML, CDK (Python), Terraform, or "
                                      "the neutral JSON they are rendered from.")
def table_definition(fmt: str) -> None:
    """Print the job table as infrastructure code, to add it to an existing stack.

    Rendered from the schema `create-table` uses; Terraform takes its name from --table.
    """
    name = settings().table or os.environ.get("JOBSTATE_TABLE") or "jobstate"
    click.echo(tabledef.render(fmt, table_name=name), nl=False)


# -- helpers -------------------------------------------------------------------------------------


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit") or "items"
        return Text("-" if speed is None else f"{speed:,.1f} {unit}/s")


def _follow(store: JobStore, job_id: str, timeout_s: float | None, *, interval: float = 0.5,
            quiet: bool = False) -> JobView:
    """Poll a job until it is terminal, with a progress bar on stderr."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.fields[amount]}"), RateColumn(),
                        TimeRemainingColumn(), TimeElapsedColumn(), console=err,
                        disable=quiet or not err.is_terminal)
    with progress:
        task = progress.add_task(job_id, total=None, amount="", unit="")
        while True:
            view = store.get(job_id)
            prog = rollup(store, view) if view.children_total else view.progress
            progress.update(task, completed=prog.done, total=prog.total,
                            description=f"{view.job_type} {view.status.value} step {view.step}",
                            amount=_progress_text(prog), unit=prog.unit or "items")
            if view.status.terminal:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {view.status.value} at step "
                                   f"{view.step} after {timeout_s:.0f}s")
            time.sleep(interval)


def _progress_text(p: JobProgress) -> str:
    if p.total:
        return f"{p.done:,.0f}/{p.total:,.0f} {p.unit or ''}".strip()
    return f"{p.done:,.0f} {p.unit or ''}".strip() if p.done else "-"


def _print_job(view: JobView, prog: JobProgress | None = None) -> None:
    d = view.to_dict()
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("job", view.job_id), ("type", view.job_type), ("status", view.status.value),
        ("step", view.step), ("progress", _progress_text(prog or view.progress)),
        ("result", json.dumps(view.result) if view.result is not None else None),
        ("error", view.error), ("cursor", json.dumps(view.cursor)),
        ("tokens", json.dumps(d["tokens"]) if view.tokens else None),
        ("attempt", f"{view.attempt}/{view.max_attempts}" if view.attempt else None),
        ("children", f"{view.pending_children or 0} pending of {view.children_total}"
         if view.children_total else None),
        ("parent", view.parent_id), ("wait", view.wait_reason),
        ("invocations", view.invocations), ("retries", view.retries or None),
        ("takeovers", view.takeovers or None), ("created", when(view.created_at)),
        ("updated", when(view.updated_at)),
    ]
    for k, v in rows:
        if v is not None:
            table.add_row(k, str(v))
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    try:
        cli.main(args=argv, prog_name="jobstate", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


__all__ = ["CliError", "InvalidInput", "cli", "main"]
