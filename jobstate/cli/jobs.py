"""Reading jobs: `status`, `list`, `watch`, `history`, `paused`."""

from __future__ import annotations

import click
from rich.table import Table

from ..fanout import rollup
from ..status import JobStatus
from .base import (
    cli,
    connection,
    emit,
    follow,
    json_flag,
    out,
    print_job,
    progress_text,
    settings,
    when,
)


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
        print_job(view, prog)


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
        table.add_row(j.job_id, j.job_type, j.display_status, str(j.step),
                      progress_text(j.progress), when(j.updated_at))
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
    view = follow(store, job_id, timeout_s, interval=interval, quiet=as_json)
    if as_json:
        emit(view.to_dict())
    else:
        print_job(view)
    if view.status != JobStatus.SUCCEEDED:
        raise click.exceptions.Exit(1)


@cli.command()
@connection
@json_flag
@click.argument("job_id")
def history(as_json: bool, job_id: str) -> None:
    """A job's history, oldest first: every step, retry, failure, takeover, operator
    action (who, when, why) and callback answer. Nothing is cut: long details wrap."""
    entries = settings().store().history(job_id)
    if as_json:
        emit([e.to_dict() for e in entries])
        return
    table = Table("when", "step", "event", "took", "by", "detail", expand=True)
    table.columns[5].overflow = "fold"  # a long token with no space still shows whole
    table.columns[4].overflow = "fold"
    for e in entries:
        by = e.who or (e.owner[-12:] if e.owner else "")
        took = "" if e.duration_ms is None else f"{e.duration_ms} ms"
        attempt = f" (attempt {e.attempt})" if e.attempt else ""
        table.add_row(when(e.ended_at or e.started_at), str(e.step), e.event + attempt, took,
                      by, e.detail or "")
    out.print(table if entries else f"no history for {job_id}")


@cli.command()
@connection
@json_flag
def paused(as_json: bool) -> None:
    """List the job types that are paused now (and since when, why)."""
    rows = settings().store().pauses.paused_now()
    if as_json:
        emit([{"job_type": r.job_type, "paused_at": r.updated_at, "reason": r.reason}
              for r in rows])
        return
    table = Table("job type", "paused since", "reason")
    for r in rows:
        table.add_row(r.job_type, when(r.updated_at), r.reason or "")
    out.print(table if rows else "no job type is paused")
