"""Answering a job's callback from a shell: `jobstate callback succeed|fail|heartbeat`.

The token is a credential: it is taken as an argument or, with `-`, from stdin (out of
the process list and shell history), and never printed.
"""

from __future__ import annotations

import sys

import click

from ..callbacks import CallbackAnswer
from ..events import step_event
from .base import (
    cli,
    connection,
    continuation,
    emit,
    json_flag,
    lambda_options,
    out,
    parse_json,
    settings,
)


def _token(value: str) -> str:
    return sys.stdin.readline().strip() if value == "-" else value


def _function(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--function", "function_name", default=None,
                     help="Invoke this Lambda function to run the waiting step now (else "
                          "the next sweep runs it).")(f)
    return lambda_options(f)


@cli.group()
def callback() -> None:
    """Answer a job's callback (`ctx.callback`) with its TOKEN (`-` reads it from stdin)."""


@callback.command("succeed")
@connection
@json_flag
@_function
@click.argument("token")
@click.option("--result", "result_json", default="null", help="The result (JSON).")
def succeed(as_json: bool, token: str, result_json: str, function_name: str | None,
            lambda_endpoint_url: str | None) -> None:
    """Complete the callback with a result; its job runs on."""
    result = parse_json(result_json, "--result")
    answer = settings().store().complete_callback(_token(token), result)
    _report(as_json, answer, "succeeded", function_name, lambda_endpoint_url)


@callback.command("fail")
@connection
@json_flag
@_function
@click.argument("token")
@click.option("--error", required=True, help="Why it failed (the step sees it).")
def fail(as_json: bool, token: str, error: str, function_name: str | None,
         lambda_endpoint_url: str | None) -> None:
    """Fail the callback: the step's `cb.result()` raises CallbackFailed(error)."""
    answer = settings().store().fail_callback(_token(token), error)
    _report(as_json, answer, "failed", function_name, lambda_endpoint_url)


@callback.command("heartbeat")
@connection
@json_flag
@click.argument("token")
def heartbeat(as_json: bool, token: str) -> None:
    """Say the work behind the callback goes on: its heartbeat timeout restarts."""
    answer = settings().store().heartbeat_callback(_token(token))
    _report(as_json, answer, "heartbeat recorded", None, None)


def _report(as_json: bool, answer: CallbackAnswer, what: str, function_name: str | None,
            endpoint: str | None) -> None:
    sent = False
    if answer.woke and function_name and answer.step is not None and answer.job_type:
        continuation(function_name, endpoint).dispatch(
            step_event(answer.job_id, answer.step, answer.job_type))
        sent = True
    if as_json:
        emit({"job_id": answer.job_id, "callback": answer.name, "answer": what,
              "repeated": answer.repeated, "woke": answer.woke, "invoked": sent})
        return
    head = f"callback {answer.name!r} of job {answer.job_id}: {what}"
    if answer.repeated:
        head += " (already recorded"
        if not answer.woke:
            out.print(f"{head}: nothing changed)")
            return
        head += "; this resend finished waking the job)"
    if sent:
        out.print(f"{head}; invoked {function_name} to run the job now")
    elif answer.woke:
        out.print(f"{head}; the job is due now (the next sweep runs it)")
    elif what == "heartbeat recorded":
        out.print(head)
    else:
        out.print(f"{head}; the job reads it when its step gets there")
