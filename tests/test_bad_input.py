"""Bad input fails with a clear JobStateError before the bad data is written (issue 2)."""

from __future__ import annotations

from typing import Any

import pytest

import jobstate
from jobstate import JobStatus

pytestmark = pytest.mark.integration


def scan(store: jobstate.JobStore) -> list[dict[str, Any]]:
    return store.call("scan")["Items"]


def test_unknown_job_type_writes_nothing(app, store):
    with pytest.raises(jobstate.UnknownJobType) as err:
        app.start("nope", {})
    assert "register it with @app.job" in str(err.value)
    with pytest.raises(jobstate.UnknownJobType):
        app.handler(jobstate.step_event("j1", 0, "nope"))
    assert scan(store) == []


@pytest.mark.parametrize("event", [
    None, [], "x", {}, {"Records": []}, {"jobstate": None},
    {"jobstate": {"job_id": "", "step": 0}},
    {"jobstate": {"job_id": "a b", "step": 0}},
    {"jobstate": {"job_id": "j", "step": -1}},
    {"jobstate": {"job_id": "j", "step": True}},
    {"jobstate": {"job_id": "j", "step": "1"}},
    {"jobstate": {"job_id": "j", "step": 0, "job_type": 5}},
    {"jobstate": {"start": "count"}},
])
def test_malformed_events_name_what_was_expected(app, store, event):
    with pytest.raises(jobstate.InvalidEvent) as err:
        app.handler(event)
    assert "jobstate" in str(err.value)
    assert scan(store) == []


@pytest.mark.parametrize("extra", [
    {"ancestors": ["x" * 100_000]},  # a key DynamoDB refuses (TYPE#<type> over 2 KB)
    {"ancestors": ["t"] * 10_000},  # a pause check per ancestor
    {"ancestors": ["bad type!"]},
    {"ancestors": [["t"]]},
    {"ancestors": "t"},
    {"parent_type": "y" * 5_000},
    {"parent_type": "a\n"},
    {"job_type": "z" * 5_000},
])
def test_oversized_or_malformed_routing_fields_are_refused_before_any_request(
        app, store, requests_log, extra):
    """Issue 21: `ancestors` were only checked to be strings, so a huge one reached
    botocore as a key (TYPE#<ancestor>) of the pause check and failed there, raw."""
    @app.job("t")
    def t(ctx: jobstate.StepContext) -> Any:
        return None

    app.start("t", job_id="j-anc")
    before = scan(store)
    requests_log.reset()
    with pytest.raises(jobstate.InvalidEvent) as err:
        app.handler({"jobstate": {"job_id": "j-anc", "step": 0, "job_type": "t", **extra}})
    assert next(iter(extra)) in str(err.value) and len(str(err.value)) < 400
    assert requests_log.ops == []  # refused before any request: nothing read or written
    assert scan(store) == before


def test_missing_job(app, store):
    @app.job("t")
    def t(ctx: jobstate.StepContext) -> Any:
        return None

    with pytest.raises(jobstate.JobNotFound) as err:
        app.handler(jobstate.step_event("ghost", 0, "t"))
    assert "ghost" in str(err.value)
    with pytest.raises(jobstate.JobNotFound):
        store.get("ghost")
    assert scan(store) == []


@pytest.mark.parametrize("job_id", ["", "has space", "x" * 201, "ünï", "#hash", 7])
def test_bad_job_ids(app, store, job_id):
    @app.job("t")
    def t(ctx: jobstate.StepContext) -> Any:
        return None

    with pytest.raises(jobstate.InvalidInput) as err:
        app.start("t", {}, job_id=job_id)
    assert "job id" in str(err.value)
    assert scan(store) == []


@pytest.mark.parametrize("bad_input", [
    {"b": b"bytes"}, {"n": float("nan")}, {1: "int key"}, object(), {"s": {1, 2}},
])
def test_non_serialisable_input_rejected(app, store, bad_input):
    @app.job("t")
    def t(ctx: jobstate.StepContext) -> Any:
        return None

    with pytest.raises(jobstate.StateNotSerializable) as err:
        app.start("t", bad_input)
    assert "input" in str(err.value)
    assert isinstance(err.value, TypeError)
    assert scan(store) == []


def _state_breaker(app: jobstate.App, name: str, mutate: Any) -> None:
    @app.job(name)
    def step(ctx: jobstate.StepContext) -> Any:
        mutate(ctx)
        return None


@pytest.mark.parametrize(("name", "mutate", "error", "words"), [
    ("big-cursor", lambda ctx: ctx.cursor.update(blob="x" * 400_000),
     jobstate.StateTooLarge, "budget"),
    ("bytes-token", lambda ctx: ctx.tokens.update(tok=b"raw"),
     jobstate.StateNotSerializable, "bytes"),
    ("nan-cursor", lambda ctx: ctx.cursor.update(pos=float("inf")),
     jobstate.StateNotSerializable, "NaN or infinity"),
])
def test_bad_state_fails_before_it_is_written(app, cont, store, name, mutate, error, words):
    _state_breaker(app, name, mutate)
    app.start(name, {"ok": True}, job_id=f"{name}-1")
    with pytest.raises(error) as err:
        app.handler(cont.pop_all()[0])
    assert words in str(err.value)
    job = store.get(f"{name}-1", secrets=True)
    assert job.cursor == {} and job.tokens == {}  # the bad state never reached the table
    assert job.status is JobStatus.FAILED and words in (job.error or "")
    assert cont.events == []


def test_checkpoint_with_bad_state_raises_in_the_step(app, cont, store):
    @app.job("cp")
    def cp(ctx: jobstate.StepContext) -> Any:
        ctx.cursor["when"] = object()
        ctx.checkpoint()
        return None

    app.start("cp", None, job_id="cp-1")
    with pytest.raises(jobstate.StateNotSerializable):
        app.handler(cont.pop_all()[0])
    assert store.get("cp-1").cursor == {}


def test_wrong_return_type(app, cont, store):
    @app.job("ret")
    def ret(ctx: jobstate.StepContext) -> Any:
        return 42

    app.start("ret", None, job_id="ret-1")
    with pytest.raises(jobstate.InvalidStepResult) as err:
        app.handler(cont.pop_all()[0])
    assert "returned int" in str(err.value) and "ctx.complete" in str(err.value)
    assert store.get("ret-1").status is JobStatus.FAILED
    assert cont.events == []


def test_bad_limits_and_registration(app):
    with pytest.raises(jobstate.InvalidInput):
        app.job("x", max_steps=0)
    with pytest.raises(jobstate.InvalidInput):
        app.job("x", deadline=-5)
    with pytest.raises(jobstate.InvalidInput):
        app.job("bad type!")

    @app.job("dup")
    def dup(ctx: jobstate.StepContext) -> Any:
        return None

    with pytest.raises(jobstate.InvalidInput):
        app.job("dup")
