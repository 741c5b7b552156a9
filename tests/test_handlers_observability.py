"""Observability: one EMF line per invocation, JSON log lines (stdlib and Powertools),
and no token value in any log line, metric or operator output — under chaos."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tenacity
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from status_requests import OPERATOR_GRANTS, url_event

import jobstate
from jobstate import observe
from jobstate.testing import Driver, FakeLambdaContext

ROOT = Path(__file__).resolve().parents[1]
SENTINEL = "tok-SENTINEL-5f2a9c"


def emf_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith('{"_aws"')]


def check_emf(doc: dict[str, Any]) -> None:
    """The structure CloudWatch requires of an EMF document."""
    meta = doc["_aws"]
    assert isinstance(meta["Timestamp"], int)
    [directive] = meta["CloudWatchMetrics"]
    assert directive["Namespace"] == "jobstate"
    for dims in directive["Dimensions"]:
        assert all(isinstance(doc[d], str) for d in dims)  # every dimension has a value
    for metric in directive["Metrics"]:
        assert set(metric) == {"Name", "Unit"}
        assert metric["Unit"] == ("Milliseconds" if metric["Name"] == "StepDuration"
                                  else "Count")
        assert isinstance(doc[metric["Name"]], int | float)


@pytest.fixture
def emf_app(jobstate_store: jobstate.JobStore,
            jobstate_continuation: jobstate.InMemoryContinuation) -> jobstate.App:
    app = jobstate.App(jobstate_store, jobstate_continuation, emf=True)
    calls = {"n": 0}

    @app.job("work", max_attempts=2, retry=jobstate.RetryPolicy(
        max_attempts=2, wait=tenacity.wait_fixed(120)))
    def work(ctx: jobstate.StepContext) -> Any:
        ctx.once("effect", lambda: "ok")
        if ctx.input.get("fail"):
            calls["n"] += 1
            raise RuntimeError("flaky dependency")
        return ctx.complete() if ctx.step >= 1 else None

    return app


def deliver(app: jobstate.App, cont: jobstate.InMemoryContinuation,
            clock: jobstate.ManualClock) -> dict[str, Any]:
    [event] = cont.pop_all()
    cont.events.append(event)  # keep it for a duplicate delivery
    return app.handler(event, FakeLambdaContext(clock))


def test_one_emf_line_per_invocation_with_the_right_metrics(
    emf_app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, capsys: pytest.CaptureFixture[str],
) -> None:
    emf_app.start("work", {"n": 1}, job_id="w-1")
    capsys.readouterr()
    event = jobstate_continuation.pop_all()[0]
    ctx = FakeLambdaContext(jobstate_clock)
    emf_app.handler(event, ctx)  # step 0: claimed, effect, committed
    [doc] = emf_lines(capsys.readouterr().out)
    check_emf(doc)
    assert doc["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["JobType"], []]
    assert doc["JobType"] == "work"
    assert {k: doc[k] for k in ("Steps", "Effects", "Commits")} == {
        "Steps": 1, "Effects": 1, "Commits": 1}
    assert doc["StepDuration"] >= 0
    emf_app.handler(event, ctx)  # the same event again: a duplicate
    [dup] = emf_lines(capsys.readouterr().out)
    check_emf(dup)
    assert {k: v for k, v in dup.items() if k not in ("_aws", "JobType")} == {"Duplicates": 1}
    emf_app.handler(jobstate_continuation.pop_all()[0], ctx)  # step 1 completes
    [last] = emf_lines(capsys.readouterr().out)
    assert last["JobsSucceeded"] == 1 and last["Steps"] == 1


def test_failures_retries_and_takeovers_are_counted(
    emf_app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, capsys: pytest.CaptureFixture[str],
) -> None:
    emf_app.start("work", {"fail": True}, job_id="w-2")
    driver = Driver(emf_app, jobstate_continuation, jobstate_clock)
    event = jobstate_continuation.pop_all()[0]
    driver.deliver(event, crash_at="after_claim")  # a lost container: nothing counted yet
    capsys.readouterr()
    driver.sweep()
    driver.run()  # takeover, then the step raises: retry scheduled (backoff 120 s)
    driver.run_until_done(["w-2"])  # second attempt fails the job
    docs = emf_lines(capsys.readouterr().out)
    for doc in docs:
        check_emf(doc)
    total: dict[str, float] = {}
    for doc in docs:
        for m in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            total[m["Name"]] = total.get(m["Name"], 0) + doc[m["Name"]]
    assert total["Takeovers"] == 1 and total["Retries"] == 1 and total["JobsFailed"] == 1
    assert total["Steps"] == 2 and total["Effects"] == 1  # the effect ran once, was DONE


def test_template_alarm_matches_the_emitted_metric(
    emf_app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, capsys: pytest.CaptureFixture[str],
) -> None:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    template = yaml.load((ROOT / "template.yaml").read_text(), Loader=Loader)
    alarm = template["Resources"]["JobsFailedAlarm"]["Properties"]
    emf_app.start("work", {"fail": True}, job_id="w-3")
    Driver(emf_app, jobstate_continuation, jobstate_clock).run_until_done()
    failed = [d for d in emf_lines(capsys.readouterr().out) if "JobsFailed" in d]
    assert failed
    directive = failed[0]["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == alarm["Namespace"] == "jobstate"
    assert alarm["MetricName"] == "JobsFailed"
    # The alarm has no Dimensions, so the metric must also be published without any.
    assert "Dimensions" not in alarm and [] in directive["Dimensions"]


def test_emf_only_in_lambda_or_when_asked(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = jobstate.App(jobstate_store, jobstate_continuation)  # emf=None: from the env
    app.job("t")(lambda ctx: ctx.complete())
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    monkeypatch.delenv("JOBSTATE_EMF", raising=False)
    for env, expected in [({}, 0), ({"AWS_LAMBDA_FUNCTION_NAME": "fn"}, 1),
                          ({"AWS_LAMBDA_FUNCTION_NAME": "fn", "JOBSTATE_EMF": "0"}, 0),
                          ({"JOBSTATE_EMF": "1"}, 1)]:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            job_id = app.start("t")
            capsys.readouterr()
            Driver(app, jobstate_continuation, jobstate_clock).run_until_done([job_id])
            assert len(emf_lines(capsys.readouterr().out)) == expected, env


def test_log_lines_are_json_with_ids(
    emf_app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="jobstate")
    emf_app.start("work", {}, job_id="w-4")
    ctx = FakeLambdaContext(jobstate_clock, aws_request_id="req-42")
    emf_app.handler(jobstate_continuation.pop_all()[0], ctx)
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "jobstate"]
    by_outcome = {r["jobstate"]: r for r in records}
    assert {"started", "claimed", "committed"} <= set(by_outcome)
    claimed = by_outcome["claimed"]
    assert claimed == {"jobstate": "claimed", "job_id": "w-4", "job_type": "work", "step": 0,
                       "request_id": "req-42"}
    assert by_outcome["committed"]["request_id"] == "req-42"


def test_powertools_logger(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    from aws_lambda_powertools import Logger

    buf = io.StringIO()
    logger = Logger(service="mailer", logger_handler=logging.StreamHandler(buf))
    app = jobstate.App(jobstate_store, jobstate_continuation, logger=logger, emf=False)
    app.job("t")(lambda ctx: ctx.complete())
    app.start("t", job_id="pt-1")
    app.handler(jobstate_continuation.pop_all()[0],
                FakeLambdaContext(jobstate_clock, aws_request_id="req-7"))
    lines = [json.loads(ln) for ln in buf.getvalue().splitlines()]
    completed = next(ln for ln in lines if ln.get("jobstate") == "completed")
    assert completed["service"] == "mailer" and completed["level"] == "INFO"
    assert completed["message"] == "jobstate completed"
    assert (completed["job_id"], completed["job_type"], completed["step"],
            completed["request_id"]) == ("pt-1", "t", 0, "req-7")


# -- tokens never leak ----------------------------------------------------------------------


def test_no_token_in_logs_metrics_or_operator_output(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aws_lambda_powertools import Logger

    from handlers import etl_poller, status_api, sweeper

    caplog.set_level(logging.DEBUG, logger="jobstate")
    caplog.set_level(logging.INFO)  # (botocore DEBUG prints request bodies: never in prod)
    pt_buf = io.StringIO()
    pt_logger = Logger(service="svc", logger_handler=logging.StreamHandler(pt_buf))
    outputs: list[str] = []

    apps = []
    for i, logger in enumerate((None, pt_logger)):
        app = jobstate.App(jobstate_store, jobstate_continuation, emf=True, logger=logger)

        @app.job("secret", max_steps=50)
        def secret(ctx: jobstate.StepContext) -> Any:
            ctx.tokens.setdefault("api_key", SENTINEL)
            ctx.tokens["nested"] = {"k": SENTINEL}
            ctx.log.info("step context %r", ctx)  # a user logging the context
            ctx.once(f"e{ctx.step}", lambda: "done", semantics=jobstate.Semantics.AT_LEAST_ONCE)
            if ctx.step == 2 and ctx.attempt == 1:
                raise RuntimeError("transient failure")  # a retry, with history
            if ctx.step < 5:
                return None
            return ctx.complete({"steps": ctx.step})

        apps.append((app, f"sec-{i}"))

    for app, job_id in apps:
        app.start("secret", job_id=job_id)
        driver = Driver(app, jobstate_continuation, jobstate_clock, seed=4,
                        duplicates=0.4, crashes=0.3, lost=0.2)
        driver.run_until_done([job_id], calm_after=20)
        assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
        assert jobstate_store.get(job_id, secrets=True).tokens["api_key"] == SENTINEL
        outputs += [json.dumps(r) for r in driver.reports]
        outputs.append(repr(driver.stats))

    # The ETL poller's real token, under chaos, too.
    api = etl_poller.FakeEtlApi(complete_after=5)
    poller = etl_poller.EtlPoller(jobstate_store, jobstate_continuation, api=api,
                                  notifier=etl_poller.FakeNotifier(), emf=True)
    etl_id = poller.app.start(etl_poller.JOB_TYPE, {"report": {"a": 1}})
    Driver(poller.app, jobstate_continuation, jobstate_clock, seed=9, duplicates=0.3,
           crashes=0.3).run_until_done([etl_id], calm_after=20)
    [etl_token] = api.jobs

    # Everything an operator sees: views, lists, history, effects, status API, sweeper.
    api_http = status_api.StatusApi(jobstate_store,
                                    status_api.Grants.parse(OPERATOR_GRANTS))
    for job in jobstate_store.iter_jobs():
        outputs += [json.dumps(job.to_dict()), repr(job), str(job)]
        outputs += [json.dumps([h.to_dict() for h in jobstate_store.history(job.job_id)])]
        outputs += [json.dumps(jobstate.list_effects(jobstate_store, job.job_id))]
        resp = api_http.handler(url_event("GET", f"/jobs/{job.job_id}"))
        assert resp["statusCode"] == 200
        outputs.append(resp["body"])
    resp = api_http.handler(url_event("GET", "/jobs"))
    assert resp["statusCode"] == 200
    outputs.append(resp["body"])
    outputs.append(json.dumps(sweeper.run(jobstate_store, jobstate_continuation)))
    cli = pytest.importorskip("jobstate.cli").cli
    from click.testing import CliRunner

    runner = CliRunner()
    table = ["--table", jobstate_store.table_name, "--region", "us-east-1"]
    for job in jobstate_store.iter_jobs():
        for args in (["status", job.job_id], ["status", job.job_id, "--json"],
                     ["history", job.job_id, "--json"], ["effect", "list", job.job_id]):
            result = runner.invoke(cli, [*args, *table])
            assert result.exit_code == 0, result.output
            outputs.append(result.output)
    outputs.append(runner.invoke(cli, ["list", "--json", *table]).output)
    captured = capsys.readouterr()
    outputs += [captured.out, captured.err, caplog.text, pt_buf.getvalue()]
    outputs += [r.getMessage() for r in caplog.records]

    everything = "\n".join(outputs)
    assert emf_lines(captured.out), "no EMF output was captured"
    assert "claimed" in caplog.text and "retry_scheduled" in everything
    assert '"jobstate":"committed"' in pt_buf.getvalue().replace(" ", "")
    for secret in (SENTINEL, etl_token):
        assert secret not in everything
    assert not re.search(r"secret-etl-token-[0-9a-f]{32}", everything)


# -- nothing connects at import ---------------------------------------------------------------

IMPORT_PROBE = r"""
import json, socket, sys
import botocore.session

