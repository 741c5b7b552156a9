"""The `jobstate` command line's common parts: the group, its options, errors and output.

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

from .. import extras

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

from .. import __version__, config
from ..continuation import LambdaContinuation
from ..errors import InvalidInput, JobStateError
from ..fanout import rollup
from ..local.engines import dummy_credentials
from ..records import JobView
from ..records import Progress as JobProgress
from ..store import JobStore

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


def actor_flag(f: F) -> F:
    """--as NAME: who acts, for the job's history (default: the OS user). Not looked up
    with STS: that is a network call per command for a name the operator can give."""
    return click.option("--as", "actor", default=None, metavar="NAME",
                        help="Who is acting, recorded in the job's history "
                             "[default: your OS user].")(f)


def who(actor: str | None) -> str:
    if actor:
        return actor
    try:
        import getpass
        return getpass.getuser()
    except Exception:  # no user name in this environment (a container without one)
        return "unknown"


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

    Start with `jobstate demo`: four real scenarios on a local Lambda emulation with
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


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        if task.fields.get("paused"):
            return Text("paused")  # no rate while held (issue 20: not a frozen one)
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit") or "items"
        return Text("-" if speed is None else f"{speed:,.1f} {unit}/s")


def follow(store: JobStore, job_id: str, timeout_s: float | None, *, interval: float = 0.5,
            quiet: bool = False) -> JobView:
    """Poll a job until it is terminal, with a progress bar on stderr."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                        TextColumn("{task.fields[amount]}"), RateColumn(),
                        TimeRemainingColumn(), TimeElapsedColumn(), console=err,
                        disable=quiet or not err.is_terminal)
    with progress:
        task = progress.add_task(job_id, total=None, amount="", unit="", paused=False)
        while True:
            view = store.get(job_id)
            prog = rollup(store, view) if view.children_total else view.progress
            if view.paused:
                # Held: forget the samples, so neither the rate nor the ETA stays frozen at
                # what they were before the pause (both start afresh after the resume).
                progress.reset(task, start=False)
            elif not progress.tasks[0].started:
                progress.start_task(task)
            progress.update(task, completed=prog.done, total=prog.total,
                            description=f"{view.job_type} {view.display_status} step {view.step}",
                            amount=progress_text(prog), unit=prog.unit or "items",
                            paused=view.paused)
            if view.status.terminal:
                return view
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {view.status.value} at step "
                                   f"{view.step} after {timeout_s:.0f}s")
            time.sleep(interval)


def progress_text(p: JobProgress) -> str:
    if p.total:
        return f"{p.done:,.0f}/{p.total:,.0f} {p.unit or ''}".strip()
    return f"{p.done:,.0f} {p.unit or ''}".strip() if p.done else "-"


def print_job(view: JobView, prog: JobProgress | None = None) -> None:
    d = view.to_dict()
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("job", view.job_id), ("type", view.job_type), ("status", view.display_status),
        ("paused by", view.paused_by),
        ("step", view.step), ("progress", progress_text(prog or view.progress)),
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


