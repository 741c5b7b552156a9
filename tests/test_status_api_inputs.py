"""handlers.status_api on bad input: a 4xx that says what was wrong, never a 500, and
nothing written (issue 21: a crafted next_token and a deeply nested body answered 500).

Integration tier: a crafted token reaches DynamoDB as an ExclusiveStartKey, and what an
engine does with a bad one differs (moto accepts more than DynamoDB does).
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import RequestLog, scan
from conftest_hypothesis import active
from hypothesis import event, given
from hypothesis import strategies as st
from status_requests import OPERATOR, OPERATOR_GRANTS, url_event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jobstate
from handlers import status_api
from jobstate.testing import Driver

pytestmark = pytest.mark.integration

OK = {200, 400, 403, 404, 405, 409}  # 503 only when DynamoDB is really unavailable


def token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def start_key(job_id: str, ls: str, lk: str = "L#0") -> dict[str, Any]:
    return {"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}, "lk": {"S": lk},
            "ls": {"S": ls}}


@pytest.fixture
def world(app: jobstate.App, store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
          clock: jobstate.ManualClock) -> Any:
    @app.job("leaf")
    def leaf(ctx: jobstate.StepContext) -> Any:
        return None if ctx.step < 3 else ctx.complete({"ok": True})

    @app.job("tree")
    def tree(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn("leaf", [{"i": i} for i in range(3)])
        return ctx.complete()

    for i in range(3):
        app.start("leaf", {"i": i}, job_id=f"leaf-{i}")
        clock.advance(1)
    app.start("tree", job_id="tree-1")
    Driver(app, cont, clock).step()  # tree-1 spawns its leaves and waits

    class World:
        api = status_api.StatusApi(store, status_api.Grants.parse(OPERATOR_GRANTS))
        log = RequestLog(store)

    World.store = store  # type: ignore[attr-defined]
    return World


def call(world: Any, event_: Any) -> tuple[int, dict[str, Any]]:
    """The answer, after checking it is JSON with an error message when it is not a 200,
    and that a refused request wrote nothing."""
    before = scan(world.store)
    world.log.reset()
    resp = world.api.handler(event_)
    body = json.loads(resp["body"])
    code = resp["statusCode"]
    assert code in OK, (code, body)
    if code != 200:
        assert isinstance(body.get("error"), str) and body["error"], body
        assert world.log.writes == 0, world.log.ops
        assert scan(world.store) == before
    return code, body


CRAFTED_TOKENS = [
    "not base64 at all!",
    token([1, 2]),
    token({"L#0": "x"}),
    token({"L#0": 5}),
    token({"L#0": {"pk": 1}}),
    token({"L#0": {"pk": {"S": "JOB#a"}}}),
    token({"L#9": "done"}),
    token({"shard": 0}),
    token({"L#0": start_key("a", "leaf#ACTIVE#0000000000001", lk="L#5")}),
    token({"L#0": start_key("a", "leaf#ACTIVE#0000000000001") | {"extra": {"S": "x"}}}),
    token({"L#0": {**start_key("a", "leaf#ACTIVE#1"), "sk": {"S": "CHILD#x"}}}),
    token({"L#0": {**start_key("a", "leaf#ACTIVE#1"), "pk": {"S": "TYPE#leaf"}}}),
    token({"L#0": start_key("a" * 3000, "leaf#ACTIVE#0000000000001")}),
    "W" * 9_000,  # longer than any token a page returns
    base64.urlsafe_b64encode(b"[" * 3_000 + b"]" * 3_000).decode(),  # nested too deeply
    token({"L#0": start_key("a", "x" * 2000)}),
]


@pytest.mark.parametrize("crafted", CRAFTED_TOKENS)
def test_a_crafted_next_token_is_a_400(world: Any, crafted: str) -> None:
    code, body = call(world, url_event("GET", "/jobs", query={"next_token": crafted}))
    assert code == 400 and "next_token" in body["error"], body


def test_a_token_for_another_type_is_a_400(world: Any) -> None:
    """A start key outside the listed type's key range: DynamoDB would refuse it."""
    crafted = token({"L#0": start_key("tree-1", "tree#ACTIVE#0000000000001")})
    code, body = call(world, url_event("GET", "/jobs",
                                       query={"type": "leaf", "next_token": crafted}))
    assert code == 400 and "next_token" in body["error"]


def test_a_token_from_a_real_page_still_pages(world: Any) -> None:
    code, body = call(world, url_event("GET", "/jobs", query={"type": "leaf", "limit": "2"}))
    seen = [j["job_id"] for j in body["jobs"]]
    while body["next_token"]:
        code, body = call(world, url_event("GET", "/jobs", query={
            "type": "leaf", "limit": "2", "next_token": body["next_token"]}))
        assert code == 200
        seen += [j["job_id"] for j in body["jobs"]]
    assert sorted(seen) == ["leaf-0", "leaf-1", "leaf-2", "tree-1.s0.0", "tree-1.s0.1",
                            "tree-1.s0.2"]


