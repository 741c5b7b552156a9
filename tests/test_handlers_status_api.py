"""handlers.status_api: function URL requests (payload 2.0) against a moto store."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iam_coverage import covers

import jobstate
from handlers import status_api
from jobstate.testing import Driver

# The template must allow every AWS call this handler makes (tests/iam_coverage.py).
iam = covers("StatusApiFunction")

SECRET = "sk-live-7c1f0e-do-not-print"


def request(api: status_api.StatusApi, method: str, path: str,
            query: dict[str, str] | None = None, body: Any = None,
            b64: bool = False) -> tuple[int, dict[str, Any]]:
    event: dict[str, Any] = {
        "version": "2.0", "rawPath": path, "rawQueryString": "",
        "requestContext": {"http": {"method": method, "path": path}},
    }
    if query is not None:
        event["queryStringParameters"] = query
    if body is not None:
        raw = body if isinstance(body, str) else json.dumps(body)
        event["body"] = base64.b64encode(raw.encode()).decode() if b64 else raw
        event["isBase64Encoded"] = b64
    resp = api.handler(event)
    assert resp["headers"]["content-type"] == "application/json"
    assert "Traceback" not in resp["body"]
    return resp["statusCode"], json.loads(resp["body"])


@pytest.fixture
def app(jobstate_store: jobstate.JobStore,
        jobstate_continuation: jobstate.InMemoryContinuation) -> jobstate.App:
    app = jobstate.App(jobstate_store, jobstate_continuation)

    @app.job("secretive")
    def secretive(ctx: jobstate.StepContext) -> Any:
        ctx.tokens["api_key"] = SECRET
        if ctx.step < 2:
            return None
        return ctx.complete({"ok": True})

    @app.job("parent")
    def parent(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn_chains("chain", total=30, chains=3)
        return ctx.complete({"children": len(ctx.children())})

    @app.job("chain")
    def chain(ctx: jobstate.StepContext) -> Any:
        ctx.progress(ctx.input["end"] - ctx.input["start"],
                     ctx.input["end"] - ctx.input["start"], "rows")
        return ctx.complete()

    return app


@pytest.fixture
def api(jobstate_store: jobstate.JobStore) -> status_api.StatusApi:
    return status_api.StatusApi(jobstate_store)


def test_get_job_redacts_tokens(app: jobstate.App, api: status_api.StatusApi,
                                jobstate_continuation: jobstate.InMemoryContinuation,
                                jobstate_clock: jobstate.ManualClock) -> None:
    job_id = app.start("secretive", {"n": 1}, job_id="sec-1")
    driver = Driver(app, jobstate_continuation, jobstate_clock)
    driver.step()
    code, body = request(api, "GET", "/jobs/sec-1")
    assert code == 200 and body["job_id"] == job_id and body["status"] == "RUNNING"
    assert body["tokens"] == {"api_key": jobstate.codec.REDACTED}
    assert "rollup" not in body
    driver.run_until_done()
    code, body = request(api, "GET", "/jobs/sec-1")
    assert body["status"] == "SUCCEEDED" and body["result"] == {"ok": True}
    assert SECRET not in json.dumps(body)


def test_parent_gets_rolled_up_progress(app: jobstate.App, api: status_api.StatusApi,
                                        jobstate_continuation: jobstate.InMemoryContinuation,
                                        jobstate_clock: jobstate.ManualClock) -> None:
    job_id = app.start("parent", job_id="p-1")
    driver = Driver(app, jobstate_continuation, jobstate_clock)
    driver.step()  # the parent spawns three chains and waits
    code, body = request(api, "GET", f"/jobs/{job_id}")
    assert code == 200 and body["status"] == "WAITING" and body["children_total"] == 3
    assert body["rollup"] == {"done": 0, "total": 3, "unit": "items"}
    driver.run_until_done()
    code, body = request(api, "GET", f"/jobs/{job_id}")
    assert body["rollup"] == {"done": 30, "total": 30, "unit": "rows"}


def test_list_jobs_with_filters_and_pages(app: jobstate.App, api: status_api.StatusApi,
                                          jobstate_clock: jobstate.ManualClock) -> None:
    for i in range(5):
        app.start("secretive", {"i": i}, job_id=f"s-{i}")
        jobstate_clock.advance(1)
    code, body = request(api, "GET", "/jobs", {"type": "secretive", "status": "pending",
                                                "limit": "2"})
    assert code == 200 and [j["job_id"] for j in body["jobs"]] == ["s-4", "s-3"]
    seen = [j["job_id"] for j in body["jobs"]]
    while body["next_token"]:
        code, body = request(api, "GET", "/jobs", {"type": "secretive", "limit": "2",
                                                    "next_token": body["next_token"]})
        seen += [j["job_id"] for j in body["jobs"]]
    assert sorted(seen) == [f"s-{i}" for i in range(5)]
    code, body = request(api, "GET", "/jobs")  # no query string at all
    assert code == 200 and len(body["jobs"]) == 5


def test_cancel(app: jobstate.App, api: status_api.StatusApi,
                jobstate_continuation: jobstate.InMemoryContinuation,
                jobstate_clock: jobstate.ManualClock) -> None:
    job_id = app.start("parent", job_id="p-2")
    driver = Driver(app, jobstate_continuation, jobstate_clock)
    driver.step()
    code, body = request(api, "POST", f"/jobs/{job_id}/cancel", body={"reason": "runaway"})
    assert code == 200 and body == {"job_id": job_id, "status": "CANCELLED", "cancelled": 4}
    view = app.store.get(job_id)
    assert view.status is jobstate.JobStatus.CANCELLED and view.error == "runaway"
    driver.run_until_done()  # the chains see the cancel at their next claim and stop
    assert {j.status for j in app.store.iter_jobs()} == {jobstate.JobStatus.CANCELLED}
    # Cancelling again is harmless; cancelling a finished job is a conflict.
    assert request(api, "POST", f"/jobs/{job_id}/cancel")[0] == 200
    done = app.start("secretive", job_id="s-done")
    Driver(app, jobstate_continuation, jobstate_clock).run_until_done([done])
    code, body = request(api, "POST", "/jobs/s-done/cancel")
    assert code == 409 and body["status"] == "SUCCEEDED" and "nothing to cancel" in body["error"]


@pytest.mark.parametrize(("method", "path", "query", "body", "code", "fragment"), [
    ("GET", "/jobs/nope", None, None, 404, "no job 'nope'"),
    ("POST", "/jobs/nope/cancel", None, None, 404, "no job 'nope'"),
    ("GET", "/jobs/bad%20id", None, None, 400, "invalid job id"),
    ("GET", "/", None, None, 404, "no route"),
    ("GET", "/admin", None, None, 404, "no route"),
    ("DELETE", "/jobs/x", None, None, 405, "not allowed"),
    ("POST", "/jobs", None, None, 405, "not allowed"),
    ("GET", "/jobs", {"status": "DONE"}, None, 400, "status must be one of"),
    ("GET", "/jobs", {"limit": "ten"}, None, 400, "limit must be an integer"),
    ("GET", "/jobs", {"limit": "0"}, None, 400, "limit must be an integer"),
    ("GET", "/jobs", {"limit": "5000"}, None, 400, "limit must be an integer"),
    ("GET", "/jobs", {"type": "bad type!"}, None, 400, "invalid job type"),
    ("GET", "/jobs", {"next_token": "garbage"}, None, 400, "next_token"),
    ("GET", "/jobs", {"sort": "asc"}, None, 400, "unknown query parameter"),
    ("POST", "/jobs/x/cancel", None, "{not json", 400, "body must be JSON"),
    ("POST", "/jobs/x/cancel", None, {"reason": 5}, 400, "reason must be"),
])
def test_errors_are_clear_json(api: status_api.StatusApi, method: str, path: str,
                               query: dict[str, str] | None, body: Any, code: int,
                               fragment: str, app: jobstate.App) -> None:
    app.start("secretive", job_id="x")
    got, payload = request(api, method, path, query, body)
    assert got == code, payload
    assert fragment in payload["error"]


def test_base64_body(app: jobstate.App, api: status_api.StatusApi) -> None:
    app.start("secretive", job_id="b64")
    code, _ = request(api, "POST", "/jobs/b64/cancel", body={"reason": "via b64"}, b64=True)
    assert code == 200 and app.store.get("b64").error == "via b64"


def test_not_a_function_url_event(api: status_api.StatusApi) -> None:
    for event in (None, {}, {"rawPath": "/jobs"}):
        resp = api.handler(event)
        assert resp["statusCode"] == 400 and "function URL" in json.loads(resp["body"])["error"]


def test_unexpected_errors_hide_the_traceback(api: status_api.StatusApi,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("database exploded at 0xdeadbeef")

    monkeypatch.setattr(api.store, "get", boom)

    class Ctx:
        aws_request_id = "req-123"

    resp = api.handler({"rawPath": "/jobs/a", "requestContext": {"http": {"method": "GET"}}},
                       Ctx())
    assert resp["statusCode"] == 500
    assert json.loads(resp["body"]) == {"error": "internal error; see the function's logs",
                                        "request_id": "req-123"}
    assert "0xdeadbeef" in caplog.text  # logged for the operator, not returned


def test_store_unavailable_is_503(api: status_api.StatusApi,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*a: Any, **k: Any) -> Any:
        raise jobstate.StoreUnavailable("DynamoDB kept throttling")

    monkeypatch.setattr(api.store, "list", down)
    code, body = request(api, "GET", "/jobs")
    assert code == 503 and "throttling" in body["error"]
