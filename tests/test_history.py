"""Issue 20: a job's history is on by default, at 1/RING of a write per step, and shows
every step, failure, repair and operator action in order (newest state last)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import jobstate
from jobstate import history
from jobstate.records import child_id
from jobstate.testing import Driver
from tests.conftest import RequestLog, drain


def item_bytes(raw: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (strings and numbers as text)."""
    def size(v: dict[str, Any]) -> int:
        (kind, val), = v.items()
        if kind in ("S", "N"):
            return len(str(val).encode())
        if kind == "BOOL":
            return 1
        if kind == "M":
            return sum(len(k) + size(x) for k, x in val.items()) + 3
        if kind == "L":
            return sum(size(x) for x in val) + 3
        return len(str(val))
    return sum(len(k) + size(v) for k, v in raw.items())


def counting(app: jobstate.App, name: str, steps: int, **kw: Any) -> None:
    @app.job(name, max_steps=steps + 5, **kw)
    def run(ctx: jobstate.StepContext) -> Any:
        if ctx.step >= steps:
            return ctx.complete({"steps": ctx.step})
        ctx.cursor["done"] = ctx.step + 1
        ctx.progress(ctx.step + 1, steps)
        return None


def test_every_step_is_in_the_history_by_default(app: jobstate.App,
                                                 cont: jobstate.InMemoryContinuation) -> None:
    steps = 2 * history.RING + 3
    counting(app, "long", steps)
    jid = app.start("long", {})
    drain(app, cont)
    entries = app.store.history(jid)
    assert [(e.step, e.event) for e in entries] == [
        *((s, "committed") for s in range(steps)), (steps, "succeeded")]
    assert all(e.started_at is not None and e.duration_ms is not None for e in entries)
    # The job item carries at most RING records and stays well under 1 KB.
    raw = app.store.get_raw(jid)
    assert raw is not None and len(raw["hr"]["L"]) <= history.RING
    assert item_bytes(raw) < 900


def metered(app: jobstate.App, cont: jobstate.InMemoryContinuation,
            requests_log: RequestLog) -> list[tuple[int, int, int]]:
    """(step, writes, reads) of each delivery until the job's events run out."""
    per_step = []
    while cont.events:
        event = cont.pop_all()[0]
        requests_log.reset()
        app.handler(event)
        per_step.append((event["jobstate"]["step"], requests_log.writes, requests_log.reads))
    return per_step


def test_a_step_costs_two_writes_and_the_record_moves_every_ring_steps(
        app: jobstate.App, cont: jobstate.InMemoryContinuation,
        requests_log: RequestLog) -> None:
    steps = 3 * history.RING
    counting(app, "metered", steps)
    app.start("metered", {})
    per_step = metered(app, cont, requests_log)
    middle = [(s, w, r) for s, w, r in per_step if 0 < s < steps]
    assert all(r == 0 for _, _, r in middle)
    # Two writes a step; one more on each step that moves RING records to a history item.
    extra = [s for s, w, _ in middle if w == 3]
    assert all(w in (2, 3) for _, w, _ in middle)
    assert extra == [history.RING, 2 * history.RING]


@pytest.mark.integration
def test_history_recent_keeps_the_last_steps_at_two_writes_a_step(
        app: jobstate.App, cont: jobstate.InMemoryContinuation,
        requests_log: RequestLog) -> None:
    steps = 3 * history.RING + 5
    counting(app, "lean", steps, history="recent")
    jid = app.start("lean", {})
    assert app.store.get(jid).history_mode == "recent"
    per_step = metered(app, cont, requests_log)
    assert all((w, r) == (2, 0) for s, w, r in per_step if 0 < s < steps), per_step
    # The steps since the last multiple of RING (on the job item), not older ones.
    entries = app.store.history(jid)
    kept = [e.step for e in entries if e.event == "committed"]
    assert kept == list(range(3 * history.RING, steps))
    assert entries[-1].event == "succeeded"
    assert not [i for i in app.store.partition(jid) if "#ring#" in i["sk"]["S"]]