@pytest.mark.parametrize(("body", "b64", "fragment"), [
    ("[" * 100_000 + "]" * 100_000, False, "body is larger"),
    ('{"reason": ' + "[" * 5_000 + "]" * 5_000 + "}", False, "nested too deeply"),
    ('{"reason": ' + "[" * 5_000 + "]" * 5_000 + "}", True, "nested too deeply"),
    ("[1, 2]", False, "body must be a JSON object"),
    ('"stop"', False, "body must be a JSON object"),
    ("{not json", False, "body must be JSON"),
    ("%%%", True, "base64"),
    ("\xff\xfe", True, "base64"),  # not UTF-8 once decoded
    ('{"reason": ""}', False, "reason must be"),
    ('{"reason": {"a": 1}}', False, "reason must be"),
])
def test_a_bad_body_is_a_400_and_cancels_nothing(world: Any, body: str, b64: bool,
                                                 fragment: str) -> None:
    ev = url_event("POST", "/jobs/tree-1/cancel")
    raw = body.encode("latin-1") if body.startswith("\xff") else body.encode()
    ev["body"] = base64.b64encode(raw).decode() if b64 and body != "%%%" else body
    ev["isBase64Encoded"] = b64
    code, answer = call(world, ev)
    assert code == 400 and fragment in answer["error"], answer


@pytest.mark.parametrize("mutate", [
    lambda e: e.update(queryStringParameters=["type", "leaf"]),
    lambda e: e.update(queryStringParameters={"type": ["leaf"]}),
    lambda e: e.update(body=b"{}"),
    lambda e: e.update(rawPath=["/jobs"]),
    lambda e: e["requestContext"]["http"].update(method=["GET"]),
    lambda e: e.update(rawPath="/jobs/" + "a" * 100_000),
    lambda e: e.update(rawPath="/" + "x" * 100_000),
])
def test_a_malformed_event_is_a_400(world: Any, mutate: Any) -> None:
    ev = url_event("GET", "/jobs")
    mutate(ev)
    code, body = call(world, ev)
    assert code in (400, 404) and len(json.dumps(body)) < 2_000, body


# -- fuzz ----------------------------------------------------------------------------------

any_text = st.text(st.characters(), max_size=60)
job_ids = st.one_of(st.sampled_from(["leaf-0", "tree-1", "tree-1.s0.1", "nope"]), any_text)
paths = st.one_of(
    any_text,
    st.builds(lambda i: f"/jobs/{i}", job_ids),
    st.builds(lambda i: f"/jobs/{i}/cancel", job_ids),
    st.sampled_from(["/jobs", "/jobs/", "//jobs", "/jobs/tree-1/cancel/", "/jobs/%ZZ",
                     "/jobs/a%2Fb", "/jobs/..", "/jobs/leaf-0?x=1"]),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              any_text),
    lambda kids: st.one_of(st.lists(kids, max_size=3),
                           st.dictionaries(any_text, kids, max_size=3)),
    max_leaves=10,
)


@st.composite
def tokens(draw: Any) -> str:
    """Tokens: random text, encoded random JSON, or a real-looking start key mutated."""
    kind = draw(st.sampled_from(["text", "json", "key"]))
    if kind == "text":
        return str(draw(any_text))
    if kind == "json":
        return token(draw(json_values))
    key = start_key(draw(job_ids), draw(st.sampled_from(
        ["leaf#ACTIVE#0000000000001", "tree#ACTIVE#0000000000001", "leaf#SUCCEEDED#1"]))
        + draw(st.sampled_from(["", "x"])), lk=draw(st.sampled_from(["L#0", "L#3", "L#8"])))
    return token({draw(st.sampled_from(["L#0", "L#3", "L#8", "x"])): key})


list_queries = st.fixed_dictionaries({}, optional={
    "type": st.one_of(st.sampled_from(["leaf", "tree", "nope"]), any_text),
    "status": st.one_of(st.sampled_from(["RUNNING", "pending", "SUCCEEDED"]), any_text),
    "limit": st.one_of(st.sampled_from(["1", "2", "100", "101", "0", "-1"]), any_text),
    "next_token": tokens(),
})
queries = st.one_of(st.none(), list_queries, st.dictionaries(any_text, any_text, max_size=3))
bodies = st.one_of(
    st.none(), any_text, json_values.map(json.dumps),
    st.builds(lambda r: json.dumps({"reason": r}), json_values),
    st.integers(1, 3_000).map(lambda n: "[" * n + "]" * n),
)


@active()
@given(method=st.one_of(st.just("GET"), st.just("POST"),
                        st.sampled_from(["GET", "POST", "DELETE", "PUT", "get", ""])),
       path=st.one_of(st.just("/jobs"), paths), query=queries, body=bodies, b64=st.booleans())
def test_fuzzed_requests_never_answer_500_and_refusals_write_nothing(
        world: Any, method: str, path: str, query: dict[str, str] | None, body: str | None,
        b64: bool) -> None:
    ev = url_event(method or "GET", path, caller=OPERATOR, query=query)
    if method == "":
        ev["requestContext"]["http"]["method"] = ""
    if body is not None:
        ev["body"] = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode() \
            if b64 else body
        ev["isBase64Encoded"] = b64
    code, _ = call(world, ev)
    event(f"HTTP {code}")