created = []
real = botocore.session.Session.create_client

def no_client(self, *a, **k):
    created.append(a[0] if a else k.get("service_name"))
    return real(self, *a, **k)

def no_network(*a, **k):
    raise AssertionError("network access at import time")

botocore.session.Session.create_client = no_client
socket.socket.connect = no_network
socket.create_connection = no_network
sys.path.insert(0, sys.argv[1])
import handlers.s3_file_processor as a, handlers.etl_poller as b, handlers.batch_mailer as c
import handlers.sweeper as d, handlers.status_api as e
print(json.dumps({"clients": created,
                  "handlers": [callable(m.handler) for m in (a, b, c, d, e)],
                  "apps": sorted(t for m in (a, b, c) for t in m.app.specs)}))
"""


def test_handlers_connect_to_nothing_at_import() -> None:
    env = {"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true"}  # no credentials
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE, str(ROOT)], env=env,
                         capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["clients"] == []
    assert result["handlers"] == [True] * 5
    assert result["apps"] == ["batch-mailer", "batch-mailer-chain", "etl-poller",
                              "file-processor"]


def test_observe_event_outside_an_invocation_only_logs(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.INFO, logger="jobstate")
    observe.event("chain_cut", logging.WARNING, job_id="j", step=16, token=None)
    observe.count("Steps")  # no invocation: nothing to count into, no error
    [record] = [r for r in caplog.records if r.name == "jobstate"]
    assert json.loads(record.getMessage()) == {"jobstate": "chain_cut", "job_id": "j",
                                               "step": 16}
