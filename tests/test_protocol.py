"""The step protocol (issue 2): K-step jobs, duplicates, takeovers, fencing, request counts."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import drain

import jobstate
from jobstate import JobStatus, protocol, transitions
from jobstate.lease import State
from jobstate.testing import Crash, FakeLambdaContext

pytestmark = pytest.mark.integration


def register_counter(app: jobstate.App, calls: list[int], k: int = 5,
                     name: str = "count") -> None:
    @app.job(name, max_steps=100)
    def count(ctx: jobstate.StepContext) -> Any:
        calls.append(ctx.step)
        n = ctx.cursor.get("n", 0)
        ctx.tokens.setdefault("etl", f"tok-{ctx.job_id}")
        assert ctx.tokens["etl"] == f"tok-{ctx.job_id}"  # tokens survive every step
        if n >= k:
            return ctx.complete({"n": n, "seen": ctx.cursor.get("seen", [])})
        ctx.cursor["n"] = n + 1
        ctx.cursor["seen"] = [*ctx.cursor.get("seen", []), ctx.step]
        ctx.progress(n + 1, k, "items")
        return None


def test_k_step_job_finishes_with_cursor_and_tokens(app, cont, store):
    calls: list[int] = []
    register_counter(app, calls, k=5)
    job_id = app.start("count", {"file": "a.csv"}, job_id="job-1")
    reports = drain(app, cont)
    assert [r["outcome"] for r in reports] == ["committed"] * 5 + ["completed"]
    job = store.get(job_id, secrets=True)
    assert job.status is JobStatus.SUCCEEDED
    assert job.result == {"n": 5, "seen": [0, 1, 2, 3, 4]}
    assert job.tokens == {"etl": "tok-job-1"}
    assert job.progress == jobstate.Progress(5, 5, "items")
    assert calls == [0, 1, 2, 3, 4, 5]
    assert job.invocations == 6


def test_duplicate_delivery_before_during_after(app, cont, store):
    calls: list[int] = []
    register_counter(app, calls, k=3)
    app.start("count", None, job_id="dup")
    first = cont.pop_all()[0]
    # during: another delivery arrives while step 0 runs
    nested: list[dict[str, Any]] = []

    @app.job("probe")
    def probe(ctx: jobstate.StepContext) -> Any:
        return None

    original = app.specs["count"].fn

    def during(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0 and not nested:
            nested.append(app.handler(first))
        return original(ctx)

    app.specs["count"] = app.specs["count"].__class__(
        "count", during, app.specs["count"].limits, app.specs["count"].retry)
    report = app.handler(first)
    assert report["outcome"] == "committed"
    assert nested[0]["outcome"] == "in_flight"
    # after: the same event again, once step 0 is committed
    again = app.handler(first)
    assert again["outcome"] == "duplicate"
    assert calls == [0]
    assert len(cont.events) == 1  # only the committed step's continuation
    # before: deliver step 1 twice in a row — the second is a duplicate
    nxt = cont.pop_all()[0]
    assert app.handler(nxt)["outcome"] == "committed"
    assert app.handler(nxt)["outcome"] == "duplicate"
    assert calls == [0, 1]
    drain(app, cont)
    assert store.get("dup").status is JobStatus.SUCCEEDED
    assert calls == [0, 1, 2, 3]


def test_dead_invocation_lease_expiry_takeover_and_fencing(app, cont, store, clock):
    calls: list[tuple[int, dict[str, Any]]] = []

    @app.job("scan", max_steps=50)
    def scan(ctx: jobstate.StepContext) -> Any:
        calls.append((ctx.step, dict(ctx.cursor)))
        off = ctx.cursor.get("offset", 0)
        if off >= 30:
            return ctx.complete(off)
        ctx.cursor["offset"] = off + 5
        ctx.checkpoint()
        if ctx.step == 0 and len(calls) == 1:
            raise Crash("container died after its checkpoint")
        ctx.cursor["offset"] = off + 10
        return None

    app.start("scan", None, job_id="scan-1")
    event = cont.pop_all()[0]
    ctx = FakeLambdaContext(clock, timeout_ms=30_000)
    with pytest.raises(Crash):
        app.handler(event, ctx)
    # A duplicate delivery while the dead owner's lease is live: no-op.
    assert app.handler(event, FakeLambdaContext(clock))["outcome"] == "in_flight"
    job = store.get("scan-1")
    assert job.lease_owner is not None and job.cursor == {"offset": 5}
    # Only after the lease (hard deadline + grace) expires can someone take over.
    clock.advance(30 + app.lease_grace_ms / 1000 + 0.001)
    report = app.handler(event, FakeLambdaContext(clock))
    assert report["outcome"] == "committed"
    assert calls[1] == (0, {"offset": 5})  # resumed from the last checkpoint
    assert store.get("scan-1").takeovers == 1
    events = [h.event for h in store.history("scan-1")]
    assert "takeover" in events
    drain(app, cont)
    assert store.get("scan-1").status is JobStatus.SUCCEEDED


def test_state_put_back_after_a_checkpoint_is_committed(app, cont, store):
    """A write leaves out the state parts the item already holds; after a checkpoint the
    item holds the checkpoint's, so a step that puts back the state it was claimed with
    still commits it (and a step that changes nothing keeps it)."""
    @app.job("undo", max_steps=10)
    def undo(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 2:
            return ctx.complete(dict(ctx.cursor))
        if ctx.step == 1:  # (step 0 found no tokens or progress stored yet)
            claimed = dict(ctx.cursor), dict(ctx.tokens)
            ctx.cursor["n"], ctx.tokens["t"] = 99, "tmp"
            ctx.checkpoint()
            assert store.get(ctx.job_id, secrets=True).cursor == {"n": 99}
            ctx.cursor, ctx.tokens = dict(claimed[0]), dict(claimed[1])
        return None

    app.start("undo", None, job_id="undo-1", cursor={"n": 1})
    drain(app, cont)
    job = store.get("undo-1", secrets=True)
    assert job.status is JobStatus.SUCCEEDED and job.result == {"n": 1}
    assert job.cursor == {"n": 1} and job.tokens == {}


def test_dead_owner_late_commit_is_fenced(store, clock):
    store.create("t", {"x": 1}, job_id="fence")
    a = protocol.claim(store, "fence", 0, request_id="A", lease_until_ms=clock.now_ms() + 1000)
    assert a.lease is not None
    clock.advance(2)
    b = protocol.claim(store, "fence", 0, request_id="B", lease_until_ms=clock.now_ms() + 10_000)
    assert b.outcome is jobstate.ClaimOutcome.TAKEOVER and b.lease is not None
    state = State.encode(store, {"from": "A"}, {}, {}, job_id="fence")
    with pytest.raises(jobstate.LeaseLost) as err:
        transitions.commit(store, a.lease, state)
    assert "no longer held" in str(err.value)
    with pytest.raises(jobstate.LeaseLost):
        transitions.checkpoint(store, a.lease, state)
    transitions.commit(store, b.lease, State.encode(store, {"from": "B"}, {}, {},
                                                          job_id="fence"))
    view = store.get("fence")
    assert view.step == 1 and view.cursor == {"from": "B"}


def test_late_commit_sends_no_continuation(app, cont, store, clock):
    nested: list[bool] = []

    @app.job("slow")
    def slow(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0 and not nested:
            nested.append(True)
            # This invocation overruns: its lease expires and a retry takes the step.
            clock.advance(120)
            other = app.handler(jobstate.step_event(ctx.job_id, 0, "slow"),
                                FakeLambdaContext(clock))
            assert other["outcome"] in ("committed", "takeover")
        ctx.cursor["again"] = True
        return ctx.complete("ok") if ctx.step >= 1 else None

    app.start("slow", None, job_id="late")
    ev = cont.pop_all()[0]
    report = app.handler(ev, FakeLambdaContext(clock, timeout_ms=10_000))
    assert report["outcome"] == "lease_lost"
    # Exactly one continuation for step 1 exists: the winner's.
    assert [e["jobstate"]["step"] for e in cont.events] == [1]


def test_commit_then_crash_before_invoke_leaves_job_due(app, cont, store, clock, driver):
    calls: list[int] = []
    register_counter(app, calls, k=2)
    app.start("count", None, job_id="lost")
    d = driver()
    d.deliver(cont.pop_all()[0], crash_at="after_commit")
    assert cont.events == []
    job = store.get("lost")
    assert job.step == 1 and job.lease_owner is None
    # Stale, and sent again, once unclaimed for the dispatch timeout after its commit.
    assert job.due_at == job.updated_at + store.dispatch_timeout_ms
    assert jobstate.sweep(store, cont).dispatched == 0  # not stale yet
    clock.advance(store.dispatch_timeout_ms / 1000 + 1)
    report = jobstate.sweep(store, cont)
    assert report.lost_continuations == 1 and report.dispatched == 1
    drain(app, cont)
    assert store.get("lost").status is JobStatus.SUCCEEDED
    assert calls == [0, 1, 2]


def test_happy_path_costs_two_writes_zero_reads(app, cont, store, requests_log):
    calls: list[int] = []
    register_counter(app, calls, k=6)
    app.start("count", None, job_id="cost")
    drain_one = cont.pop_all()[0]
    requests_log.reset()
    app.handler(drain_one)  # a cold container too: the pause switch is on the job item
    assert requests_log.writes == 2 and requests_log.reads == 0
    per_step = []
    for _ in range(5):
        requests_log.reset()
        (event,) = cont.pop_all()
        report = app.handler(event)
        per_step.append((report["outcome"], requests_log.writes, requests_log.reads))
    assert per_step == [("committed", 2, 0)] * 5
    requests_log.reset()
    (event,) = cont.pop_all()
    assert app.handler(event)["outcome"] == "completed"
    assert (requests_log.writes, requests_log.reads) == (2, 0)  # claim + completion


def test_steps_never_read_the_pause_flag_however_long_they_take(app, cont, store, clock,
                                                                requests_log):
    # The per-type kill switch is a mark a pause writes on each of the type's jobs, which
    # the claim's condition checks: no step reads the type's flag, long or short.
    @app.job("slow", max_steps=10)
    def slow(ctx: jobstate.StepContext) -> Any:
        clock.advance(11)
        return ctx.complete(None) if ctx.step == 3 else None

    app.start("slow", None, job_id="slow")  # creating a job reads its type's flag once
    seen: list[dict[str, Any]] = []
    store.client.meta.events.register(
        "provide-client-params.dynamodb.GetItem", lambda params, **_: seen.append(params))
    per_step = []
    for _ in range(4):
        requests_log.reset()
        (event,) = cont.pop_all()
        app.handler(event)
        per_step.append((requests_log.writes, requests_log.reads))
    assert per_step == [(2, 0)] * 4  # claim + commit (or completion), nothing else
    assert seen == []


def test_create_is_idempotent_and_detects_conflicts(app, store):
    @app.job("c")
    def c(ctx: jobstate.StepContext) -> Any:
        return None

    a, created = store.create("c", {"k": 1, "b": [1, 2]}, job_id="same")
    b, created2 = store.create("c", {"b": [1, 2], "k": 1}, job_id="same")
    assert created and not created2 and a.job_id == b.job_id
    with pytest.raises(jobstate.JobConflict) as err:
        store.create("c", {"k": 2}, job_id="same")
    assert "different type or input" in str(err.value)
    with pytest.raises(jobstate.JobConflict):
        store.create("other", {"k": 1, "b": [1, 2]}, job_id="same")


def test_runaway_guards(app, cont, store, clock):
    @app.job("forever", max_steps=4)
    def forever(ctx: jobstate.StepContext) -> Any:
        ctx.cursor["n"] = ctx.step
        return None

    app.start("forever", None, job_id="runaway")
    drain(app, cont)
    job = store.get("runaway")
    assert job.status is JobStatus.FAILED and "max_steps=4" in (job.error or "")

    @app.job("late", deadline=60)
    def late(ctx: jobstate.StepContext) -> Any:
        clock.advance(45)
        return None

    app.start("late", None, job_id="deadline")
    drain(app, cont)
    job = store.get("deadline")
    assert job.status is JobStatus.FAILED and "deadline" in (job.error or "")


def test_cancel_stops_the_chain(app, cont, store):
    calls: list[int] = []
    register_counter(app, calls, k=10)
    app.start("count", None, job_id="stop")
    app.handler(cont.pop_all()[0])
    store.cancel("stop")
    report = app.handler(cont.pop_all()[0])
    assert report["outcome"] == "finished" and report["status"] == "CANCELLED"
    assert cont.events == [] and calls == [0]
    assert store.cancel("stop").status is JobStatus.CANCELLED  # idempotent


def test_cancel_while_running_fences_the_commit(app, cont, store):
    @app.job("cancelme")
    def cancelme(ctx: jobstate.StepContext) -> Any:
        store.cancel(ctx.job_id)
        return None

    app.start("cancelme", None, job_id="cx")
    report = app.handler(cont.pop_all()[0])
    assert report["outcome"] == "cancelled"
    assert cont.events == []
    assert store.get("cx").status is JobStatus.CANCELLED


def test_step_failure_retries_then_fails(app, cont, store, clock):
    @app.job("flaky", retry=jobstate.RetryPolicy(max_attempts=2,
                                                  wait=__import__("tenacity").wait_fixed(600)))
    def flaky(ctx: jobstate.StepContext) -> Any:
        raise RuntimeError("upstream 503")

    app.start("flaky", None, job_id="fl")
    ev = cont.pop_all()[0]
    r1 = app.handler(ev, FakeLambdaContext(clock))
    assert r1["outcome"] == "retry_scheduled"
    job = store.get("fl")
    assert job.status is JobStatus.RUNNING and job.attempt == 1
    assert job.not_before is not None and job.not_before > clock.now_ms()
    assert job.due_at == job.not_before  # the sweeper sends it when the backoff ends
    assert app.handler(ev, FakeLambdaContext(clock))["outcome"] == "not_yet"
    clock.advance(601)
    r2 = app.handler(ev, FakeLambdaContext(clock))
    assert r2["outcome"] == "failed"
    job = store.get("fl")
    assert job.status is JobStatus.FAILED and "upstream 503" in (job.error or "")
    assert [h.event for h in store.history("fl")] == ["retry_scheduled", "failed"]


# -- lost responses, hand-written events, resume, cancel under a running step ---------------


def test_a_claim_retried_after_a_lost_response_is_ours(app, cont, store):
    from conftest import LostResponse

    calls: list[int] = []
    register_counter(app, calls, k=1)
    app.start("count", None, job_id="lost-claim")
    event = cont.pop_all()[0]
    with LostResponse(store, "update_item") as lost:  # only the claim: then it is spent
        report = app.handler(event)
    assert lost.replayed == 1
    assert report["outcome"] == "committed" and calls == [0]
    drain(app, cont)
    assert store.get("lost-claim").status is JobStatus.SUCCEEDED


def test_an_event_without_a_type_is_checked_before_anything_is_written(app, cont, store):
    from conftest import RequestLog

    calls: list[int] = []
    register_counter(app, calls, k=2)
    app.start("count", None, job_id="bare")
    cont.pop_all()
    bare = {"jobstate": {"job_id": "bare", "step": 0}}  # the design's minimal event
    store.set_paused("count", True)
    before = store.get_raw("bare")
    log = RequestLog(store)
    assert app.handler(bare)["outcome"] == "paused"
    # One read tells the type; the claim's condition refuses the held job: nothing changed.
    assert log.reads == 1 and calls == [] and store.get_raw("bare") == before
    store.set_paused("count", False)
    assert app.handler(bare)["outcome"] == "committed" and calls == [0]

    other = jobstate.App(store, jobstate.InMemoryContinuation())  # knows no "count" type
    log.reset()
    with pytest.raises(jobstate.UnknownJobType):
        other.handler({"jobstate": {"job_id": "bare", "step": 1}})
    assert log.writes == 0
    with pytest.raises(jobstate.JobNotFound):
        app.handler({"jobstate": {"job_id": "no-such-job", "step": 0}})


def test_a_job_that_failed_max_steps_resumes_only_with_more_steps(app, cont, store):
    @app.job("short", max_steps=3)
    def short(ctx: jobstate.StepContext) -> Any:
        if ctx.step >= 4:
            return ctx.complete(ctx.step)
        return None

    app.start("short", None, job_id="short")
    drain(app, cont)
    job = store.get("short")
    assert job.status is JobStatus.FAILED and "--max-steps" in (job.error or "")
    with pytest.raises(jobstate.InvalidInput, match="max_steps"):
        store.resume("short")  # it would fail the same guard at once
    with pytest.raises(jobstate.InvalidInput, match="larger"):
        store.resume("short", max_steps=3)
    assert store.get("short").status is JobStatus.FAILED  # nothing written
    store.resume("short", max_steps=10)
    app.handler(jobstate.step_event("short", 3, "short"))
    drain(app, cont)
    job = store.get("short")
    assert (job.status, job.result, job.max_steps) == (JobStatus.SUCCEEDED, 4, 10)


def test_a_step_that_finds_its_job_cancelled_lets_go_of_the_lease(app, cont, store, clock):
    runs: list[int] = []

    @app.job("cancel-me")
    def cancel_me(ctx: jobstate.StepContext) -> Any:
        runs.append(ctx.step)
        if len(runs) == 1:
            store.cancel(ctx.job_id)  # from outside, while the step runs
            return None
        return ctx.complete("resumed")

    app.start("cancel-me", None, job_id="cm")
    assert app.handler(cont.pop_all()[0], FakeLambdaContext(clock))["outcome"] == "cancelled"
    job = store.get("cm")
    assert job.status is JobStatus.CANCELLED and job.lease_owner is None
    store.resume("cm")
    # No waiting for the cancelled step's lease to run out: the job runs at once.
    report = app.handler(jobstate.step_event("cm", 0, "cancel-me"), FakeLambdaContext(clock))
    assert report["outcome"] == "completed" and runs == [0, 0]


def test_step_guards_and_listing_reject_bad_values_before_writing(store):
    for bad in (float("inf"), float("nan"), 0, -1, True, "60"):
        with pytest.raises(jobstate.InvalidInput):
            jobstate.Limits(deadline_s=bad)
    for bad in (0, True, 2.5):
        with pytest.raises(jobstate.InvalidInput):
            jobstate.Limits(max_steps=bad)
    with pytest.raises(jobstate.InvalidInput, match="status must be one of"):
        store.list(status="BOGUS")
    page = store.list()
    assert len(page) == 0 and list(page) == []


def test_an_error_message_quoting_a_token_is_scrubbed_before_it_is_stored(app, cont, store,
                                                                           clock):
    token = "tok-7e1f-SECRET-run"

    @app.job("leaky", retry=jobstate.RetryPolicy(max_attempts=1))
    def leaky(ctx: jobstate.StepContext) -> Any:
        ctx.tokens["run"] = token
        raise ConnectionError(f"GET https://etl.example/jobs/{token}: connection reset")

    app.start("leaky", None, job_id="leaky")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get("leaky")
    assert job.status is JobStatus.FAILED
    assert token not in (job.error or "") and "***redacted***" in (job.error or "")
    assert "connection reset" in (job.error or "")


def test_a_start_request_delivered_twice_starts_one_job(app, cont, store, clock):
    @app.job("import")
    def imp(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.input["file"])

    event = {"jobstate": {"start": {"job_type": "import", "input": {"file": "a.csv"}}}}
    ctx = FakeLambdaContext(clock)  # Lambda's duplicate carries the same request id
    first = app.handler(event, ctx)["job_id"]
    again = app.handler(event, ctx)["job_id"]
    other = app.handler({"jobstate": {"start": {"job_type": "import",
                                                "input": {"file": "b.csv"}}}}, ctx)["job_id"]
    assert first == again != other
    drain(app, cont)
    assert [j.job_id for j in store.iter_jobs("import")].count(first) == 1
    assert store.get(first).result == "a.csv" and store.get(other).result == "b.csv"


@pytest.mark.parametrize("ends", ["commit", "finish"])
def test_a_resent_commit_whose_first_attempt_applied_is_not_lease_lost(app, cont, store,
                                                                       ends):
    from conftest import LostResponse

    @app.job("two")
    def two(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0 and ends == "commit":
            ctx.cursor["n"] = 1
            return None
        return ctx.complete(ctx.cursor.get("n", 0))

    app.start("two", None, job_id="two-1")
    step0 = cont.pop_all()
    with LostResponse(store, "update_item", times=2) as lost:  # the claim, then the commit
        report = app.handler(step0[0], None)
    assert lost.replayed == 2
    assert report["outcome"] == ("committed" if ends == "commit" else "completed")
    drain(app, cont)
    assert store.get("two-1").status is JobStatus.SUCCEEDED
