"""Operating jobs: cancel, pause and resume, effects, sweeps, the table itself."""

from __future__ import annotations

import json
import os

import click
from rich.table import Table

from .. import tabledef
from ..events import routing, step_event
from ..fanout import cancel_tree
from ..fxrecords import list_effects, mark_effect
from ..store import JobStore
from ..sweeper import sweep as run_sweep
from .base import (
    CliError,
    actor_flag,
    cli,
    connection,
    continuation,
    emit,
    json_flag,
    lambda_options,
    out,
    parse_json,
    resume_limits,
    settings,
    who,
)


@cli.command()
@connection
@json_flag
@click.argument("job_id")
@click.option("--reason", default="cancelled by operator", show_default=True)
@actor_flag
def cancel(as_json: bool, job_id: str, reason: str, actor: str | None) -> None:
    """Cancel a job and its unfinished children; running steps stop at their next write."""
    count = cancel_tree(settings().store(), job_id, reason, by=who(actor))
    if as_json:
        emit({"job_id": job_id, "cancelled": count})
    else:
        out.print(f"cancelled {job_id}" + (f" and {count - 1} children" if count > 1 else ""))


@cli.command()
@connection
@json_flag
@click.argument("job_type")
@click.option("--reason", default="paused by operator", show_default=True)
@click.option("--force", is_flag=True, help="Pause a type that has no jobs and was never "
              "paused (a type not deployed yet); without it such a name is refused as a "
              "likely typo.")
@actor_flag
def pause(as_json: bool, job_type: str, reason: str, force: bool, actor: str | None) -> None:
    """Pause every job of a type (the kill switch): steps stop at their next claim."""
    store = settings().store()
    if not force and store.pause_state(job_type) is None and not store.list(job_type,
                                                                            limit=1).jobs:
        raise CliError(f"job type {job_type!r} has no jobs in table {store.table_name!r} and "
                       "was never paused: check the name (`jobstate list` shows the types "
                       "in use), or pass --force to pause it before its first job.")
    store.set_paused(job_type, True, reason, by=who(actor))
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
@actor_flag
def resume(as_json: bool, target: str, kind: str | None, function_name: str | None,
           max_steps: int | None, deadline: float | None,
           lambda_endpoint_url: str | None, actor: str | None) -> None:
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
                    max_steps=max_steps, deadline_s=deadline, by=who(actor))
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
    woken = store.set_paused(target, False, by=who(actor))
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
@actor_flag
def resume_job(as_json: bool, job_id: str, function_name: str | None, max_steps: int | None,
               deadline: float | None, lambda_endpoint_url: str | None,
               actor: str | None) -> None:
    """Make a FAILED or CANCELLED job runnable again from its last committed step."""
    _resume_job(settings().store(), job_id, function_name, lambda_endpoint_url, as_json,
                max_steps=max_steps, deadline_s=deadline, by=who(actor))


def _resume_job(store: JobStore, job_id: str, function_name: str | None,
                lambda_endpoint_url: str | None, as_json: bool, *,
                max_steps: int | None = None, deadline_s: float | None = None,
                by: str | None = None) -> None:
    view = store.resume(job_id, max_steps=max_steps, deadline_s=deadline_s, by=by)
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


@cli.command()
@connection
@json_flag
@click.argument("job_id")
@click.option("--from-step", "from_step", type=click.IntRange(0), default=None,
              help="Re-run from this earlier step, whose checkpoint history kept "
                   "[default: the step it failed at].")
@click.option("--reason", default="", help="Why, for the job's history.")
@click.option("--function", "function_name", default=None,
              help="Invoke this Lambda function for the job's step now.")
@lambda_options
@actor_flag
def redrive(as_json: bool, job_id: str, from_step: int | None, reason: str,
            function_name: str | None, lambda_endpoint_url: str | None,
            actor: str | None) -> None:
    """Re-run a FAILED job from its last committed step (or --from-step N); effects
    already done are still skipped."""
    view = settings().store().redrive(job_id, from_step=from_step, by=who(actor),
                                      reason=reason)
    send = bool(function_name) and view.paused_by is None  # a held step would be refused
    if send and function_name:
        continuation(function_name, lambda_endpoint_url).dispatch(
            step_event(view.job_id, view.step, view.job_type, **routing(view)))
    if as_json:
        emit({"job": view.to_dict(), "dispatched": send})
    elif view.paused_by is not None:
        out.print(f"redriven {job_id} from step {view.step}; held while job type "
                  f"{view.paused_by!r} is paused (`jobstate resume {view.paused_by}` runs it)")
    else:
        out.print(f"redriven {job_id} from step {view.step}; " + (
            f"invoked {function_name}" if function_name else
            "the sweeper dispatches it on its next run (or pass --function NAME)"))


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
@click.option("--reason", default="", help="Why, for the job's history.")
@actor_flag
def effect_done(as_json: bool, job_id: str, key: str, result_json: str, reason: str,
                actor: str | None) -> None:
    """Record that a STARTED effect did happen (with its result)."""
    mark_effect(settings().store(), job_id, key, done=True,
                result=parse_json(result_json, "--result"), by=who(actor), reason=reason)
    _effect_settled(as_json, job_id, key, "DONE")


@effect.command("retry")
@connection
@json_flag
@click.argument("job_id")
@click.argument("key")
@click.option("--reason", default="", help="Why, for the job's history.")
@actor_flag
def effect_retry(as_json: bool, job_id: str, key: str, reason: str,
                 actor: str | None) -> None:
    """Record that a STARTED effect did not happen, so it runs again."""
    mark_effect(settings().store(), job_id, key, done=False, by=who(actor), reason=reason)
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
