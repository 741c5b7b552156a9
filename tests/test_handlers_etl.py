"""handlers.etl_poller: one ETL start and one notification, whatever Lambda does.

The independent sinks are the fakes: FakeEtlApi counts starts, FakeNotifier keeps every
message it was asked to send.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aws_sinks import LambdaSink
from iam_coverage import covers

import jobstate
from handlers import etl_poller as etl
from jobstate import faults
from jobstate.testing import Crash, Driver, FakeLambdaContext

# The template must allow every AWS call this handler makes (tests/iam_coverage.py).
iam = covers("EtlPollerFunction")

REPORT = {"rows": [{"id": i, "amount": i * 10} for i in range(20)]}


def make(store: jobstate.JobStore, cont: jobstate.InMemoryContinuation, **kw: Any) -> Any:
    api = kw.pop("api", None) or etl.FakeEtlApi(complete_after=kw.pop("complete_after", 6))
    notifier = kw.pop("notifier", None) or etl.FakeNotifier()
    poller = etl.EtlPoller(store, cont, api=api, notifier=notifier, **kw)
    return poller, api, notifier


@pytest.mark.parametrize("seed", range(10))
def test_one_start_one_notification_under_chaos(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, seed: int,
) -> None:
    poller, api, notifier = make(jobstate_store, jobstate_continuation, complete_after=10)
    job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT, "name": "daily"},
                              job_id=f"etl-daily-{seed}")
    driver = Driver(poller.app, jobstate_continuation, jobstate_clock, seed=seed,
                    duplicates=0.3, crashes=0.25, lost=0.1)
    driver.run_until_done([job_id], calm_after=40)
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.SUCCEEDED, job.error
    assert api.starts == 1
    assert len(notifier.outbox) == 1
    assert notifier.outbox[0]["subject"] == "ETL finished: daily"
    assert job.result == {"upload_id": job.cursor["upload_id"], "state": "DONE",
                          "rows": job.result["rows"], "notified": True}
    assert job.tokens == {"etl": jobstate.codec.REDACTED}  # stored, never shown


def test_long_waits_end_the_step_and_the_sweeper_resumes(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    poller, api, notifier = make(jobstate_store, jobstate_continuation, complete_after=8)
    job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT})
    driver = Driver(poller.app, jobstate_continuation, jobstate_clock)
    driver.run()  # runs until the poll backoff no longer fits the 60 s invocation
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.WAITING and job.wait_reason == "poll:etl"
    assert job.tokens == {"etl": jobstate.codec.REDACTED}
    assert api.starts == 1 and api.polls >= 2  # the first backoff (30 s) was slept in-process
    assert jobstate_continuation.events == []  # nothing dispatched: the sweeper owns the wait
    driver.run_until_done([job_id])
    assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert driver.stats.sweeps >= 2 and api.polls == 8
    assert len(notifier.outbox) == 1


def test_survives_container_loss_mid_poll(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    killed = []

    def die_on_third_poll(token: str, n: int) -> None:
        if n == 3 and not killed:
            killed.append(token)
            raise Crash("container killed while polling")

    api = etl.FakeEtlApi(complete_after=6, on_status=die_on_third_poll)
    poller, _, notifier = make(jobstate_store, jobstate_continuation, api=api)
    job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT})
    Driver(poller.app, jobstate_continuation, jobstate_clock).run_until_done([job_id])
    job = jobstate_store.get(job_id)
    assert killed, "the fault was not injected"
    assert job.status is jobstate.JobStatus.SUCCEEDED
    assert job.takeovers >= 1  # the next invocation took the dead one's lease over
    assert api.starts == 1 and len(api.uploads) == 1 and len(notifier.outbox) == 1
    assert list(api.jobs) == killed  # it kept polling the same ETL job (token persisted)


@pytest.mark.parametrize("point", ["effect_started", "effect_called"])
def test_crash_inside_the_start_is_reconciled(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, point: str,
) -> None:
    # effect_started: STARTED recorded, API not called; effect_called: API called, DONE
    # not recorded. Either way the next attempt must not start a second ETL job, and
    # must not park the job either: `reconcile` asks the API.
    poller, api, notifier = make(jobstate_store, jobstate_continuation)
    job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT})
    [event] = jobstate_continuation.pop_all()
    hits = []

    def kill_in_start(name: str, info: dict[str, Any]) -> None:
        if name == point and info.get("key") == "start-etl":
            hits.append(name)
            raise Crash(name)

    with faults.installed(kill_in_start), pytest.raises(Crash):
        poller.app.handler(event, FakeLambdaContext(jobstate_clock))
    assert hits == [point]
    assert api.starts == (1 if point == "effect_called" else 0)
    Driver(poller.app, jobstate_continuation, jobstate_clock).run_until_done([job_id])
    assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert api.starts == 1 and len(notifier.outbox) == 1


def test_failed_etl_notifies_once_and_fails_the_job(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    api = etl.FakeEtlApi(complete_after=2, fail=True)
    poller, _, notifier = make(jobstate_store, jobstate_continuation, api=api)
    job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT, "name": "weekly"})
    Driver(poller.app, jobstate_continuation, jobstate_clock, seed=3,
           duplicates=0.5).run_until_done([job_id])
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.FAILED
    assert "bad rows in report" in (job.error or "")
    assert [m["subject"] for m in notifier.outbox] == ["ETL FAILED: weekly"]


def test_over_http_with_the_real_client(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = etl.FakeEtlApi(complete_after=3)
    with fake.serve() as url:
        monkeypatch.setenv("ETL_API_URL", url)
        poller = etl.EtlPoller(jobstate_store, jobstate_continuation)  # env-configured
        job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT, "name": "http"})
        Driver(poller.app, jobstate_continuation, jobstate_clock, seed=1,
               duplicates=0.3, crashes=0.2).run_until_done([job_id], calm_after=20)
        client = etl.EtlClient(url)
        assert client.find("nope") is None
        with pytest.raises(etl.EtlError):
            client.status("no-such-token")
    assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert fake.starts == 1
    assert [n["subject"] for n in fake.notifications] == ["ETL finished: http"]


def test_a_failed_poll_never_puts_the_token_in_the_job_logs_or_the_api(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from status_requests import OPERATOR_GRANTS, url_event

    from handlers.status_api import Grants, StatusApi

    class DropsFirstPoll(etl.FakeEtlApi):
        dropped = False

        def status(self, token: str) -> dict[str, Any]:
            if not self.dropped:
                self.dropped = True
                raise ConnectionResetError  # the server hangs up: no HTTP answer at all
            return super().status(token)

    fake = DropsFirstPoll(complete_after=2)
    caplog.set_level(logging.INFO, logger="jobstate")
    with fake.serve() as url:
        poller, _, _ = make(jobstate_store, jobstate_continuation, api=etl.EtlClient(url))
        job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT})
        driver = Driver(poller.app, jobstate_continuation, jobstate_clock)
        driver.step()
        driver.step()
        [token] = fake.jobs
        # The failed poll's error is in the step's history (a step that recovers keeps no
        # old error on the job itself).
        [error] = [h.detail for h in jobstate_store.history(job_id)
                   if h.event == "retry_scheduled"]
        assert error and "EtlUnavailable" in error and "/jobs/..." in error
        body = StatusApi(jobstate_store, Grants.parse(OPERATOR_GRANTS)).handler(
            url_event("GET", f"/jobs/{job_id}"))
        assert body["statusCode"] == 200
        driver.run_until_done([job_id])
    assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    for text in (error, body["body"], caplog.text):
        assert token not in text


def test_unreachable_api_is_retried_then_fails(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    api = etl.EtlClient("http://127.0.0.1:9", timeout_s=0.5)  # nothing listens on port 9
    poller, _, notifier = make(jobstate_store, jobstate_continuation, api=api)
    job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT})
    Driver(poller.app, jobstate_continuation, jobstate_clock).run_until_done([job_id])
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.FAILED
    assert job.retries == 4 and "EtlUnavailable" in (job.error or "")
    assert notifier.outbox == []


def test_no_api_url_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ETL_API_URL", raising=False)
    with pytest.raises(etl.EtlError, match="ETL_API_URL"):
        etl.EtlClient()


def test_a_start_request_invokes_its_own_function(
        jobstate_store: jobstate.JobStore, jobstate_clock: jobstate.ManualClock) -> None:
    """Step 0 of a job started through the handler is an asynchronous Invoke of the worker
    itself (the template's InvokeSelf grant; the IAM coverage check sees it, with the
    function's ARN). Later steps wait on the ETL API and are resumed by the sweeper."""
    sink = LambdaSink()
    cont = jobstate.LambdaContinuation("stack-etl-poller", client=sink.client)
    poller, _, _ = make(jobstate_store, cont)  # type: ignore[arg-type]
    poller.handler({"jobstate": {"start": {"job_type": etl.JOB_TYPE, "job_id": "etl-self",
                                           "input": {"report": REPORT, "name": "daily"}}}},
                   FakeLambdaContext(jobstate_clock))
    [(name, event)] = sink.invokes
    assert name == "stack-etl-poller" and event["jobstate"]["job_id"] == "etl-self"


# -- webhook mode (issue 18): the ETL service calls back instead of being polled ----------------


@pytest.mark.parametrize("seed", range(4))
def test_webhook_mode_waits_without_polling_and_runs_on_the_callback(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, seed: int,
) -> None:
    poller, api, notifier = make(jobstate_store, jobstate_continuation)
    job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT, "name": "hook",
                                             "mode": "webhook"}, job_id=f"etl-hook-{seed}")
    driver = Driver(poller.app, jobstate_continuation, jobstate_clock, seed=seed,
                    duplicates=0.3, crashes=0.2, lost=0.1)
    for _ in range(30):  # until the ETL job is started and the step waits on its callback
        driver.run()
        if api.starts and jobstate_store.get(job_id).wait_reason == "callback:etl":
            break
        driver.sweep()
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.WAITING and api.polls == 0
    assert api.starts == 1
    # The service finishes and calls back (answered twice: webhooks are retried too).
    sent: list[tuple[str, Any]] = []

    def answer(token: str, result: Any) -> Any:
        sent.append((token, result))
        return poller.app.complete_callback(token, result)

    assert api.finish(answer) == 1
    job_token, result = sent[0]
    again = poller.app.complete_callback(job_token, result)
    assert again.repeated and not again.woke
    driver.run_until_done([job_id], calm_after=10)
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.SUCCEEDED, job.error
    assert api.polls == 0 and len(notifier.outbox) == 1
    assert job.result["state"] == "DONE" and job.result["rows"] > 1
    assert job_token not in str(job.to_dict())


