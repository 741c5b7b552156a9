"""handlers.status_api: POST /callbacks/succeed|fail|heartbeat (issue 18), authorised by
the `callback` grant (deny by default), the token only ever in the body and never echoed."""

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

iam = covers("StatusApiFunction")

SENDER = f"arn:aws:sts::{ACCOUNT}:assumed-role/payments-webhook/lambda"
GRANTS = json.dumps([
    {"principal": SENDER, "callback": ["approve"]},
    {"principal": OPERATOR, "read": ["*"], "list": ["*"], "cancel": ["*"]},
])


@pytest.fixture
def app(jobstate_store: jobstate.JobStore,
        jobstate_continuation: jobstate.InMemoryContinuation) -> jobstate.App:
    app = jobstate.App(jobstate_store, jobstate_continuation)
    app.tokens = {}  # type: ignore[attr-defined]

    def waits(ctx: jobstate.StepContext) -> Any:
        cb = ctx.callback("go", timeout_s=600, heartbeat_s=60)
        app.tokens[ctx.job_id] = cb.token  # type: ignore[attr-defined]
        try:
            return ctx.complete(cb.result())
        except jobstate.CallbackFailed as exc:
            return ctx.fail(exc.error)

    app.job("approve")(waits)
    app.job("other")(waits)
    for jid, kind in (("a1", "approve"), ("a2", "approve"), ("o1", "other")):
        app.start(kind, job_id=jid)
    for event in jobstate_continuation.pop_all():
        app.handler(event)
    return app


@pytest.fixture
def api(jobstate_store: jobstate.JobStore) -> status_api.StatusApi:
    return status_api.StatusApi(jobstate_store, status_api.Grants.parse(GRANTS))


def post(api: status_api.StatusApi, answer: str, body: Any,
         caller: str = SENDER) -> tuple[int, dict[str, Any], str]:
    resp = api.handler(url_event("POST", f"/callbacks/{answer}", caller=caller, body=body))
    return resp["statusCode"], json.loads(resp["body"]), resp["body"]


def run_due(app: jobstate.App, cont: jobstate.InMemoryContinuation) -> None:
    jobstate.sweep(app.store, cont)
    for event in cont.pop_all():
        app.handler(event)


def test_a_granted_sender_answers_and_the_job_runs_at_the_next_sweep(
        app: jobstate.App, api: status_api.StatusApi,
        jobstate_continuation: jobstate.InMemoryContinuation) -> None:
    tokens = app.tokens  # type: ignore[attr-defined]
    code, body, raw = post(api, "heartbeat", {"token": tokens["a1"]})
    assert code == 200 and body["answer"] == "heartbeat", body
    code, body, raw = post(api, "succeed", {"token": tokens["a1"], "result": {"paid": 12}})
    assert code == 200 and body == {"job_id": "a1", "callback": "go", "answer": "succeed",
                                    "repeated": False, "woke": True}
    assert tokens["a1"] not in raw
    code, body, _ = post(api, "succeed", {"token": tokens["a1"], "result": {"paid": 12}})
    assert code == 200 and body["repeated"] is True
    code, body, _ = post(api, "succeed", {"token": tokens["a1"], "result": {"paid": 13}})
    assert code == 409 and "closed" in body["error"]
    code, body, _ = post(api, "fail", {"token": tokens["a2"], "error": "declined"})
    assert code == 200
    run_due(app, jobstate_continuation)
    assert app.store.get("a1").result == {"paid": 12}
    assert app.store.get("a2").error == "declined"


@pytest.mark.parametrize("case", ["no-grant", "other-type", "forged", "garbage", "operator"])
def test_answers_without_a_grant_or_a_real_token_are_refused_and_write_nothing(
        app: jobstate.App, api: status_api.StatusApi, case: str) -> None:
    tokens = app.tokens  # type: ignore[attr-defined]
    token, caller = {
        "no-grant": (tokens["a1"], f"arn:aws:sts::{ACCOUNT}:assumed-role/stranger/x"),
        "other-type": (tokens["o1"], SENDER),
        "forged": (tokens["a1"][:-6] + "AAAAAA", SENDER),
        "garbage": ("hello", SENDER),
        "operator": (tokens["a1"], OPERATOR),  # read/list/cancel do not answer callbacks
    }[case]
    before = {j: app.store.get_raw(j) for j in ("a1", "o1")}
    code, body, raw = post(api, "succeed", {"token": token, "result": 1}, caller=caller)
    assert code in (403, 404), (code, body)
    assert token not in raw and tokens["a1"][-12:] not in raw
    assert {j: app.store.get_raw(j) for j in ("a1", "o1")} == before
    assert app.store.get("a1").status == jobstate.JobStatus.WAITING


@pytest.mark.parametrize("answer, body, code", [
    ("succeed", None, 400), ("succeed", {"result": 1}, 400),
    ("succeed", {"token": "x", "extra": 1}, 400), ("fail", {"token": "T"}, 400),
    ("succeed", {"token": "T", "result": "x" * 70_000}, 400),
])
def test_bad_bodies_are_clear_400s(app: jobstate.App, api: status_api.StatusApi,
                                   answer: str, body: Any, code: int) -> None:
    if isinstance(body, dict) and body.get("token") == "T":
        body = {**body, "token": app.tokens["a1"]}  # type: ignore[attr-defined]
    got, data, raw = post(api, answer, body)
    assert got == code and data["error"], data
    assert app.tokens["a1"] not in raw  # type: ignore[attr-defined]


def test_only_post_routes_to_callbacks(api: status_api.StatusApi) -> None:
    resp = api.handler(url_event("GET", "/callbacks/succeed", caller=SENDER))
    assert resp["statusCode"] == 405
    resp = api.handler(url_event("POST", "/callbacks/other", caller=SENDER, body={}))
    assert resp["statusCode"] == 404
