"""Issue 20 through the status API: the console page, a job's history, children and
effects, and redrive — each behind its grant, each call allowed by the template."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iam_coverage import covers
from status_requests import ACCOUNT, OPERATOR, url_event

import jobstate
from handlers import status_api
from tests.conftest import drain

# The template must allow every AWS call these routes make (tests/iam_coverage.py).
iam = covers("StatusApiFunction")

EVERYTHING = json.dumps([{"principal": OPERATOR, "read": ["*"], "list": ["*"],
                          "cancel": ["*"], "redrive": ["*"]}])
READER = f"arn:aws:sts::{ACCOUNT}:assumed-role/readers/bob"
READ_ONLY = json.dumps([{"principal": READER, "read": ["*"], "list": ["*"]}])


def call(api: status_api.StatusApi, method: str, path: str, body: Any = None,
         caller: str = OPERATOR) -> tuple[int, Any]:
    resp = api.handler(url_event(method, path, caller=caller, body=body))
    if resp["headers"]["content-type"].startswith("text/html"):
        return resp["statusCode"], resp["body"]
    return resp["statusCode"], json.loads(resp["body"])


@pytest.fixture
def app(jobstate_store: jobstate.JobStore,
        jobstate_continuation: jobstate.InMemoryContinuation) -> jobstate.App:
    app = jobstate.App(jobstate_store, jobstate_continuation)
    broken = {"yes": True}

    @app.job("rows", max_attempts=1)
    def rows(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 1 and broken["yes"]:
            raise RuntimeError("bad row")
        if ctx.step == 2:
            return ctx.complete("ok")
        return None

    app.broken = broken  # type: ignore[attr-defined]
    return app


def test_the_console_page_and_a_jobs_history_effects_and_redrive(
        app: jobstate.App, jobstate_store: jobstate.JobStore,
        jobstate_continuation: jobstate.InMemoryContinuation) -> None:
    api = status_api.StatusApi(jobstate_store, status_api.Grants.parse(EVERYTHING))
    status, page = call(api, "GET", "/console")
    assert status == 200 and "jobstate console" in page
    jid = app.start("rows", {})
    drain(app, jobstate_continuation)
    status, hist = call(api, "GET", f"/jobs/{jid}/history")
    assert status == 200 and [e["event"] for e in hist["history"]] == ["committed", "failed"]
    status, fx = call(api, "GET", f"/jobs/{jid}/effects")
    assert status == 200 and fx["effects"] == []
    status, kids = call(api, "GET", f"/jobs/{jid}/children")
    assert status == 200 and kids["total"] == 0

    app.broken["yes"] = False  # type: ignore[attr-defined]
    status, out = call(api, "POST", f"/jobs/{jid}/redrive", {"reason": "fixed upstream"})
    assert status == 200 and out["job"]["status"] == "RUNNING" and out["job"]["step"] == 1
    jobstate.sweep(jobstate_store, jobstate_continuation)
    drain(app, jobstate_continuation)
    assert jobstate_store.get(jid).status is jobstate.JobStatus.SUCCEEDED
    redriven = [e for e in jobstate_store.history(jid) if e.event == "redriven"]
    assert redriven[0].who == OPERATOR and redriven[0].detail == "from step 1: fixed upstream"
    assert call(api, "POST", f"/jobs/{jid}/redrive")[0] == 400  # SUCCEEDED now

    status, out = call(api, "POST", f"/jobs/{app.start('rows', {})}/cancel", {"reason": "x"})
    assert status == 200


def test_redrive_needs_its_own_grant(app: jobstate.App, jobstate_store: jobstate.JobStore,
                                     jobstate_continuation: jobstate.InMemoryContinuation
                                     ) -> None:
    jid = app.start("rows", {})
    drain(app, jobstate_continuation)
    api = status_api.StatusApi(jobstate_store, status_api.Grants.parse(READ_ONLY))
    status, out = call(api, "POST", f"/jobs/{jid}/redrive", caller=READER)
    assert status == 403 and "may not redrive" in out["error"]
    assert jobstate_store.get(jid).status is jobstate.JobStatus.FAILED
    status, hist = call(api, "GET", f"/jobs/{jid}/history", caller=READER)
    assert status == 200 and hist["history"][-1]["event"] == "failed"
    status, out = call(api, "POST", f"/jobs/{jid}/redrive", {"from_step": 1})
    assert status == 403  # OPERATOR has no grant in READ_ONLY


def test_a_bad_from_step_is_refused_before_anything_is_read(
        jobstate_store: jobstate.JobStore) -> None:
    api = status_api.StatusApi(jobstate_store, status_api.Grants.parse(EVERYTHING))
    status, out = call(api, "POST", "/jobs/j1/redrive", {"from_step": "one"})
    assert status == 400 and "from_step" in out["error"]
