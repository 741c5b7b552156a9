"""Effect hooks (issue 19): `App(effect_hooks=[...])` sees each effect start, succeed,
fail and replay, with the job id, step, key and attempt; a raising hook never changes the
job (it is logged as `hook_failed`)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from conftest import drain

import jobstate
from jobstate import JobStatus, Semantics
from jobstate.testing import Driver

pytestmark = pytest.mark.integration


class Seen:
    def __init__(self, raises: bool = False) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.raises = raises

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.events.append((event, info))
        if self.raises:
            raise RuntimeError("hook bug")

    def of(self, key: str) -> list[tuple[str, int, int]]:
        return [(e, i["step"], i["attempt"]) for e, i in self.events if i["key"] == key]


def make_app(store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
             seen: Seen) -> tuple[jobstate.App, list[str]]:
    app = jobstate.App(store, cont, effect_hooks=[seen])
    calls: list[str] = []

    @app.job("fx", max_attempts=3)
    def fx(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.once("send", calls.append, "send")
            if ctx.attempt == 1:
                raise ConnectionError("after the effect")  # the retry replays it
            return None
        got = ctx.once_batch({"a": ["a"], "b": ["b"]}, calls.append)
        if ctx.attempt == 1:
            raise ConnectionError("after the batch")
        return ctx.complete(sorted(got))

    return app, calls


def test_hooks_see_start_success_and_replay_with_step_key_and_attempt(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
        clock: jobstate.ManualClock) -> None:
    seen = Seen()
    app, calls = make_app(store, cont, seen)
    app.start("fx", None, job_id="j")
    drain(app, cont)
    assert store.get("j").status is JobStatus.SUCCEEDED
    assert calls == ["send", "a", "b"]  # each effect ran once
    assert seen.of("send") == [("started", 0, 1), ("succeeded", 0, 1), ("replayed", 0, 2)]
    assert seen.of("a") == [("started", 1, 1), ("succeeded", 1, 1), ("replayed", 1, 2)]
    info = seen.events[0][1]
    assert info == {"job_id": "j", "job_type": "fx", "step": 0, "key": "send", "attempt": 1,
                    "semantics": Semantics.AT_MOST_ONCE.value}


def test_hooks_see_a_failed_effect_with_its_error_type(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation) -> None:
    seen = Seen()
    app = jobstate.App(store, cont, effect_hooks=[seen])

    def boom() -> None:
        raise TimeoutError("secret-token-123 in the text")

    @app.job("bad", max_attempts=1)
    def bad(ctx: jobstate.StepContext) -> Any:
        ctx.once("call", boom, semantics=Semantics.AT_LEAST_ONCE)

    app.start("bad", None, job_id="b")
    drain(app, cont)
    assert store.get("b").status is JobStatus.FAILED
    assert [(e, i.get("error")) for e, i in seen.events] == [("started", None),
                                                             ("failed", "TimeoutError")]
    assert "secret-token-123" not in repr(seen.events)


def test_a_raising_hook_never_changes_the_job(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="jobstate")
    seen = Seen(raises=True)
    app, calls = make_app(store, cont, seen)
    app.start("fx", None, job_id="j")
    drain(app, cont)
    job = store.get("j")
    assert job.status is JobStatus.SUCCEEDED and job.result == ["a", "b"]
    assert calls == ["send", "a", "b"] and len(seen.events) == 9
    effects = {e["key"]: e["state"] for e in jobstate.list_effects(store, "j")}
    assert effects == {"send": "DONE", "a": "DONE", "b": "DONE"}
    failed = [json.loads(r.getMessage()) for r in caplog.records
              if '"hook_failed"' in r.getMessage()]
    assert len(failed) == 9 and all("RuntimeError" in f["detail"] for f in failed)
    assert all("hook bug" not in f["detail"] for f in failed)


def test_a_hook_that_is_not_callable_is_refused_at_construction(
        store: jobstate.JobStore) -> None:
    with pytest.raises(jobstate.InvalidInput, match="effect_hooks must be callables"):
        jobstate.App(store, jobstate.InMemoryContinuation(), effect_hooks=["print"])  # type: ignore[list-item]


@pytest.mark.parametrize("seed", [1, 2])
def test_effects_run_once_under_chaos_with_raising_hooks(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
        clock: jobstate.ManualClock, seed: int) -> None:
    seen = Seen(raises=True)
    app, calls = make_app(store, cont, seen)
    ids = [app.start("fx", None, job_id=f"j{i}") for i in range(3)]
    d = Driver(app, cont, clock, seed=seed, duplicates=0.2, lost=0.05,
               crash_points=("after_claim", "before_commit", "after_commit"), crashes=0.1)
    d.run_until_done(ids, calm_after=20)
    assert all(store.get(j).status is JobStatus.SUCCEEDED for j in ids)
    assert sorted(calls) == sorted(["send", "a", "b"] * 3)  # at most once, all happened
    succeeded = [(i["job_id"], i["key"]) for e, i in seen.events if e == "succeeded"]
    assert sorted(succeeded) == sorted((j, k) for j in ids for k in ("send", "a", "b"))