def test_webhook_mode_failure_and_timeout(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    api = etl.FakeEtlApi(fail=True)
    poller, _, notifier = make(jobstate_store, jobstate_continuation, api=api,
                               mode="webhook", poll_timeout_s=600)
    failing = poller.app.start(etl.JOB_TYPE, {"report": REPORT, "name": "bad"})
    driver = Driver(poller.app, jobstate_continuation, jobstate_clock)
    driver.run()
    assert api.finish(poller.app.complete_callback, poller.app.fail_callback) == 1
    driver.run()
    assert "bad rows in report" in (jobstate_store.get(failing).error or "")
    silent = poller.app.start(etl.JOB_TYPE, {"report": REPORT, "name": "silent"})
    driver.run()
    driver.sweep(advance_s=601)  # the callback's timeout: the sweeper wakes the job
    driver.run()
    assert "never called back" in (jobstate_store.get(silent).error or "")
    assert [m["subject"] for m in notifier.outbox] == ["ETL FAILED: bad", "ETL FAILED: silent"]


def test_webhook_mode_over_http(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = etl.FakeEtlApi()
    with fake.serve() as url:
        monkeypatch.setenv("ETL_API_URL", url)
        poller = etl.EtlPoller(jobstate_store, jobstate_continuation, mode="webhook")
        job_id = poller.app.start(etl.JOB_TYPE, {"report": REPORT, "name": "http"})
        driver = Driver(poller.app, jobstate_continuation, jobstate_clock)
        driver.run()
        assert fake.finish(jobstate_store.complete_callback) == 1  # a sender with the table
        driver.run_until_done([job_id])
    assert jobstate_store.get(job_id).status is jobstate.JobStatus.SUCCEEDED
    assert fake.polls == 0 and fake.starts == 1