@pytest.mark.integration
def test_history_recent_keeps_eventful_steps_and_redrives_from_the_failed_step(
        app: jobstate.App, cont: jobstate.InMemoryContinuation) -> None:
    broken = {"yes": True}

    @app.job("flaky", history="recent", max_attempts=1, max_steps=50)
    def flaky(ctx: jobstate.StepContext) -> Any:
        if ctx.step == history.RING + 2 and broken["yes"]:
            raise RuntimeError("bad row")
        return ctx.complete("ok") if ctx.step > history.RING + 2 else None

    jid = app.start("flaky", {})
    drain(app, cont)
    assert app.store.get(jid).status is jobstate.JobStatus.FAILED
    assert "failed" in [e.event for e in app.store.history(jid)]
    # No checkpoint is kept in this mode: only the failed step can be redriven.
    with pytest.raises(jobstate.InvalidInput, match=rf"redriven from step\(s\) {history.RING + 2}"):
        app.store.redrive(jid, from_step=history.RING)
    broken["yes"] = False
    app.store.redrive(jid, by="ops")
    jobstate.sweep(app.store, cont)
    drain(app, cont)
    assert app.store.get(jid).status is jobstate.JobStatus.SUCCEEDED


def test_history_modes_are_checked_before_anything_is_written(app: jobstate.App) -> None:
    with pytest.raises(jobstate.InvalidInput,
                       match=r"history='all' is not a history mode.*\"recent\""):
        app.job("bad", history="all")  # type: ignore[arg-type]
    with pytest.raises(jobstate.InvalidInput, match="is not a history mode"):
        app.store.create("bad", {}, "j-bad", history="off")  # type: ignore[arg-type]
    assert app.store.get_raw("j-bad") is None
    counting(app, "old-style", 2, history=True)  # what older versions took: an item a step
    jid = app.start("old-style", {})
    view = app.store.get(jid)
    assert view.history_mode == "step-items" and view.history_on


