"""handlers.status_api: function URL requests (payload 2.0) against a moto store."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iam_coverage import covers
from status_requests import OPERATOR, OPERATOR_GRANTS, url_event

import jobstate
from handlers import status_api
from jobstate.testing import Driver

# The template must allow every AWS call this handler makes (tests/iam_coverage.py).
iam = covers("StatusApiFunction")

SECRET = "sk-live-7c1f0e-do-not-print"


def request(api: status_api.StatusApi, method: str, path: str,
            query: dict[str, str] | None = None, body: Any = None,
            b64: bool = False, caller: str | None = OPERATOR) -> tuple[int, dict[str, Any]]:
    resp = api.handler(url_event(method, path, caller=caller, query=query, body=body,
                                 b64=b64))
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
    return status_api.StatusApi(jobstate_store, status_api.Grants.parse(OPERATOR_GRANTS))


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
    assert code == 200 and body == {"job_id": job_id, "status": "CANCELLED", "cancelled": 4,
                                    "skipped": 0}
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
    ("GET", "/jobs/nope", None, None, 404, "no job 'nope' that you may read"),
    ("POST", "/jobs/nope/cancel", None, None, 404, "no job 'nope' that you may read"),
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

    resp = api.handler(url_event("GET", "/jobs/a"), Ctx())
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


# -- who may do what (issue 21: the API used to check nothing about the caller) ---------------

SUPPORT = "arn:aws:sts::111122223333:assumed-role/support/bob"
PARENTS = "arn:aws:iam::111122223333:user/parents"
CHAINS = "arn:aws:iam::111122223333:user/chains"
STRANGER = "arn:aws:iam::999999999999:user/mallory"
GRANTS = [
    *json.loads(OPERATOR_GRANTS),
    {"principal": "arn:aws:sts::111122223333:assumed-role/support/*",
     "read": ["secretive"], "list": ["secretive"]},
    {"principal": PARENTS, "read": ["parent"], "list": ["parent"], "cancel": ["parent"]},
    {"principal": [CHAINS], "read": ["chain"], "list": ["chain"], "cancel": ["chain"]},
]


@pytest.fixture
def guarded(jobstate_store: jobstate.JobStore) -> status_api.StatusApi:
    return status_api.StatusApi(jobstate_store, status_api.Grants.parse(json.dumps(GRANTS)))


def snapshot(store: jobstate.JobStore) -> dict[str, tuple[str, int, str | None]]:
    return {j.job_id: (j.status.value, j.step, j.error) for j in store.iter_jobs()}


def spawned_parent(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                   clock: jobstate.ManualClock, job_id: str = "p-9") -> Driver:
    app.start("parent", job_id=job_id)
    driver = Driver(app, cont, clock)
    driver.step()  # the parent spawns three chains and waits
    return driver


def test_a_reader_reads_and_lists_its_types_and_nothing_else(
        app: jobstate.App, guarded: status_api.StatusApi,
        jobstate_continuation: jobstate.InMemoryContinuation,
        jobstate_clock: jobstate.ManualClock) -> None:
    app.start("secretive", {"n": 1}, job_id="sec-r")
    spawned_parent(app, jobstate_continuation, jobstate_clock)
    code, body = request(guarded, "GET", "/jobs/sec-r", caller=SUPPORT)
    assert code == 200 and body["job_id"] == "sec-r"
    code, body = request(guarded, "GET", "/jobs", {"type": "secretive"}, caller=SUPPORT)
    assert code == 200 and [j["job_id"] for j in body["jobs"]] == ["sec-r"]
    # Another type's job answers exactly like a job that does not exist: no probing.
    hidden = request(guarded, "GET", "/jobs/p-9", caller=SUPPORT)
    missing = request(guarded, "GET", "/jobs/p-nope", caller=SUPPORT)
    assert hidden[0] == missing[0] == 404
    assert hidden[1]["error"].replace("p-9", "ID") == missing[1]["error"].replace("p-nope", "ID")
    code, body = request(guarded, "GET", "/jobs", {"type": "parent"}, caller=SUPPORT)
    assert code == 403 and "may not list jobs of type 'parent'" in body["error"]
    code, body = request(guarded, "GET", "/jobs", caller=SUPPORT)  # every type at once
    assert code == 403 and "one job type at a time" in body["error"]
    before = snapshot(app.store)
    code, body = request(guarded, "POST", "/jobs/sec-r/cancel", caller=SUPPORT)
    assert code == 403 and body["error"].startswith(f"{SUPPORT} may not cancel")
    assert snapshot(app.store) == before


@pytest.mark.parametrize(("method", "path", "query"), [
    ("GET", "/jobs/sec-s", None), ("GET", "/jobs", None), ("GET", "/jobs", {"type": "chain"}),
    ("POST", "/jobs/sec-s/cancel", None), ("POST", "/jobs/nope/cancel", None),
])
def test_an_unknown_principal_is_refused_and_told_nothing(
        app: jobstate.App, guarded: status_api.StatusApi, method: str, path: str,
        query: dict[str, str] | None) -> None:
    app.start("secretive", {"card": SECRET}, job_id="sec-s")
    before = snapshot(app.store)
    code, body = request(guarded, method, path, query, caller=STRANGER)
    assert code == 403 and body["error"].startswith(f"{STRANGER} may not")
    assert "JOBSTATE_STATUS_API_GRANTS" in body["error"]
    for secret in (SECRET, "secretive", "111122223333", "jobstate-operators"):
        assert secret not in json.dumps(body)  # no job data, no other principal
    assert snapshot(app.store) == before


def test_the_identity_comes_from_the_request_context_never_a_header(
        app: jobstate.App, guarded: status_api.StatusApi) -> None:
    app.start("secretive", job_id="sec-h")
    spoofed = {"x-amz-user-arn": OPERATOR, "x-amzn-iam-userarn": OPERATOR,
               "authorization": f"AWS4-HMAC-SHA256 Credential={OPERATOR}"}
    resp = guarded.handler(url_event("GET", "/jobs/sec-h", caller=STRANGER, headers=spoofed))
    assert resp["statusCode"] == 403
    resp = guarded.handler(url_event("GET", "/jobs/sec-h", caller=None, headers=spoofed))
    assert resp["statusCode"] == 403
    assert "no IAM identity" in json.loads(resp["body"])["error"]
    no_context = url_event("GET", "/jobs/sec-h")
    del no_context["requestContext"]
    assert guarded.handler(no_context)["statusCode"] == 400  # not a function URL request


def test_nothing_is_allowed_without_grants(
        app: jobstate.App, jobstate_store: jobstate.JobStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    app.start("secretive", job_id="sec-d")
    monkeypatch.delenv(status_api.GRANTS_ENV, raising=False)
    for method, path in (("GET", "/jobs/sec-d"), ("GET", "/jobs"),
                         ("POST", "/jobs/sec-d/cancel")):
        code, _ = request(status_api.StatusApi(jobstate_store), method, path)
        assert code == 403
    monkeypatch.setenv(status_api.GRANTS_ENV, OPERATOR_GRANTS)  # the template's parameter
    assert request(status_api.StatusApi(jobstate_store), "GET", "/jobs/sec-d")[0] == 200


def test_a_grant_for_one_type_shows_nothing_of_another_through_parent_or_children(
        app: jobstate.App, guarded: status_api.StatusApi,
        jobstate_continuation: jobstate.InMemoryContinuation,
        jobstate_clock: jobstate.ManualClock) -> None:
    spawned_parent(app, jobstate_continuation, jobstate_clock, "p-rel")
    chain = "p-rel.s0.1"
    code, full = request(guarded, "GET", "/jobs/p-rel")  # the operator sees the relations
    assert full["rollup"]["total"] == 3
    code, body = request(guarded, "GET", f"/jobs/{chain}")
    assert body["parent_id"] == "p-rel"
    code, body = request(guarded, "GET", "/jobs/p-rel", caller=PARENTS)
    assert code == 200 and body["children_total"] == 3 and "rollup" not in body
    code, body = request(guarded, "GET", f"/jobs/{chain}", caller=CHAINS)
    assert code == 200 and body["parent_id"] is None
    code, page = request(guarded, "GET", "/jobs", {"type": "chain"}, caller=CHAINS)
    assert sorted(j["job_id"] for j in page["jobs"]) == [f"p-rel.s0.{i}" for i in range(3)]
    assert all(j["parent_id"] is None for j in page["jobs"])
    assert request(guarded, "GET", "/jobs/p-rel", caller=CHAINS)[0] == 404
    assert request(guarded, "GET", f"/jobs/{chain}", caller=PARENTS)[0] == 404
    # A child cancelled with its parent says so without naming it to a chains-only reader.
    assert request(guarded, "POST", "/jobs/p-rel/cancel")[0] == 200
    code, body = request(guarded, "GET", f"/jobs/{chain}", caller=CHAINS)
    assert body["status"] == "CANCELLED" and "withheld" in body["error"]
    assert app.store.get(chain).error == "parent p-rel cancelled"  # what the operator sees


def test_a_tree_with_jobs_the_caller_may_not_cancel_is_not_cancelled_at_all(
        app: jobstate.App, guarded: status_api.StatusApi,
        jobstate_continuation: jobstate.InMemoryContinuation,
        jobstate_clock: jobstate.ManualClock) -> None:
    spawned_parent(app, jobstate_continuation, jobstate_clock, "p-tree")
    before = snapshot(app.store)
    code, body = request(guarded, "POST", "/jobs/p-tree/cancel", caller=PARENTS)
    assert code == 403
    assert body["error"] == (f"job 'p-tree' has 3 unfinished descendant(s) {PARENTS} may not "
                             "cancel; nothing was cancelled")
    assert snapshot(app.store) == before
    # Chains-only: the parent is not theirs to see; a chain is (a leaf: it joins its parent).
    assert request(guarded, "POST", "/jobs/p-tree/cancel", caller=CHAINS)[0] == 404
    code, body = request(guarded, "POST", "/jobs/p-tree.s0.0/cancel", caller=CHAINS)
    assert code == 200 and body["cancelled"] == 1
    # The cancelled chain joined; under the default on_child_failure="fail" (fail-fast,
    # issue 19) its join decided the spawn: the parent is ready to fail, nothing pending.
    parent = app.store.get("p-tree")
    assert parent.completion_reason == "FAILURE_TOLERANCE_EXCEEDED"
    assert parent.pending_children == 0 and parent.status is jobstate.JobStatus.WAITING


def test_a_job_spawned_after_the_check_is_left_to_whoever_may_cancel_it(
        app: jobstate.App, jobstate_store: jobstate.JobStore,
        jobstate_continuation: jobstate.InMemoryContinuation,
        jobstate_clock: jobstate.ManualClock) -> None:
    """The tree is checked, then cancelled job by job with the check repeated: a job of a
    type the caller may not cancel that appeared in between is skipped, not cancelled."""
    spawned_parent(app, jobstate_continuation, jobstate_clock, "p-race")
    root = jobstate_store.get("p-race")
    count, skipped = status_api.cancel_tree(jobstate_store, root, "stop",
                                            lambda j: j.job_type == "parent")
    assert (count, skipped) == (1, 3)
    assert {jobstate_store.get(f"p-race.s0.{i}").status for i in range(3)} == {
        jobstate.JobStatus.PENDING}


@pytest.mark.parametrize(("doc", "fragment"), [
    ("{not json", "is not JSON"),
    ('{"principal": "arn:aws:iam::1:user/a"}', "must be a JSON list"),
    ('[{"principal": "*", "read": ["*"]}]', "must be an IAM ARN pattern"),
    ('[{"read": ["*"]}]', "must be an IAM ARN pattern"),
    ('[{"principal": "arn:aws:iam::1:user/a", "cancle": ["x"]}]', "unknown key(s) ['cancle']"),
    ('[{"principal": "arn:aws:iam::1:user/a", "read": "etl-poller"}]', "must be a list"),
    ('[{"principal": "arn:aws:iam::1:user/a", "read": ["bad type!"]}]', "invalid job type"),
])
def test_invalid_grants_refuse_every_request_and_say_why_in_the_log(
        jobstate_store: jobstate.JobStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, doc: str, fragment: str) -> None:
    with pytest.raises(status_api.GrantsInvalid, match=re.escape(fragment)):
        status_api.Grants.parse(doc)
    monkeypatch.setenv(status_api.GRANTS_ENV, doc)
    code, body = request(status_api.StatusApi(jobstate_store), "GET", "/jobs")
    assert code == 500 and "grants are invalid" in body["error"]
    assert fragment in caplog.text


def test_principal_patterns_match_whole_arns() -> None:
    grants = status_api.Grants.parse(json.dumps([
        {"principal": "arn:aws:sts::111122223333:assumed-role/support/*", "read": ["a"]},
        {"principal": "arn:aws:iam::111122223333:user/ops.team", "cancel": ["*"]}]))
    assert grants.allows(SUPPORT, "read", "a")
    assert not grants.allows(SUPPORT, "read", "b")
    assert not grants.allows("arn:aws:sts::111122223333:assumed-role/support-admin/x",
                             "read", "a")
    assert not grants.allows("arn:aws:sts::111122223333:assumed-role/support", "read", "a")
    assert not grants.allows("arn:aws:iam::111122223333:user/opsXteam", "cancel", "a")
    assert grants.allows("arn:aws:iam::111122223333:user/ops.team", "cancel", "any-type")
    assert not grants.allows("arn:aws:iam::111122223333:user/ops.team", "read", "a")


def test_a_parents_error_quoting_a_child_it_may_not_read_is_withheld(
        app: jobstate.App, jobstate_store: jobstate.JobStore,
        jobstate_continuation: jobstate.InMemoryContinuation,
        jobstate_clock: jobstate.ManualClock) -> None:
    @app.job("brittle")
    def brittle(ctx: jobstate.StepContext) -> Any:
        ctx.spawn("card-check", [{"card": "4111"}], child_ids=["cc-hidden-1"])
        return ctx.complete()

    @app.job("card-check")
    def card_check(ctx: jobstate.StepContext) -> Any:
        return ctx.fail("card 4111 declined")

    app.start("brittle", job_id="br-1")
    Driver(app, jobstate_continuation, jobstate_clock).run_until_done()
    assert "cc-hidden-1" in (jobstate_store.get("br-1").error or "")  # the operator's view
    grants = status_api.Grants.parse(json.dumps(
        [{"principal": PARENTS, "read": ["brittle"]}]))
    code, body = request(status_api.StatusApi(jobstate_store, grants), "GET", "/jobs/br-1",
                         caller=PARENTS)
    assert code == 200 and body["status"] == "FAILED" and body["error_type"] == "ChildFailed"
    assert "cc-hidden-1" not in json.dumps(body) and "4111" not in json.dumps(body)
