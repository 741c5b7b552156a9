"""Issue 20 in the CLI: `history` in full (wrapped, never cut mid-word, `--json`),
`paused`, `pause` of an unknown type, `redrive`, who acted (`--as`), and `watch` showing
no frozen rate while a job is held. DynamoDB is a moto server on a real port."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from backends import MotoServer
from click.testing import CliRunner, Result
from rich.progress import Progress

import jobstate
from jobstate.cli import cli
from jobstate.cli.base import RateColumn

LONG = ("the upstream export rejected row 4711 because its customer reference "
        "was not found in the ledger; " * 8).strip()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture
def env(url: str) -> tuple[str, jobstate.JobStore, jobstate.App,
                           jobstate.InMemoryContinuation]:
    table = f"ops-{uuid.uuid4().hex[:8]}"
    assert CliRunner().invoke(cli, ["create-table", "--endpoint-url", url, "--table",
                                    table]).exit_code == 0
    store = jobstate.JobStore(table, endpoint_url=url)
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)
    broken = {"yes": True}

    @app.job("export", max_attempts=1)
    def export(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 1 and broken["yes"]:
            raise RuntimeError(LONG)
        if ctx.step == 2:
            return ctx.complete("ok")
        return None

    app.broken = broken  # type: ignore[attr-defined]
    return table, store, app, cont


def run(url: str, table: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--endpoint-url", url, "--table", table])


def drain(app: jobstate.App, cont: jobstate.InMemoryContinuation) -> None:
    while cont.events:
        for event in cont.pop_all():
            app.handler(event)


def test_a_redrive_while_the_type_is_paused_says_it_is_held(url: str, env: Any) -> None:
    table, store, app, cont = env
    jid = app.start("export", {})
    drain(app, cont)
    store.set_paused("export", True)
    r = run(url, table, "redrive", jid, "--function", "never-called")
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())  # wrapped to the terminal
    assert "held while job type 'export' is paused" in text
    assert "jobstate resume export" in text and "invoked" not in text
    assert store.get(jid).display_status == "PAUSED"


def test_history_shows_everything_in_order_and_in_full(url: str, env: Any) -> None:
    table, store, app, cont = env
    jid = app.start("export", {})
    drain(app, cont)
    r = run(url, table, "redrive", jid, "--reason", "ledger fixed", "--as", "alice")
    assert r.exit_code == 0, r.output
    app.broken["yes"] = False
    jobstate.sweep(store, cont)
    drain(app, cont)

    r = run(url, table, "history", jid)
    assert r.exit_code == 0, r.output
    words = re.findall(r"\S+", r.stdout)
    for word in LONG.split():  # wrapped over lines, but no word is cut
        assert word in words, word
    assert r.stdout.count("4711") == 8
    rows = [[c.strip() for c in line.split("\u2502")[1:-1]] for line in r.stdout.splitlines()]
    events = [cells[2] for cells in rows if len(cells) == 6 and cells[2]]
    assert events == ["committed", "failed (attempt 1)", "redriven", "committed",
                      "succeeded"]  # the newest state last
    assert "alice" in r.stdout

    r = run(url, table, "history", jid, "--json")
    entries = json.loads(r.stdout)
    assert [e["event"] for e in entries] == ["committed", "failed", "redriven", "committed",
                                             "succeeded"]
    assert LONG in entries[1]["detail"] and entries[2]["who"] == "alice"


def test_paused_and_pause_of_an_unknown_type(url: str, env: Any) -> None:
    table, store, app, _ = env
    r = run(url, table, "paused")
    assert r.exit_code == 0 and "no job type is paused" in r.stdout
    r = run(url, table, "pause", "exprot")
    assert r.exit_code != 0 and "--force" in r.output and "exprot" in r.output
    assert store.pause_state("exprot") is None  # nothing written
    assert run(url, table, "pause", "exprot", "--force").exit_code == 0
    app.start("export", {})
    r = run(url, table, "pause", "export", "--reason", "deploy", "--as", "bob")
    assert r.exit_code == 0, r.output
    r = run(url, table, "paused", "--json")
    assert [p["job_type"] for p in json.loads(r.stdout)] == ["export", "exprot"]
    assert run(url, table, "paused").stdout.count("deploy") == 1


def test_cancel_records_who(url: str, env: Any) -> None:
    table, store, app, _ = env
    jid = app.start("export", {})
    assert run(url, table, "cancel", jid, "--reason", "dup", "--as", "carol").exit_code == 0
    [cancelled] = [e for e in store.history(jid) if e.event == "cancelled"]
    assert (cancelled.who, cancelled.detail) == ("carol", "dup")


def test_watch_shows_no_rate_while_a_job_is_held() -> None:
    progress = Progress(RateColumn())
    task = progress.add_task("job", total=100, paused=False)
    progress.update(task, completed=10)
    progress.update(task, completed=50)
    progress.reset(task, start=False)
    progress.update(task, completed=50, paused=True)
    assert str(RateColumn().render(progress.tasks[0])) == "paused"
