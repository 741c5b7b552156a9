"""Callbacks (issue 18): a step waits for an outside answer at no invocation, is woken by
it at once, and times out on time through the sweeper."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import RequestLog, drain

import jobstate
from jobstate import JobStatus, callbacks, faults, schema
from jobstate.testing import Driver, FakeLambdaContext

pytestmark = pytest.mark.integration


class Sender:
    """The outside system: `submit` is what a job hands its token to."""

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}
        self.calls = 0
        self.answer_now: Any = None  # a fast sender answers inside submit

    def submit(self, token: str) -> str:
        self.calls += 1
        job_id, name, _ = callbacks.parse_token(token)
        self.tokens[f"{job_id}/{name}"] = token
        if self.answer_now is not None:
            self.answer_now(token)
        return "submitted"


def deliver(app: jobstate.App, cont: jobstate.InMemoryContinuation,
            clock: jobstate.ManualClock) -> list[dict[str, Any]]:
    return drain(app, cont, FakeLambdaContext(clock, 60_000))


def sweep(app: jobstate.App, cont: jobstate.InMemoryContinuation,
          clock: jobstate.ManualClock) -> list[dict[str, Any]]:
    jobstate.sweep(app.store, cont)
    return deliver(app, cont, clock)


@pytest.fixture
def sender() -> Sender:
    return Sender()


@pytest.fixture
def approval(app: jobstate.App, sender: Sender) -> jobstate.App:
    """`approve`: waits for one callback (1 h timeout), then completes with its result or
    with what went wrong."""

    @app.job("approve")
    def approve(ctx: jobstate.StepContext) -> Any:
        try:
            got = ctx.wait_for_callback("approval", sender.submit, timeout_s=3600,
                                        heartbeat_s=ctx.input.get("hb"))
        except jobstate.CallbackFailed as exc:
            return ctx.complete({"failed": exc.error})
        except jobstate.CallbackTimedOut as exc:
            return ctx.complete({"timed_out": str(exc)})
        return ctx.complete({"got": got})

    return app


def started(app: jobstate.App, cont: jobstate.InMemoryContinuation,
            clock: jobstate.ManualClock, sender: Sender, job_id: str = "j1",
            **input: Any) -> str:
    app.start("approve", input, job_id=job_id)
    deliver(app, cont, clock)
    return sender.tokens[f"{job_id}/approval"]


def test_a_waiting_job_costs_no_invocation_and_its_answer_runs_it_at_once(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender, requests_log: RequestLog) -> None:
    token = started(approval, cont, clock, sender)
    job = approval.store.get("j1")
    assert job.status == JobStatus.WAITING and cont.pop_all() == []  # nothing runs
    assert job.due_at == clock.now_ms() + 3_600_000  # the sweeper times it out then
    requests_log.reset()
    answer = approval.complete_callback(token, {"ok": 1})
    # The documented cost of an answer: one write on the callback, one on the job, one
    # history note, no read.
    assert (requests_log.writes, requests_log.reads) == (3, 0)
    assert answer.woke and not answer.repeated and len(cont.events) == 1
    deliver(approval, cont, clock)
    job = approval.store.get("j1")
    assert job.status == JobStatus.SUCCEEDED and job.result == {"got": {"ok": 1}}
    assert sender.calls == 1


def test_the_token_is_opaque_random_and_never_shown(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="jobstate")
    token = started(approval, cont, clock, sender)
    other = started(approval, cont, clock, sender, job_id="j2")
    secret = token.rsplit(".", 1)[1]
    assert len(secret) * 6 >= 128 and secret != other.rsplit(".", 1)[1]
    raw = approval.store.get_item(schema.callback_key("j1", "approval"))
    assert raw is not None and secret not in str(raw)  # only its hash is stored
    view = approval.store.get("j1")
    assert token not in repr(view) and secret not in repr(view.tokens)
    assert callbacks.TOKENS_KEY in view.tokens
    approval.complete_callback(token, "yes")
    deliver(approval, cont, clock)
    assert secret not in caplog.text


def test_first_answer_wins_the_same_again_is_a_no_op_and_another_is_refused(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    token = started(approval, cont, clock, sender)
    assert approval.complete_callback(token, {"v": 1}).woke
    again = approval.complete_callback(token, {"v": 1})
    assert again.repeated and not again.woke
    with pytest.raises(jobstate.CallbackClosed, match="already answered"):
        approval.complete_callback(token, {"v": 2})
    with pytest.raises(jobstate.CallbackClosed):
        approval.fail_callback(token, "too late")
    with pytest.raises(jobstate.CallbackClosed):
        approval.heartbeat_callback(token)
    deliver(approval, cont, clock)
    assert approval.store.get("j1").result == {"got": {"v": 1}}
    # The one answer that counted is in the job's history, its payload is not.
    noted = [h for h in approval.store.history("j1") if h.event.startswith("callback_")]
    assert [h.event for h in noted] == ["callback_succeeded"]
    assert "approval" in (noted[0].detail or "") and "'v'" not in (noted[0].detail or "")


def test_a_failure_reaches_the_step_as_callback_failed(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    token = started(approval, cont, clock, sender)
    approval.fail_callback(token, "card declined")
    assert approval.fail_callback(token, "card declined").repeated
    deliver(approval, cont, clock)
    assert approval.store.get("j1").result == {"failed": "card declined"}


@pytest.mark.parametrize("forge", ["secret", "name", "job", "garbage", "empty", "none"])
def test_an_unknown_or_forged_token_writes_nothing(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender, requests_log: RequestLog, forge: str) -> None:
    token = started(approval, cont, clock, sender)
    prefix, job, name, secret = token.split(".")
    bad: Any = {"secret": f"{prefix}.{job}.{name}.{'A' * len(secret)}",
                "name": callbacks.new_token("j1", "other"),
                "job": callbacks.new_token("nope", "approval"),
                "garbage": "hello", "empty": "", "none": None}[forge]
    before = approval.store.get_item(schema.callback_key("j1", "approval"))
    job_before = approval.store.get_item(schema.job_key("j1"))
    requests_log.reset()
    for answer in (lambda: approval.complete_callback(bad, 1),
                   lambda: approval.fail_callback(bad, "x"),
                   lambda: approval.heartbeat_callback(bad)):
        with pytest.raises(jobstate.CallbackNotFound) as err:
            answer()
        assert secret not in str(err.value)
    assert requests_log.ops.count("PutItem") == 0
    assert approval.store.get_item(schema.callback_key("j1", "approval")) == before
    assert approval.store.get_item(schema.job_key("j1")) == job_before
    assert cont.pop_all() == []


def test_an_answer_that_comes_before_the_wait_is_returned_at_once(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    sender.answer_now = lambda token: approval.store.complete_callback(token, "fast")
    approval.start("approve", {}, job_id="j1")
    reports = deliver(approval, cont, clock)
    assert [r["outcome"] for r in reports] == ["completed"]  # never waited
    assert approval.store.get("j1").result == {"got": "fast"}


def test_an_answer_landing_while_the_wait_is_written_is_not_lost(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    # The step read the callback open; the answer lands before its wait is written, so
    # the answer's wake finds the job not waiting yet. The step's read after its wait sees
    # the answer and sends the job itself.
    def hook(point: str, info: dict[str, Any]) -> None:
        if point == "before_commit" and sender.tokens and not answered:
            answered.append(approval.store.complete_callback(
                sender.tokens["j1/approval"], "racy"))

    answered: list[Any] = []
    approval.start("approve", {}, job_id="j1")
    with faults.installed(hook):
        deliver(approval, cont, clock)
    assert answered and not answered[0].woke
    assert approval.store.get("j1").result == {"got": "racy"}


class SenderDied(BaseException):
    """The sending process is killed (not an error the library may catch)."""


@pytest.mark.parametrize("crash_at", faults.CALLBACK_POINTS)
def test_a_sender_killed_mid_answer_finishes_it_by_resending_the_same_answer(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender, crash_at: str) -> None:
    # An answer is a write on the callback, a wake of the job, a history note. A sender
    # killed between them retries with the same answer; the retry does what the first left
    # undone (at once, not at the callback's timeout an hour later), and nothing twice.
    token = started(approval, cont, clock, sender)

    def hook(point: str, info: dict[str, Any]) -> None:
        if point == crash_at:
            raise SenderDied(point)

    with faults.installed(hook), pytest.raises(SenderDied):
        approval.complete_callback(token, {"v": 1})
    # Woken: due now (the next sweep sends it), no longer at the timeout.
    woken_before = approval.store.get("j1").due_at < clock.now_ms() + 3_600_000
    assert woken_before == (crash_at == "callback_woken")
    again = approval.complete_callback(token, {"v": 1})
    assert again.repeated and again.woke == (not woken_before)
    if not woken_before:
        assert len(cont.events) == 1  # the retry sent the step
    else:
        # The first attempt woke it and died before sending its step: a lost continuation,
        # which the sweeper sends once its dispatch timeout has passed (JobView.due_at).
        due = approval.store.get("j1").due_at
        assert due is not None and due < clock.now_ms() + 3_600_000
        clock.set(due)
        sweep(approval, cont, clock)
    deliver(approval, cont, clock)
    assert approval.store.get("j1").result == {"got": {"v": 1}}
    approval.complete_callback(token, {"v": 1})  # once more: still one note
    noted = [h for h in approval.store.history("j1") if h.event.startswith("callback_")]
    assert [h.event for h in noted] == ["callback_succeeded"]


def test_a_timeout_fires_through_the_sweeper_and_the_step_may_catch_it(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    token = started(approval, cont, clock, sender)
    clock.advance(3_599)
    assert sweep(approval, cont, clock) == []  # not yet
    clock.advance(2)
    reports = sweep(approval, cont, clock)
    assert [r["outcome"] for r in reports] == ["completed"]
    assert "timed out" in approval.store.get("j1").result["timed_out"]
    with pytest.raises(jobstate.CallbackClosed, match="timed out"):
        approval.complete_callback(token, "late")


def test_heartbeats_keep_it_open_and_a_missed_one_times_it_out(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    token = started(approval, cont, clock, sender, hb=60)
    assert approval.store.get("j1").due_at == clock.now_ms() + 60_000
    for _ in range(3):
        clock.advance(50)
        approval.heartbeat_callback(token)
        assert approval.store.get("j1").due_at == clock.now_ms() + 60_000  # pushed back
        assert sweep(approval, cont, clock) == []
    clock.advance(61)
    sweep(approval, cont, clock)
    assert "heartbeat was missed" in approval.store.get("j1").result["timed_out"]
    with pytest.raises(jobstate.CallbackClosed):
        approval.heartbeat_callback(token)


def test_a_store_answer_makes_the_job_due_for_the_next_sweep(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    token = started(approval, cont, clock, sender)
    answer = approval.store.complete_callback(token, [1, 2])
    assert answer.woke and cont.pop_all() == []  # the store sends nothing
    reports = sweep(approval, cont, clock)  # no time passes: it is due now
    assert [r["outcome"] for r in reports] == ["completed"]
    assert approval.store.get("j1").result == {"got": [1, 2]}


def test_several_callbacks_are_awaited_in_any_order(
        app: jobstate.App, cont: jobstate.InMemoryContinuation,
        clock: jobstate.ManualClock) -> None:
    tokens: dict[str, str] = {}

    @app.job("two")
    def two(ctx: jobstate.StepContext) -> Any:
        a = ctx.callback("a", timeout_s=600)
        b = ctx.callback("b", timeout_s=600)
        tokens.update(a=a.token, b=b.token)
        return ctx.complete([b.result(), a.result()])  # b first

    app.start("two", job_id="j")
    deliver(app, cont, clock)
    assert app.complete_callback(tokens["a"], "A").woke is False  # the job waits on b
    assert cont.pop_all() == []
    assert app.complete_callback(tokens["b"], "B").woke
    deliver(app, cont, clock)
    assert app.store.get("j").result == ["B", "A"]


def test_a_retried_step_gets_the_same_callback_and_submits_once(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    seen: list[str] = []

    @app.job("flaky")
    def flaky(ctx: jobstate.StepContext) -> Any:
        cb = ctx.callback("x", timeout_s=600)
        seen.append(cb.token)
        ctx.once("submit", sender.submit, cb.token)
        if len(seen) == 1:
            raise RuntimeError(f"boom {cb.token}")
        return ctx.complete(cb.result())

    app.start("flaky", job_id="j")
    deliver(app, cont, clock)
    clock.advance(120)
    sweep(app, cont, clock)
    assert len(set(seen)) == 1 and sender.calls == 1
    job = app.store.get("j")
    assert job.status == JobStatus.WAITING and seen[0] not in (job.error or "")
    app.complete_callback(seen[0], "done")
    deliver(app, cont, clock)
    assert app.store.get("j").result == "done"


def test_callbacks_inside_fan_out_children(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    @app.job("parent")
    def parent(ctx: jobstate.StepContext) -> Any:
        if ctx.cursor.get("spawned"):
            return ctx.complete(sorted(c.result for c in ctx.children()))
        ctx.cursor["spawned"] = True
        ctx.spawn("child", [1, 2, 3])

    @app.job("child")
    def child(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.wait_for_callback("c", sender.submit, timeout_s=600))

    app.start("parent", job_id="p")
    deliver(app, cont, clock)
    assert len(sender.tokens) == 3
    for i, token in enumerate(sorted(sender.tokens.values())):
        app.complete_callback(token, i)
        deliver(app, cont, clock)
    assert app.store.get("p").result == [0, 1, 2]


def test_a_cancelled_job_keeps_the_answer_and_acts_on_it_when_resumed(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    token = started(approval, cont, clock, sender)
    approval.store.cancel("j1")
    answer = approval.complete_callback(token, "kept")
    assert not answer.woke and cont.pop_all() == []
    approval.store.resume("j1")
    sweep(approval, cont, clock)
    assert approval.store.get("j1").result == {"got": "kept"}


def test_a_paused_job_keeps_the_answer_and_acts_on_it_when_resumed(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender) -> None:
    token = started(approval, cont, clock, sender)
    approval.store.set_paused("approve", True)
    approval.complete_callback(token, "held")
    deliver(approval, cont, clock)  # the event is refused: the type is paused
    assert approval.store.get("j1").status == JobStatus.WAITING
    assert sweep(approval, cont, clock) == []
    approval.store.set_paused("approve", False)
    sweep(approval, cont, clock)
    assert approval.store.get("j1").result == {"got": "held"}


def test_payloads_are_json_and_size_limited_before_anything_is_written(
        approval: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        sender: Sender, requests_log: RequestLog) -> None:
    token = started(approval, cont, clock, sender)
    requests_log.reset()
    with pytest.raises(jobstate.InvalidInput, match="at most 65536 bytes"):
        approval.complete_callback(token, "x" * 70_000)
    with pytest.raises(jobstate.StateNotSerializable):
        approval.complete_callback(token, {1, 2})
    with pytest.raises(jobstate.InvalidInput, match="non-empty error"):
        approval.fail_callback(token, "")
    with pytest.raises(jobstate.InvalidInput, match="at most 4000"):
        approval.fail_callback(token, "e" * 5000)
    assert requests_log.ops == []


@pytest.mark.parametrize("kw", [{"timeout_s": 0}, {"timeout_s": "1"}, {"timeout_s": 1e12},
                                {"timeout_s": 5, "heartbeat_s": -1},
                                {"timeout_s": 5, "name": "no spaces"}])
def test_bad_callback_arguments_are_refused(
        app: jobstate.App, cont: jobstate.InMemoryContinuation, clock: jobstate.ManualClock,
        kw: dict[str, Any]) -> None:
    errors: list[BaseException] = []

    @app.job("bad")
    def bad(ctx: jobstate.StepContext) -> Any:
        try:
            ctx.callback(**{"name": "ok", **kw})
        except jobstate.InvalidInput as exc:
            errors.append(exc)
        return ctx.complete()

    app.start("bad", job_id="b")
    deliver(app, cont, clock)
    assert len(errors) == 1
    assert app.store.get_item(schema.callback_key("b", "ok")) is None


def test_answers_hold_under_chaos(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                                  clock: jobstate.ManualClock) -> None:
    sender = Sender()

    @app.job("approve")
    def approve(ctx: jobstate.StepContext) -> Any:
        a = ctx.wait_for_callback("a", sender.submit, timeout_s=36_000)
        ctx.cursor["a"] = a
        b = ctx.wait_for_callback("b", sender.submit, timeout_s=36_000)
        return ctx.complete([a, b])

    ids = [f"j{i}" for i in range(6)]
    driver = Driver(app, cont, clock, seed=7, duplicates=0.3, crashes=0.2, lost=0.2,
                    crash_points=("after_claim", "before_commit", "after_commit",
                                  "after_dispatch"))
    for job_id in ids:
        app.start("approve", {}, job_id=job_id)
    answered: set[str] = set()
    for i in range(100):
        driver.run()
        for key, token in sorted(sender.tokens.items()):
            if key in answered:
                continue
            answered.add(key)
            answer = (app.complete_callback if i % 2 else app.store.complete_callback)
            answer(token, key)
            assert answer(token, key).repeated  # a resent answer
        if all(app.store.get(j).status.terminal for j in ids):
            break
        driver.sweep(advance_s=120)
    for job_id in ids:
        assert app.store.get(job_id).result == [f"{job_id}/a", f"{job_id}/b"]