def test_children_keep_their_own_types_history_mode(
        app: jobstate.App, cont: jobstate.InMemoryContinuation) -> None:
    counting(app, "leaf", 1, history="recent")

    @app.job("root")
    def root(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            return ctx.spawn("leaf", [{}, {}])
        return ctx.complete("done")

    jid = app.start("root", {})
    drain(app, cont)
    kids = [child_id(jid, 0, i) for i in range(2)]
    assert {app.store.get(k).history_mode for k in kids} == {"recent"}
    assert app.store.get(jid).history_mode == "steps"


@pytest.mark.parametrize("mode", ["steps", "recent", "step-items"])
@pytest.mark.parametrize("seed", [3, 11])
def test_history_under_chaos_records_each_committed_step_once_in_every_mode(
        app: jobstate.App, driver: Callable[..., Driver], mode: str, seed: int) -> None:
    steps = 2 * history.RING + 5
    counting(app, "chaotic", steps, history=mode)
    jid = app.start("chaotic", {})
    driver(seed=seed, duplicates=0.3, crashes=0.3, lost=0.1).run_until_done([jid],
                                                                             calm_after=40)
    assert app.store.get(jid).result == {"steps": steps}
    committed = [e.step for e in app.store.history(jid) if e.event == "committed"]
    # Crashes and duplicates neither lose nor double a committed step's record.
    first = 0 if mode != "recent" else 2 * history.RING
    assert committed == list(range(first, steps))


def test_a_failure_then_a_repair_then_a_success_shows_the_success_last(
        app: jobstate.App, cont: jobstate.InMemoryContinuation,
        clock: jobstate.ManualClock) -> None:
    calls = {"n": 0}

    @app.job("flaky", max_attempts=1)
    def flaky(ctx: jobstate.StepContext) -> Any:
        calls["n"] += 1
        clock.advance(0.01)
        if ctx.step == 1 and calls["n"] == 2:
            raise RuntimeError("the disk is full " + "and a long explanation " * 20)
        if ctx.step == 2:
            return ctx.complete("ok")
        return None

    jid = app.start("flaky", {})
    drain(app, cont)
    assert app.store.get(jid).status is jobstate.JobStatus.FAILED
    clock.advance(1)
    app.store.resume(jid, by="alice", reason="disk cleaned")
    clock.advance(1)
    jobstate.sweep(app.store, cont)
    drain(app, cont)
    entries = app.store.history(jid)
    events = [(e.step, e.event) for e in entries]
    assert events == [(0, "committed"), (1, "failed"), (1, "resumed"), (1, "committed"),
                      (2, "succeeded")]
    resumed = entries[2]
    assert resumed.who == "alice" and resumed.detail == "disk cleaned"
    assert "a long explanation" in (entries[1].detail or "")


def test_operator_actions_are_recorded_with_who_when_and_why(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock
) -> None:
    counting(app, "steered", 5)
    jid = app.start("steered", {})
    app.handler(cont.pop_all()[0])
    clock.advance(1)
    app.store.set_paused("steered", True, "deploy", by="arn:aws:iam::1:user/bob")
    clock.advance(1)
    app.store.set_paused("steered", False, by="carol")
    clock.advance(1)
    app.store.cancel(jid, "not needed", by="dave")
    entries = app.store.history(jid)
    ops = [(e.event, e.who, e.detail) for e in entries if e.who]
    assert ops == [("paused", "arn:aws:iam::1:user/bob", "steered: deploy"),
                   ("resumed", "carol", "steered: resumed"),
                   ("cancelled", "dave", "not needed")]
    assert entries[0].event == "committed"
    assert all(e.ended_at for e in entries)


def test_note_is_the_documented_way_to_add_an_event(app: jobstate.App,
                                                    cont: jobstate.InMemoryContinuation) -> None:
    counting(app, "noted", 3)
    jid = app.start("noted", {})
    drain(app, cont)
    view = app.store.get(jid)
    history.note(app.store, view, "callback_answered", who="arn:aws:iam::1:role/hook",
                 detail="approved")
    last = app.store.history(jid)[-1]
    assert (last.event, last.who, last.detail) == ("callback_answered",
                                                   "arn:aws:iam::1:role/hook", "approved")


def test_a_settled_effect_is_in_the_history(app: jobstate.App,
                                            cont: jobstate.InMemoryContinuation,
                                            driver: Callable[..., Driver]) -> None:
    @app.job("pays", max_attempts=1)
    def pays(ctx: jobstate.StepContext) -> Any:
        def charge() -> None:
            raise TimeoutError("the bank did not answer")
        ctx.once("charge", charge, semantics=jobstate.Semantics.AT_MOST_ONCE)
        return ctx.complete("paid")

    jid = app.start("pays", {})
    driver().run()
    assert app.store.get(jid).status is jobstate.JobStatus.FAILED
    jobstate.mark_effect(app.store, jid, "charge", done=True, result={"id": 7}, by="erin",
                         reason="the bank says it went through")
    settled = [e for e in app.store.history(jid) if e.event == "settled"]
    assert len(settled) == 1 and settled[0].who == "erin"
    assert settled[0].detail == ("effect 'charge' marked DONE: the bank says it went "
                                 "through")


@pytest.mark.integration
def test_history_on_a_real_engine(app: jobstate.App, cont: jobstate.InMemoryContinuation
                                  ) -> None:
    steps = history.RING + 2
    counting(app, "real", steps)
    jid = app.start("real", {})
    drain(app, cont)
    assert [(e.step, e.event) for e in app.store.history(jid)] == [
        *((s, "committed") for s in range(steps)), (steps, "succeeded")]
    with pytest.raises(jobstate.JobFinished):
        app.store.cancel(jid, "late", by="frank")
