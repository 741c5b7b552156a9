"""Issue 20: `redrive` re-runs a FAILED job from its last committed step or from an
earlier checkpoint kept in history; effects already done are still skipped."""

from __future__ import annotations

from typing import Any

import pytest

import jobstate
from jobstate import history
from tests.conftest import drain

STEPS = 2 * history.RING + 4
BROKEN_AT = 2 * history.RING + 2


def register(app: jobstate.App, broken: dict[str, bool], sent: list[int]) -> None:
    @app.job("pipeline", max_attempts=1, max_steps=STEPS + 5)
    def pipeline(ctx: jobstate.StepContext) -> Any:
        if ctx.step >= STEPS:
            return ctx.complete({"total": ctx.cursor["total"]})
        ctx.once(f"send-{ctx.step}", lambda s=ctx.step: sent.append(s))
        if ctx.step == BROKEN_AT and broken["yes"]:
            raise RuntimeError("bad row")
        ctx.cursor["total"] = ctx.cursor.get("total", 0) + ctx.step
        ctx.progress(ctx.step + 1, STEPS)
        return None


@pytest.fixture
def failed(app: jobstate.App, cont: jobstate.InMemoryContinuation
           ) -> tuple[str, dict[str, bool], list[int]]:
    broken = {"yes": True}
    sent: list[int] = []
    register(app, broken, sent)
    jid = app.start("pipeline", {})
    drain(app, cont)
    view = app.store.get(jid)
    assert view.status is jobstate.JobStatus.FAILED and view.step == BROKEN_AT
    return jid, broken, sent


def test_redrive_from_the_failed_step(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                                      failed: tuple[str, dict[str, bool], list[int]]) -> None:
    jid, broken, sent = failed
    broken["yes"] = False
    view = app.store.redrive(jid, by="ops", reason="row fixed")
    assert view.status is jobstate.JobStatus.RUNNING and view.step == BROKEN_AT
    jobstate.sweep(app.store, cont)
    drain(app, cont)
    done = app.store.get(jid)
    assert done.status is jobstate.JobStatus.SUCCEEDED
    assert done.result == {"total": sum(range(STEPS))}
    assert sent == list(range(STEPS))  # each effect once: BROKEN_AT's was done before
    entries = app.store.history(jid)
    assert entries[-1].event == "succeeded"
    redriven = [e for e in entries if e.event == "redriven"]
    assert len(redriven) == 1 and redriven[0].who == "ops"
    assert redriven[0].detail == f"from step {BROKEN_AT}: row fixed"


def test_redrive_from_an_earlier_checkpoint_restores_its_state_and_skips_done_effects(
        app: jobstate.App, cont: jobstate.InMemoryContinuation,
        failed: tuple[str, dict[str, bool], list[int]]) -> None:
    jid, broken, sent = failed
    broken["yes"] = False
    checkpoint = 2 * history.RING
    assert checkpoint in jobstate.redrive.available(app.store, jid)
    view = app.store.redrive(jid, from_step=checkpoint)
    assert view.step == checkpoint
    assert view.cursor == {"total": sum(range(checkpoint))}  # the state step 32 started from
    assert view.progress.done == checkpoint
    jobstate.sweep(app.store, cont)
    drain(app, cont)
    done = app.store.get(jid)
    assert done.status is jobstate.JobStatus.SUCCEEDED
    assert done.result == {"total": sum(range(STEPS))}  # not counted twice
    assert sent == list(range(STEPS))  # the re-run steps' effects were not sent again


@pytest.mark.parametrize("from_step, message", [
    (3, "history kept no checkpoint for step 3"),
    (BROKEN_AT + 1, "cannot be redriven from a later step"),
])
def test_a_step_without_a_checkpoint_is_refused_naming_the_ones_kept(
        app: jobstate.App, failed: tuple[str, dict[str, bool], list[int]],
        from_step: int, message: str) -> None:
    jid, _, _ = failed
    before = app.store.get_raw(jid)
    with pytest.raises(jobstate.InvalidInput, match=message) as err:
        app.store.redrive(jid, from_step=from_step)
    if from_step == 3:
        assert f"{history.RING}, {2 * history.RING}, {BROKEN_AT}" in str(err.value)
    assert app.store.get_raw(jid) == before  # nothing written


def test_a_job_redriven_while_its_type_is_paused_waits_for_the_resume(
        app: jobstate.App, cont: jobstate.InMemoryContinuation,
        failed: tuple[str, dict[str, bool], list[int]]) -> None:
    jid, broken, sent = failed
    broken["yes"] = False
    app.store.set_paused("pipeline", True, "maintenance")
    view = app.store.redrive(jid)
    # Held as a job created now would be: marked at once, not at the next sweep.
    assert view.paused_by == "pipeline" and view.display_status == "PAUSED"
    redriven = [e for e in app.store.history(jid) if e.event == "redriven"]
    assert "held while job type 'pipeline' is paused" in (redriven[0].detail or "")
    stray = app.handler(jobstate.step_event(jid, BROKEN_AT, "pipeline"), None)
    assert stray["outcome"] != "committed" and app.store.get(jid).step == BROKEN_AT
    jobstate.sweep(app.store, cont)
    assert cont.pop_all() == []
    app.store.set_paused("pipeline", False)
    jobstate.sweep(app.store, cont)
    drain(app, cont)
    assert app.store.get(jid).status is jobstate.JobStatus.SUCCEEDED
    assert sent == list(range(STEPS))


def test_only_a_failed_job_is_redriven(app: jobstate.App,
                                       cont: jobstate.InMemoryContinuation) -> None:
    @app.job("fine")
    def fine(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(1)

    jid = app.start("fine", {})
    drain(app, cont)
    with pytest.raises(jobstate.InvalidInput, match="only a FAILED job can be redriven"):
        app.store.redrive(jid)
    other = app.start("fine", {})
    app.store.cancel(other)
    with pytest.raises(jobstate.InvalidInput, match="jobstate resume"):
        app.store.redrive(other)
    with pytest.raises(jobstate.JobNotFound):
        app.store.redrive("no-such-job")
