"""`jobstate callback succeed|fail|heartbeat` (issue 18), through click's runner on a
moto server: answers are recorded, the job is due at once, the token is never printed."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from backends import MotoServer
from click.testing import CliRunner, Result

import jobstate
from jobstate.cli import cli


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture
def waiting(url: str) -> tuple[jobstate.App, jobstate.InMemoryContinuation, dict[str, str]]:
    """An app whose `wait` jobs each wait on callback `go` (heartbeat 60 s)."""
    store = jobstate.JobStore(f"cb-{uuid.uuid4().hex[:8]}", endpoint_url=url)
    store.create_table()
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)
    tokens: dict[str, str] = {}

    @app.job("wait")
    def wait(ctx: jobstate.StepContext) -> Any:
        cb = ctx.callback("go", timeout_s=3600, heartbeat_s=60)
        tokens[ctx.job_id] = cb.token
        try:
            return ctx.complete(cb.result())
        except jobstate.CallbackFailed as exc:
            return ctx.fail(exc.error)

    for jid in ("a", "b", "c"):
        app.start("wait", job_id=jid)
    for event in cont.pop_all():
        app.handler(event)
    return app, cont, tokens


def run(app: jobstate.App, url: str, *args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--endpoint-url", url, "--table",
                                    app.store.table_name], input=stdin)


def test_succeed_fail_heartbeat_from_the_shell(waiting: Any, url: str) -> None:
    app, cont, tokens = waiting
    r = run(app, url, "callback", "heartbeat", tokens["a"])
    assert r.exit_code == 0, r.stderr
    r = run(app, url, "callback", "succeed", tokens["a"], "--result", '{"ok": true}')
    assert r.exit_code == 0 and "due now" in r.stdout
    r = run(app, url, "callback", "succeed", tokens["a"], "--result", '{"ok": true}',
            "--json")
    assert json.loads(r.stdout) | {"invoked": False} == {
        "job_id": "a", "callback": "go", "answer": "succeeded", "repeated": True,
        "woke": False, "invoked": False}
    r = run(app, url, "callback", "fail", "-", "--error", "rejected", stdin=tokens["b"] + "\n")
    assert r.exit_code == 0, r.stderr
    jobstate.sweep(app.store, cont)
    for event in cont.pop_all():
        app.handler(event)
    assert app.store.get("a").result == {"ok": True}
    assert app.store.get("b").error == "rejected"
    for t in tokens.values():
        assert t not in r.stdout + r.stderr


def test_bad_answers_are_one_line_errors_without_the_token(waiting: Any, url: str) -> None:
    app, _, tokens = waiting
    run(app, url, "callback", "succeed", tokens["c"])
    for args, code, text in (
            (("succeed", tokens["c"], "--result", "2"), 1, "is closed"),
            (("heartbeat", tokens["c"]), 1, "is closed"),
            (("succeed", tokens["c"][:-4] + "AAAA"), 1, "no callback answers"),
            (("succeed", "not-a-token"), 1, "not a callback token"),
            (("succeed", tokens["a"], "--result", "{nope"), 2, "not valid JSON"),
            (("fail", tokens["a"]), 2, "--error")):
        r = run(app, url, "callback", *args)
        assert r.exit_code == code, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and text in lines[0], (args, r.stderr)
        assert tokens["c"] not in r.stderr and tokens["c"][-20:] not in r.stderr
