"""The `jobstate` CLI (issue 5) through its real entry point: click's runner on the same
command object the console script runs, and a few runs of the installed script itself.
DynamoDB is a moto server on a real port; `run` uses the local runtime's workers.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backends import MotoServer
from click.testing import CliRunner, Result

import jobstate
from jobstate.cli import cli
from jobstate.testing import Crash

# Real worker processes on real deadlines (`jobstate run`): run alone, not beside other
# tests (scripts/test runs these after the parallel tier).
pytestmark = pytest.mark.serial

# The app `jobstate run test_cli:app ...` imports in its workers.
app = jobstate.App(store=jobstate.JobStore(), lease_grace_s=0.3, reserve_ms=300)


@app.job("count", max_steps=100)
def count(ctx: jobstate.StepContext) -> Any:
    n = ctx.cursor.get("n", 0)
    ctx.tokens["api_key"] = "hunter2"
    if n >= ctx.input["n"]:
        return ctx.complete({"n": n})
    ctx.cursor["n"] = n + 1
    ctx.progress(n + 1, ctx.input["n"], "items")
    return None


def _die_in_effect() -> None:
    raise Crash("killed inside the effect")


@app.job("effectful", max_steps=10)
def effectful(ctx: jobstate.StepContext) -> Any:
    ctx.once("send", _die_in_effect)
    return ctx.complete()


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with MotoServer() as server:
        yield server.endpoint_url


@pytest.fixture(scope="module")
def table(url: str) -> str:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    r = CliRunner().invoke(cli, ["create-table", "--endpoint-url", url, "--table", name])
    assert r.exit_code == 0 and f"created {name}" in r.stdout
    return name


@pytest.fixture(scope="module")
def jobs(url: str, table: str) -> dict[str, str]:
    """Jobs in known states, made in-process on the same table."""
    store = jobstate.JobStore(table, endpoint_url=url)
    cont = jobstate.InMemoryContinuation()
    local = jobstate.App(store, cont)
    local.specs.update(app.specs)
    done = local.start("count", {"n": 3}, job_id="done-1")
    while cont.events:
        for event in cont.pop_all():
            local.handler(event)
    running = local.start("count", {"n": 3}, job_id="running-1")
    cont.pop_all()
    parked = {}
    # Parked jobs are made in the past, so their dead steps' leases have run out by now.
    clock = jobstate.ManualClock(int(time.time() * 1000) - 2 * 3600 * 1000)
    past = jobstate.App(jobstate.JobStore(table, endpoint_url=url, clock=clock), cont)
    past.specs.update(app.specs)
    for jid in ("fx-1", "fx-2"):
        past.start("effectful", None, job_id=jid)
        for event in cont.pop_all():
            with pytest.raises(Crash):
                past.handler(event)  # the "container" died inside the effect
            clock.advance(3600)  # its lease expires; the retry finds the effect STARTED
            assert past.handler(event)["outcome"] == "failed"  # EffectOutcomeUnknown
        parked[jid] = jid
    return {"done": done, "running": running, **parked}


def run(url: str, table: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--endpoint-url", url, "--table", table])


def one_error_line(r: Result, code: int = 1) -> str:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[-1]


def test_create_table_is_idempotent_and_json(url, table):
    r = run(url, table, "create-table", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"table": table, "created": False}


def test_status_redacts_tokens(url, table, jobs):
    r = run(url, table, "status", jobs["done"], "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["status"] == "SUCCEEDED" and data["result"] == {"n": 3}
    assert data["tokens"] == {"api_key": "***redacted***"}
    human = run(url, table, "status", jobs["done"])
    assert human.exit_code == 0 and "SUCCEEDED" in human.stdout
    assert "hunter2" not in human.stdout + r.stdout


def test_list_filters_and_json(url, table, jobs):
    r = run(url, table, "list", "--type", "count", "--json")
    ids = {j["job_id"] for j in json.loads(r.stdout)["jobs"]}
    assert {jobs["done"], jobs["running"]} <= ids
    r = run(url, table, "list", "--type", "count", "--status", "succeeded", "--json")
    assert [j["job_id"] for j in json.loads(r.stdout)["jobs"]] == [jobs["done"]]
    r = run(url, table, "list", "--limit", "5")
    assert r.exit_code == 0 and jobs["done"] in r.stdout and "hunter2" not in r.stdout


def test_watch_history_of_a_finished_job(url, table, jobs):
    r = run(url, table, "watch", jobs["done"], "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "SUCCEEDED"
    r = run(url, table, "watch", jobs["running"], "--timeout", "0.3", "--interval", "0.1")
    assert "still PENDING" in one_error_line(r)
    r = run(url, table, "history", jobs["fx-1"], "--json")
    assert r.exit_code == 0 and isinstance(json.loads(r.stdout), list)
    assert run(url, table, "history", jobs["done"]).exit_code == 0


def test_effects_list_done_retry(url, table, jobs):
    r = run(url, table, "effect", "list", jobs["fx-1"], "--json")
    assert [(e["key"], e["state"]) for e in json.loads(r.stdout)] == [("send", "STARTED")]
    r = run(url, table, "effect", "done", jobs["fx-1"], "send", "--result", '{"id": 7}')
    assert r.exit_code == 0 and "DONE" in r.stdout
    r = run(url, table, "effect", "list", jobs["fx-1"], "--json")
    assert json.loads(r.stdout)[0] | {"owner": None} == {  # results may hold tokens
        "key": "send", "state": "DONE", "step": 0, "owner": None, "runs": 1,
        "last_error": None, "result": "***redacted***"}
    assert "is not STARTED" in one_error_line(run(url, table, "effect", "retry",
                                                  jobs["fx-1"], "send"), 2)
    r = run(url, table, "effect", "retry", jobs["fx-2"], "send", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["key"] == "send"
    assert json.loads(run(url, table, "effect", "list", jobs["fx-2"], "--json").stdout) == []
    r = run(url, table, "effect", "done", jobs["fx-2"], "send", "--result", "{nope")
    assert "--result is not valid JSON" in one_error_line(r, 2)


def test_cancel_resume_pause(url, table, jobs):
    r = run(url, table, "cancel", jobs["running"], "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"job_id": jobs["running"],
                                                         "cancelled": 1}
    assert run(url, table, "cancel", jobs["running"]).exit_code == 0  # already: a no-op
    assert "already SUCCEEDED" in one_error_line(run(url, table, "cancel", jobs["done"]))
    r = run(url, table, "resume", jobs["running"])  # a job id: resumes the job
    assert r.exit_code == 0 and "sweeper" in r.stdout
    store = jobstate.JobStore(table, endpoint_url=url)
    assert store.get(jobs["running"]).status is jobstate.JobStatus.RUNNING
    run(url, table, "cancel", jobs["running"])
    r = run(url, table, "resume-job", jobs["running"], "--json")
    assert json.loads(r.stdout)["job"]["status"] == "RUNNING"
    assert "succeeded" in one_error_line(run(url, table, "resume-job", jobs["done"]))

    assert run(url, table, "pause", "count").exit_code == 0
    assert store.is_paused("count", fresh=True)
    # The held job shows PAUSED everywhere an operator looks.
    r = run(url, table, "status", jobs["running"])
    assert "PAUSED" in r.stdout and "paused by" in r.stdout
    assert "PAUSED" in run(url, table, "list", "--type", "count").stdout
    view = json.loads(run(url, table, "status", jobs["running"], "--json").stdout)
    view = view.get("job", view)
    assert view["display_status"] == "PAUSED" and view["paused_by"] == "count"
    r = run(url, table, "resume", "count", "--json")  # not a job id: the type
    # The resumed job (RUNNING, unleased) is runnable again: it is due now.
    assert json.loads(r.stdout) == {"job_type": "count", "paused": False, "due_now": 1}
    assert not store.is_paused("count", fresh=True)
    # Resuming again is a no-op (a retried runbook step must not fail), by name or --type.
    for args in (["count"], ["count", "--type"]):
        r = run(url, table, "resume", *args)
        assert r.exit_code == 0 and "not paused; nothing to do" in r.stdout, r.stderr
    # A type that was never paused is a typo until shown otherwise: refused, nothing written.
    line = one_error_line(run(url, table, "resume", "cuont", "--type"))
    assert "'cuont' was never paused" in line and "check the name" in line
    assert store.pause_state("cuont") is None
    assert "no job 'cuont' and no job type" in one_error_line(run(url, table, "resume",
                                                                  "cuont"))
    assert "--function applies to a job" in one_error_line(
        run(url, table, "resume", "count", "--type", "--function", "fn"))


def test_sweep(url, table, jobs):
    r = run(url, table, "sweep")
    assert "--function" in one_error_line(r, 2)
    # A job whose start event was lost an hour ago is due; its function does not exist.
    clock = jobstate.ManualClock(int(time.time() * 1000) - 3600 * 1000)
    cont = jobstate.InMemoryContinuation()
    past = jobstate.App(jobstate.JobStore(table, endpoint_url=url, clock=clock), cont)
    past.specs.update(app.specs)
    lost = past.start("count", {"n": 1}, job_id="lost-start-1")
    cont.pop_all()
    r = run(url, table, "sweep", "--function", "no-such-fn", "--lambda-endpoint-url", url,
            "--json", "--limit", "500")
    line = one_error_line(r)  # exit 1: a script must notice nothing was sent
    assert "could not dispatch" in line and "no-such-fn" in line and "due again in" in line
    report = json.loads(r.stdout)
    assert report["dispatch_errors"] >= 1 and "no-such-fn" in report["first_dispatch_error"]
    # Postponed, not lost: still PENDING, and due again after the dispatch timeout.
    store = jobstate.JobStore(table, endpoint_url=url)
    job = store.get(lost)
    assert job.status is jobstate.JobStatus.PENDING
    assert job.due_at is not None and job.due_at > int(time.time() * 1000)
    assert run(url, table, "sweep", "--function", "no-such-fn", "--lambda-endpoint-url",
               url).exit_code == 0  # nothing due now


def test_errors_are_one_line(url, table):
    r = CliRunner().invoke(cli, ["status", "x", "--endpoint-url", url, "--table", "nope"])
    line = one_error_line(r)
    assert line.startswith("error: table 'nope' does not exist") and "jobstate create-table" \
        in line
    assert "no job 'ghost'" in one_error_line(run(url, table, "status", "ghost"))
    assert "job id" in one_error_line(run(url, table, "status", "bad id"), 2)
    for args in (["status"], ["list", "--status", "BOGUS"], ["list", "--limit", "0"],
                 ["frobnicate"], ["run", "no_colon", "count"],
                 ["run", "test_cli:app", "count", "--input", "{bad"]):
        r = run(url, table, *args)
        assert r.exit_code == 2 and "Traceback" not in r.stderr, (args, r.stderr)
    r = CliRunner().invoke(cli, ["--debug", "status", "bad id", "--endpoint-url", url,
                                 "--table", table])
    assert r.exit_code == 1 and isinstance(r.exception, jobstate.InvalidInput)


def test_run_a_job_on_the_local_runtime_with_chaos(url, table):
    r = run(url, table, "run", "test_cli:app", "count", "--input", '{"n": 6}', "--json",
            "--chaos", "duplicate=0.5,throttle_invoke=0.3", "--seed", "3",
            "--timeout-ms", "2000", "--concurrency", "2",
            # Chaos is seeded per (job id, step): a fixed id makes the faults reproducible.
            "--job-id", "cli-chaos-1")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] and data["job"]["status"] == "SUCCEEDED"
    assert data["job"]["tokens"] == {"api_key": "***redacted***"}
    assert data["stats"]["total"]["steps"] == 7
    assert data["stats"]["total"]["duplicates_delivered"] > 0
    status = json.loads(run(url, table, "status", data["job"]["job_id"], "--json").stdout)
    assert status["status"] == "SUCCEEDED"  # the same table: `run` used --endpoint-url

    r = run(url, table, "run", "test_cli:nothing", "count")
    assert "could not load app 'test_cli:nothing'" in one_error_line(r)
    r = run(url, table, "run", "test_cli:app", "nope", "--input", "{}")
    assert "no job type 'nope'" in one_error_line(r, 2)


def _script() -> str:
    # The script of the interpreter running the tests (the venv's), not one on PATH.
    beside = Path(sys.executable).parent / "jobstate"
    path = str(beside) if beside.exists() else shutil.which("jobstate") or str(beside)
    assert Path(path).exists(), "the jobstate console script is not installed"
    return path


def test_installed_script(url, tmp_path):
    # No AWS settings at all: a local endpoint still works (dummy credentials).
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    p = subprocess.run([_script(), "--version"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.returncode == 0 and jobstate.__version__ in p.stdout
    p = subprocess.run([_script(), "list", "--endpoint-url", url, "--table", "missing"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "jobstate create-table" in p.stderr


# Every command, against a table that does not exist: one clear line, exit 1.
MISSING_TABLE = [
    ("status", "j1"), ("list",), ("watch", "j1", "--timeout", "1"), ("history", "j1"),
    ("cancel", "j1"), ("pause", "count"), ("resume", "j1", "--job"),
    ("resume", "count", "--type"), ("resume-job", "j1"), ("sweep", "--function", "fn"),
    ("effect", "list", "j1"), ("effect", "done", "j1", "k"), ("effect", "retry", "j1", "k"),
]


@pytest.mark.parametrize("args", MISSING_TABLE, ids=lambda a: " ".join(a))
def test_every_command_on_a_missing_table_is_one_clear_line(url, args):
    r = CliRunner().invoke(cli, [*args, "--endpoint-url", url,
                                 "--table", f"missing-{uuid.uuid4().hex[:6]}"])
    line = one_error_line(r, 1)
    assert "does not exist" in line and "create-table" in line, line


# Bad arguments and bad values: one line, exit 2 (before anything is read or written).
BAD_ARGS = [
    ("status",), ("status", "not a job id!"), ("list", "--status", "nope"),
    ("list", "--limit", "0"), ("watch",), ("watch", "j1", "--interval", "0"),
    ("history",), ("cancel",), ("cancel", "j1", "--reason", ""), ("pause",),
    ("pause", "not a type!"), ("resume",), ("resume", "j1", "--job", "--max-steps", "0"),
    ("resume-job",), ("sweep",), ("sweep", "--function", "fn", "--limit", "0"),
    ("effect", "list"), ("effect", "done", "j1"), ("effect", "done", "j1", "k", "--result",
                                                    "{nope"),
    ("effect", "retry", "j1", "bad\x00key"), ("demo", "--seed", "x"),
    ("demo", "--chaos", "explode=1"), ("demo", "--users", "0"),
    ("demo", "--timeout-ms", "100"), ("demo", "--time-limit", "0"), ("run", "nomodule", "t"),
    ("run", "test_cli:app", "count", "--input", "{bad"), ("create-table", "--region"),
    ("frobnicate",),
]


@pytest.mark.parametrize("args", BAD_ARGS, ids=lambda a: " ".join(a))
def test_every_command_with_bad_arguments_is_one_clear_line(url, table, args):
    r = CliRunner().invoke(cli, [*args, "--endpoint-url", url, "--table", table]
                           if args[-1] != "--region" else [*args])
    one_error_line(r, 2)


def test_a_command_run_in_process_leaves_logging_as_it_found_it(url, table):
    log = logging.getLogger("jobstate")
    before = (log.propagate, list(log.handlers))
    assert run(url, table, "list").exit_code == 0
    one_error_line(run(url, table, "status", "ghost"))
    assert (log.propagate, list(log.handlers)) == before
