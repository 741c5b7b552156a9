"""Effects (`ctx.once`, `ctx.once_batch`) and tokens (issue 3, items 1 and 2).

Crash points are named places in the runtime (`jobstate.faults`); a hook raising
`testing.Crash` (a BaseException) is the process dying exactly there: nothing after it
runs, and the lease it held lives on until it expires.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
from conftest import ClientFault, RequestLog, drain

import jobstate
from jobstate import JobStatus, Semantics, faults
from jobstate.effects import PERSIST_ATTEMPTS
from jobstate.items import effect_item, job_item
from jobstate.testing import Crash, Driver, FakeLambdaContext

pytestmark = pytest.mark.integration

KEY = "email:user-1"


class Mailer:
    """A fake external system that remembers what it did (so it can be asked later)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.reconciled: list[str] = []

    def send(self, to: str) -> dict[str, Any]:
        self.sent.append(to)
        return {"msg_id": f"m-{to}-{len(self.sent)}"}

    def find(self, to: str) -> Any:
        """reconcile: the result if the mail went out, else NOT_DONE."""
        self.reconciled.append(to)
        for i, who in enumerate(self.sent):
            if who == to:
                return {"msg_id": f"m-{to}-{i + 1}"}
        return jobstate.NOT_DONE


def register_mail(app: jobstate.App, mailer: Mailer, semantics: Semantics,
                  reconcile: bool) -> None:
    @app.job("mail", max_steps=20)
    def mail(ctx: jobstate.StepContext) -> Any:
        # Cursor-driven: step 0 sends and commits, the next step completes.
        if "sent" not in ctx.cursor:
            ctx.cursor["sent"] = ctx.once(KEY, mailer.send, "user-1", semantics=semantics,
                                          reconcile=mailer.find if reconcile else None)
            return None
        return ctx.complete(ctx.cursor["sent"])


def deliver_crashing(app: jobstate.App, event: dict[str, Any], clock: jobstate.ManualClock,
                     should_crash: Callable[[str, dict[str, Any]], bool]) -> dict[str, Any] | None:
    def hook(name: str, info: dict[str, Any]) -> None:
        if should_crash(name, info):
            raise Crash(name)

    try:
        with faults.installed(hook):
            return app.handler(event, FakeLambdaContext(clock))
    except Crash:
        return None


# -- crash points -------------------------------------------------------------------------

CRASH_POINTS = ["effect_started", "effect_called", "before_commit", "after_commit"]


@pytest.mark.parametrize("point", CRASH_POINTS)
@pytest.mark.parametrize("reconcile", [False, True])
def test_at_least_once_runs_at_least_once_and_job_finishes(app, cont, store, clock, point,
                                                           reconcile):
    mailer = Mailer()
    register_mail(app, mailer, Semantics.AT_LEAST_ONCE, reconcile)
    jid = app.start("mail", None, job_id="mail-alo")
    d = Driver(app, cont, clock)
    assert d.deliver(cont.pop_all()[0], crash_at=point) is None  # the container died there
    d.run_until_done([jid])

    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED
    assert len(mailer.sent) >= 1
    # Re-run only when the outcome was really unknown (the DONE record was not written).
    expected = {"effect_started": 1, "effect_called": 2, "before_commit": 1, "after_commit": 1}
    assert len(mailer.sent) == expected[point]
    assert mailer.reconciled == []  # at-least-once never needs to ask
    assert job.result == {"msg_id": f"m-user-1-{expected[point]}"}
    assert [e["state"] for e in jobstate.list_effects(store, jid)] == ["DONE"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_at_most_once_with_reconcile_runs_at_most_once(app, cont, store, clock, point):
    mailer = Mailer()
    register_mail(app, mailer, Semantics.AT_MOST_ONCE, reconcile=True)
    jid = app.start("mail", None, job_id="mail-amo")
    d = Driver(app, cont, clock)
    assert d.deliver(cont.pop_all()[0], crash_at=point) is None
    d.run_until_done([jid])

    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED
    assert mailer.sent == ["user-1"]  # exactly once: it was needed, and never repeated
    assert job.result == {"msg_id": "m-user-1-1"}
    if point in ("effect_started", "effect_called"):
        assert mailer.reconciled == ["user-1"]  # the outcome was unknown: it asked
    else:
        assert mailer.reconciled == []  # DONE was recorded: the cached result sufficed
    effects = jobstate.list_effects(store, jid)
    assert [(e["key"], e["state"]) for e in effects] == [(KEY, "DONE")]


@pytest.mark.parametrize("point", ["effect_started", "effect_called"])
def test_at_most_once_without_reconcile_parks_job_then_operator_settles_it(
        app, cont, store, clock, point):
    mailer = Mailer()
    register_mail(app, mailer, Semantics.AT_MOST_ONCE, reconcile=False)
    jid = app.start("mail", None, job_id="mail-park")
    d = Driver(app, cont, clock)
    assert d.deliver(cont.pop_all()[0], crash_at=point) is None
    d.run_until_done([jid])  # ends with the job parked, not looping in the sweeper

    job = store.get(jid)
    assert job.status is JobStatus.FAILED
    sent_before = len(mailer.sent)
    assert sent_before == (0 if point == "effect_started" else 1)
    msg = job.error or ""
    for needle in (KEY, jid, "jobstate effect done", "jobstate effect retry",
                   "jobstate resume"):
        assert needle in msg, (needle, msg)
    assert [e["state"] for e in jobstate.list_effects(store, jid)] == ["STARTED"]
    # Parked means parked: more sweeps dispatch nothing.
    clock.advance(3600)
    assert jobstate.sweep(store, cont).dispatched == 0
    assert cont.pop_all() == []

    # The operator checks the mail system, settles the effect and resumes the job.
    if point == "effect_called":
        jobstate.mark_effect(store, jid, KEY, done=True, result={"msg_id": "by-hand"})
    else:
        jobstate.mark_effect(store, jid, KEY, done=False)
    resumed = store.resume(jid)
    assert resumed.status is JobStatus.RUNNING
    assert jobstate.sweep(store, cont).dispatched == 1  # due now: redispatched
    drain(app, cont, FakeLambdaContext(clock))

    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED
    assert mailer.sent == ["user-1"]  # exactly once overall
    if point == "effect_called":
        assert job.result == {"msg_id": "by-hand"}
    assert mailer.reconciled == []


def test_mark_effect_refuses_an_effect_that_is_not_started(app, cont, store, clock):
    mailer = Mailer()
    register_mail(app, mailer, Semantics.AT_MOST_ONCE, reconcile=False)
    jid = app.start("mail", None, job_id="mail-done")
    drain(app, cont, FakeLambdaContext(clock))
    with pytest.raises(jobstate.InvalidInput, match="not STARTED"):
        jobstate.mark_effect(store, jid, KEY, done=False)
    with pytest.raises(jobstate.JobNotFound):
        jobstate.mark_effect(store, "no-such-job", KEY, done=True)


def test_done_effect_returns_cached_result_without_calling_fn(app, cont, store, clock):
    mailer = Mailer()
    log = RequestLog(store)
    seen: list[Any] = []
    costs: list[tuple[int, int]] = []

    @app.job("twice", max_steps=10)
    def twice(ctx: jobstate.StepContext) -> Any:
        log.reset()
        seen.append(ctx.once(KEY, mailer.send, "user-1"))
        costs.append((log.writes, log.reads))
        if ctx.step == 0:
            return None
        return ctx.complete()

    app.start("twice", None, job_id="cached")
    drain(app, cont, FakeLambdaContext(clock))
    assert mailer.sent == ["user-1"]
    assert seen == [{"msg_id": "m-user-1-1"}] * 2
    # Happy path: put STARTED + update DONE, no reads. Cached: one failed conditional put.
    assert costs == [(2, 0), (1, 0)]


@pytest.mark.parametrize("bad", ["", "x" * 513, "line\nbreak", "tab\there", "nul\x00",
                                 "\ud800", "é" * 501])
def test_invalid_effect_keys_raise_before_anything_is_written(app, cont, store, clock, bad):
    mailer = Mailer()
    log = RequestLog(store)
    caught: list[BaseException] = []

    @app.job("badkey")
    def badkey(ctx: jobstate.StepContext) -> Any:
        log.reset()
        with pytest.raises(jobstate.InvalidInput) as info:
            ctx.once(bad, mailer.send, "user-1")
        caught.append(info.value)
        with pytest.raises(jobstate.InvalidInput):
            ctx.once_batch({"ok": ("a",), bad: ("b",)}, mailer.send)
        assert log.ops == []
        return ctx.complete()

    jid = app.start("badkey", None, job_id="badkey")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert mailer.sent == []
    assert jobstate.list_effects(store, jid) == []
    assert "effect key" in str(caught[0])


def test_longest_valid_key_is_accepted(app, cont, store, clock):
    mailer = Mailer()

    @app.job("longkey")
    def longkey(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("k" * 512, mailer.send, "u"))

    jid = app.start("longkey", None, job_id="longkey")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert mailer.sent == ["u"]


def test_oversize_effect_result_is_a_clear_error(app, cont, store, clock):
    calls: list[int] = []
    errors: list[str] = []

    def big() -> str:
        calls.append(1)
        return "x" * 350_000

    @app.job("big")
    def bigjob(ctx: jobstate.StepContext) -> Any:
        try:
            ctx.once("report", big)
        except jobstate.StateTooLarge as exc:
            errors.append(str(exc))
        # The effect happened but its result is not stored: never DONE with a wrong
        # (None) result; at-most-once will not run it again, so the job parks.
        return ctx.complete(ctx.once("report", big))

    jid = app.start("big", None, job_id="big")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.FAILED and job.error_type == "EffectOutcomeUnknown"
    assert "result could not be stored (StateTooLarge)" in (job.error or "")
    assert calls == [1]
    assert len(errors) == 1
    assert "'report'" in errors[0] and "bytes" in errors[0] and "400 KB" in errors[0]
    assert [e["state"] for e in jobstate.list_effects(store, jid)] == ["STARTED"]


def _flaky_job(app: jobstate.App, name: str, fn: Any, **once: Any) -> None:
    @app.job(name, retry=jobstate.RetryPolicy(max_attempts=3,
                                              wait=__import__("tenacity").wait_fixed(1)))
    def flakyjob(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("mail", fn, **once))


def test_at_most_once_fn_raising_leaves_the_outcome_unknown(app, cont, store, clock):
    # A timeout after the far side accepted the mail raises too: at-most-once must not
    # send it again on the retry, so the job parks with the key named.
    sent: list[str] = []

    def accepted_then_timed_out() -> str:
        sent.append("mail")
        raise TimeoutError("read timed out (the message was accepted)")

    _flaky_job(app, "amo", accepted_then_timed_out)
    jid = app.start("amo", None, job_id="amo")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert sent == ["mail"]
    assert job.status is JobStatus.FAILED
    assert "'mail'" in (job.error or "") and "TimeoutError" in (job.error or "")
    [fx] = jobstate.list_effects(store, jid)
    assert (fx["state"], fx["last_error"]) == ("STARTED", "TimeoutError")


def test_at_most_once_fn_raising_effect_not_done_is_retried(app, cont, store, clock):
    attempts: list[int] = []

    def refused_then_sent() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise jobstate.EffectNotDone("smtp refused the connection: nothing was sent")
        return "sent"

    _flaky_job(app, "notdone", refused_then_sent)
    jid = app.start("notdone", None, job_id="notdone")
    drain(app, cont, FakeLambdaContext(clock))  # the short backoff is served in-process
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result == "sent"
    assert len(attempts) == 2


def test_at_most_once_fn_raising_asks_reconcile_on_the_retry(app, cont, store, clock):
    sent: list[str] = []
    asked: list[int] = []

    def accepted_then_timed_out() -> str:
        sent.append("mail")
        if len(sent) == 1:
            raise TimeoutError("read timed out")
        return "sent-again"

    def reconcile() -> Any:
        asked.append(1)
        return "msg-1" if sent else jobstate.NOT_DONE

    _flaky_job(app, "rec", accepted_then_timed_out, reconcile=reconcile)
    jid = app.start("rec", None, job_id="rec")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result == "msg-1"
    assert sent == ["mail"] and asked == [1]


def test_at_least_once_fn_raising_forgets_the_effect_so_a_retry_runs_it(app, cont, store,
                                                                         clock):
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("smtp down")
        return "sent"

    _flaky_job(app, "alo", flaky, semantics=jobstate.Semantics.AT_LEAST_ONCE)
    jid = app.start("alo", None, job_id="alo")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result == "sent"
    assert len(attempts) == 2


def test_a_put_retried_after_a_lost_response_is_our_own_and_runs_fn(app, cont, store):
    from conftest import LostResponse

    sent: list[str] = []

    @app.job("lost-put")
    def lost_put(ctx: jobstate.StepContext) -> Any:
        with LostResponse(store, "put_item") as lost:
            result = ctx.once("mail", lambda: sent.append("x") or "ok")
        assert lost.replayed == 1
        return ctx.complete(result)

    app.start("lost-put", None, job_id="lp")
    drain(app, cont)
    job = store.get("lp")
    assert (job.status, job.result, sent) == (JobStatus.SUCCEEDED, "ok", ["x"])


def test_the_same_key_nested_in_its_own_fn_is_refused(app, cont, store):
    @app.job("nested")
    def nested(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("k", lambda: ctx.once("k", lambda: 1),
                                     semantics=jobstate.Semantics.AT_LEAST_ONCE))

    app.start("nested", None, job_id="nest")
    drain(app, cont)
    job = store.get("nest")
    assert job.status is JobStatus.FAILED and "already running in this step" in job.error


# -- batches ------------------------------------------------------------------------------


def test_once_batch_costs_few_round_trips_and_is_cached(app, cont, store, clock):
    mailer = Mailer()
    log = RequestLog(store)
    costs: list[int] = []
    users = {f"mail:{i}": (f"u{i}",) for i in range(25)}

    @app.job("batch", max_steps=10)
    def batch(ctx: jobstate.StepContext) -> Any:
        log.reset()
        out = ctx.once_batch(users, mailer.send)
        costs.append(len(log.ops))
        assert list(out) == list(users)
        if ctx.step == 0:
            return None
        return ctx.complete(sorted(r["msg_id"] for r in out.values()))

    jid = app.start("batch", None, job_id="batch")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert sorted(mailer.sent) == sorted(f"u{i}" for i in range(25))
    assert len(mailer.sent) == 25  # the second run called fn 0 times
    first, second = costs
    assert first <= 5 and first / 25 <= 0.2, log.ops
    assert second <= 2


@pytest.mark.parametrize("semantics", list(Semantics))
def test_once_batch_crash_mid_batch(app, cont, store, clock, semantics):
    mailer = Mailer()
    users = {f"mail:{i}": (f"u{i}",) for i in range(10)}

    @app.job("batch")
    def batch(ctx: jobstate.StepContext) -> Any:
        out = ctx.once_batch(users, mailer.send, semantics=semantics, reconcile=mailer.find)
        return ctx.complete(len(out))

    jid = app.start("batch", None, job_id="batch-crash")
    called = [0]

    def crash_on_fifth(name: str, info: dict[str, Any]) -> bool:
        if name == "effect_called":
            called[0] += 1
            return called[0] == 5
        return False

    assert deliver_crashing(app, cont.pop_all()[0], clock, crash_on_fifth) is None
    assert len(mailer.sent) == 5
    Driver(app, cont, clock).run_until_done([jid])
    assert store.get(jid).status is JobStatus.SUCCEEDED
    counts = {u: mailer.sent.count(u) for (u,) in users.values()}
    if semantics is Semantics.AT_MOST_ONCE:
        assert set(counts.values()) == {1}
    else:
        assert min(counts.values()) >= 1
    assert {e["state"] for e in jobstate.list_effects(store, jid)} == {"DONE"}


# -- tokens -------------------------------------------------------------------------------

SECRET = "etl-run-4f1c9d-SECRET"


def test_tokens_persisted_at_checkpoint_and_commit_before_any_continuation(
        app, cont, store, clock):
    seen_mid_step: list[dict[str, Any]] = []

    @app.job("tok", max_steps=10)
    def tok(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.tokens["etl"] = SECRET
            ctx.checkpoint()
            seen_mid_step.append(store.get(ctx.job_id, secrets=True).tokens)
            ctx.tokens["etl2"] = "second"
            return None
        assert ctx.tokens == {"etl": SECRET, "etl2": "second"}
        return ctx.complete()

    jid = app.start("tok", None, job_id="tok")
    ev = cont.pop_all()[0]
    # Die right after the commit: nothing dispatched, yet the tokens are durable.
    assert deliver_crashing(app, ev, clock, lambda n, i: n == "after_commit") is None
    assert seen_mid_step == [{"etl": SECRET}]
    assert cont.pop_all() == []
    assert store.get(jid, secrets=True).tokens == {"etl": SECRET, "etl2": "second"}
    Driver(app, cont, clock).run_until_done([jid])
    assert store.get(jid).status is JobStatus.SUCCEEDED


def test_tokens_are_redacted_everywhere_they_could_be_displayed(app, cont, store, clock):
    reprs: list[str] = []

    @app.job("tok")
    def tok(ctx: jobstate.StepContext) -> Any:
        ctx.tokens["etl"] = SECRET
        reprs.append(repr(ctx))
        reprs.append(str(ctx))
        return ctx.complete()

    jid = app.start("tok", None, job_id="tok")
    drain(app, cont, FakeLambdaContext(clock))
    view = store.get(jid)
    reprs += [repr(view), str(view), str(view.to_dict()), str(view.tokens),
              repr(store.list("tok").jobs)]
    for text in reprs:
        assert SECRET not in text
    assert "etl" in reprs[0]  # keys stay visible, values do not
    assert view.to_dict()["tokens"] == {"etl": jobstate.codec.REDACTED}
    assert store.get(jid, secrets=True).tokens == {"etl": SECRET}
    assert store.get(jid, secrets=True).to_dict()["tokens"] == {"etl": jobstate.codec.REDACTED}


def _xor(text: str, key: int = 0x5A) -> bytes:
    return bytes(b ^ key for b in text.encode())


def make_cipher(calls: list[str] | None = None) -> jobstate.Cipher:
    def encrypt(text: str) -> str:
        if calls is not None:
            calls.append("encrypt")
        return base64.b64encode(_xor(text)).decode()

    def decrypt(text: str) -> str:
        if calls is not None:
            calls.append("decrypt")
        return bytes(b ^ 0x5A for b in base64.b64decode(text)).decode()

    return jobstate.Cipher(encrypt, decrypt)


def _raw_job(store: jobstate.JobStore, job_id: str) -> dict[str, Any]:
    items = store.call("scan")["Items"]
    [raw] = [i for i in items if i["pk"]["S"] == f"JOB#{job_id}" and i["sk"]["S"] == "JOB"]
    return raw


def test_cipher_makes_stored_tokens_unreadable_and_round_trips(make_store, clock):
    calls: list[str] = []
    store = make_store(cipher=make_cipher(calls))
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)
    seen: list[dict[str, Any]] = []

    @app.job("enc", max_steps=10)
    def enc(ctx: jobstate.StepContext) -> Any:
        seen.append(dict(ctx.tokens))
        if ctx.step == 0:
            ctx.tokens["etl"] = SECRET
            return None
        return ctx.complete()

    jid = app.start("enc", None, job_id="enc")
    drain(app, cont, FakeLambdaContext(clock))
    assert seen == [{}, {"etl": SECRET}]  # decrypted for the next step
    assert "encrypt" in calls and "decrypt" in calls
    raw = _raw_job(store, jid)
    stored = job_item(raw).tokens or ""
    assert SECRET not in stored and "etl" not in stored
    assert SECRET not in str(raw)
    assert store.get(jid, secrets=True).tokens == {"etl": SECRET}
    assert SECRET not in repr(store.get(jid))

    # The same table read without the cipher, or with the wrong one.
    plain = jobstate.JobStore(store.table_name, endpoint_url=store.endpoint_url,
                              region="us-east-1", clock=clock)
    with pytest.raises(jobstate.TokensUnreadable, match="cipher"):
        plain.get(jid, secrets=True)
    assert SECRET not in repr(plain.get(jid))  # redacted reads still work

    def bad_decrypt(text: str) -> str:
        raise ValueError("bad key")

    wrong = jobstate.JobStore(store.table_name, endpoint_url=store.endpoint_url,
                              region="us-east-1", clock=clock,
                              cipher=jobstate.Cipher(lambda s: s, bad_decrypt))
    with pytest.raises(jobstate.TokensUnreadable):
        wrong.get(jid, secrets=True)


def test_step_claimed_with_wrong_cipher_fails_job_clearly(make_store, clock):
    store = make_store(cipher=make_cipher())
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)

    @app.job("enc", max_steps=10)
    def enc(ctx: jobstate.StepContext) -> Any:
        if "etl" in ctx.tokens:
            return ctx.complete(ctx.tokens["etl"] == SECRET)
        ctx.tokens["etl"] = SECRET
        return None

    jid = app.start("enc", None, job_id="enc-wrong")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    [event] = cont.pop_all()

    # A deployment that lost its cipher: the step must not loop through the sweeper.
    plain = jobstate.JobStore(store.table_name, endpoint_url=store.endpoint_url,
                              region="us-east-1", clock=clock)
    app2 = jobstate.App(plain, cont)
    app2.job("enc", max_steps=10)(enc)
    report = app2.handler(event, FakeLambdaContext(clock))
    assert report["outcome"] in ("failed", "finished")
    job = plain.get(jid)
    assert job.status is JobStatus.FAILED
    assert "cipher" in (job.error or "")
    assert SECRET not in (job.error or "")
    assert cont.pop_all() == []
    # Nothing was lost: with the right cipher it is resumed and finds its tokens.
    assert store.get(jid, secrets=True).tokens == {"etl": SECRET}
    store.resume(jid)
    assert jobstate.sweep(store, cont).dispatched == 1
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert job.status is JobStatus.SUCCEEDED and job.result is True


# -- batches in chunks, encrypted results, expiry, hand settling ----------------------------


def test_once_batch_crash_leaves_at_most_one_chunk_unknown(app, cont, store, clock):
    from jobstate.effects import BATCH_CHUNK

    mailer = Mailer()
    users = {f"mail:{i}": (f"u{i}",) for i in range(3 * BATCH_CHUNK)}

    @app.job("big-batch")
    def big_batch(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(len(ctx.once_batch(users, mailer.send)))

    jid = app.start("big-batch", None, job_id="chunks")
    called = [0]

    def crash_in_second_chunk(name: str, info: dict[str, Any]) -> bool:
        if name == "effect_called":
            called[0] += 1
            return called[0] == BATCH_CHUNK + 3
        return False

    assert deliver_crashing(app, cont.pop_all()[0], clock, crash_in_second_chunk) is None
    states = {e["key"]: e["state"] for e in jobstate.list_effects(store, jid)}
    assert list(states.values()).count("DONE") == BATCH_CHUNK  # the first chunk: recorded
    assert list(states.values()).count("STARTED") == BATCH_CHUNK  # the second: unknown
    assert len(states) == 2 * BATCH_CHUNK  # the third was never started


def test_once_batch_failure_forgets_the_keys_it_did_not_run(app, cont, store, clock):
    sent: list[str] = []

    def send(to: str) -> str:
        if to == "u3":
            raise jobstate.EffectNotDone("rejected before sending")
        sent.append(to)
        return to

    @app.job("partial", retry=jobstate.RetryPolicy(max_attempts=1))
    def partial(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once_batch({f"k{i}": (f"u{i}",) for i in range(6)}, send))

    app.start("partial", None, job_id="partial")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get("partial").status is JobStatus.FAILED
    assert sent == ["u0", "u1", "u2"]
    states = {e["key"]: e["state"] for e in jobstate.list_effects(store, "partial")}
    assert states == {"k0": "DONE", "k1": "DONE", "k2": "DONE"}  # k3..k5: nothing left


def test_effect_results_are_encrypted_and_redacted_in_listings(make_store, cont, clock):
    import base64

    cipher = jobstate.Cipher(lambda t: base64.b64encode(t[::-1].encode()).decode(),
                             lambda t: base64.b64decode(t).decode()[::-1])
    store = make_store(cipher=cipher)
    app = jobstate.App(store, cont)

    @app.job("secret-result")
    def secret_result(ctx: jobstate.StepContext) -> Any:
        run = ctx.once("start", lambda: {"run_id": SECRET})
        again = ctx.once("start", lambda: {"run_id": "never"})
        return ctx.complete({"same": run == again})

    app.start("secret-result", None, job_id="enc-fx")
    drain(app, cont)
    assert store.get("enc-fx").result == {"same": True}
    raw = store.call("get_item", Key={"pk": {"S": "JOB#enc-fx"}, "sk": {"S": "FX#start"}})
    assert SECRET not in str(raw)
    [shown] = jobstate.list_effects(store, "enc-fx")
    assert shown["result"] == "***redacted***"
    [revealed] = jobstate.list_effects(store, "enc-fx", secrets=True)
    assert revealed["result"] == {"run_id": SECRET}
    plain = jobstate.JobStore(store.table_name, endpoint_url=store.endpoint_url,
                              region="us-east-1", clock=clock)
    with pytest.raises(jobstate.TokensUnreadable, match="cipher"):
        jobstate.list_effects(plain, "enc-fx", secrets=True)


def test_effect_records_expire_after_the_deadline_and_move_on_resume(app, cont, store, clock):
    @app.job("deadlined", deadline=3600, max_steps=3)
    def deadlined(ctx: jobstate.StepContext) -> Any:
        ctx.once(f"fx-{ctx.step}", lambda: 1)
        return None

    @app.job("forever", deadline=None)
    def forever(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("fx", lambda: 1))

    app.start("deadlined", None, job_id="dl")
    app.start("forever", None, job_id="nodl")
    drain(app, cont)
    job = store.get("dl")
    assert job.status is JobStatus.FAILED  # its max_steps guard
    ttl = {e["key"]: effect_item(store.call("get_item", Key={"pk": {"S": "JOB#dl"},
                                                             "sk": {"S": f"FX#{e['key']}"}})
                                 ["Item"]).expires_at for e in jobstate.list_effects(store, "dl")}
    assert set(ttl.values()) == {job.deadline_at // 1000 + store.retention_s}
    nodl = store.call("get_item", Key={"pk": {"S": "JOB#nodl"}, "sk": {"S": "FX#fx"}})["Item"]
    assert effect_item(nodl).expires_at is None  # no deadline: it outlives any retention
    clock.advance(7200)
    resumed = store.resume("dl", max_steps=10, deadline_s=30 * 86400)
    for key in ttl:
        item = store.call("get_item", Key={"pk": {"S": "JOB#dl"},
                                           "sk": {"S": f"FX#{key}"}})["Item"]
        assert effect_item(item).expires_at == resumed.deadline_at // 1000 + store.retention_s


def test_an_effect_is_not_settled_by_hand_while_a_step_holds_the_job(app, cont, store, clock):
    @app.job("busy")
    def busy(ctx: jobstate.StepContext) -> Any:
        with pytest.raises(jobstate.InvalidInput, match="holds its lease"):
            jobstate.mark_effect(store, ctx.job_id, "k", done=True)
        return ctx.complete(None)

    app.start("busy", None, job_id="busy")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get("busy").status is JobStatus.SUCCEEDED


def _is_done_write(name: str, kw: dict[str, Any]) -> bool:
    """An update of an effect record that writes it DONE."""
    return name == "update_item" and kw.get("Key", {}).get("sk", {}).get("S", "").startswith(
        "FX#") and {"S": "DONE"} in kw.get("ExpressionAttributeValues", {}).values()


def test_at_most_once_fn_is_not_rerun_in_the_same_step_when_its_done_write_failed(
        app, cont, store, clock):
    charges: list[int] = []

    @app.job("pay", max_attempts=1)
    def pay(ctx: jobstate.StepContext) -> Any:
        for _ in range(2):  # the user retries the call when the store is unavailable
            try:
                ctx.once("charge", lambda: charges.append(1) or "ch_1")
                break
            except jobstate.StoreUnavailable:
                continue
        return ctx.complete(len(charges))

    app.start("pay", None, job_id="pay-1")
    # Throttled for longer than the DONE write is retried through (a real outage).
    with ClientFault(store, _is_done_write, times=100,
                     error={"Error": {"Code": "ThrottlingException"}}) as f:
        drain(app, cont, FakeLambdaContext(clock))
    assert f.fired == PERSIST_ATTEMPTS
    assert charges == [1]  # the second `once` parked instead of charging again
    job = store.get("pay-1")
    assert job.status is JobStatus.FAILED and job.error_type == "EffectOutcomeUnknown"


def test_a_resent_done_write_that_was_applied_is_a_success(app, cont, store):
    @app.job("x")
    def x(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("e", lambda: "r"))

    app.start("x", None, job_id="x-1")
    with ClientFault(store, _is_done_write) as f:  # applied; botocore resends it
        reports = drain(app, cont)
    assert f.fired == 1
    assert [r["outcome"] for r in reports][-1] == "completed"
    assert store.get("x-1").status is JobStatus.SUCCEEDED


def test_effects_cannot_be_settled_while_a_cancelled_step_still_runs_them(app, cont, store,
                                                                          clock):
    sent: list[int] = []
    refused: list[Exception] = []

    def send() -> str:
        sent.append(1)
        if len(sent) == 1:  # meanwhile, an operator cancels the job and tries to settle
            store.cancel("m-1", "stuck")
            try:
                jobstate.mark_effect(store, "m-1", "email", done=False)
            except jobstate.InvalidInput as exc:
                refused.append(exc)
        return "msg"

    @app.job("mailer")
    def mailer(ctx: jobstate.StepContext) -> Any:
        ctx.once("email", send)
        return ctx.complete("sent")

    app.start("mailer", None, job_id="m-1")
    drain(app, cont)
    assert refused and "holds its lease" in str(refused[0])
    store.resume("m-1")
    clock.advance(1000)
    jobstate.sweep(store, cont)
    drain(app, cont)
    assert sent == [1]
    assert store.get("m-1").status is JobStatus.SUCCEEDED


def test_encoded_state_and_updates_never_show_tokens_in_a_repr(store):
    from jobstate.dynamo import Update
    from jobstate.lease import State

    state = State.encode(store, {"offset": 1}, {"api": SECRET}, {"done": 0}, job_id="j")
    upd = Update().set("tokens", state.tokens)
    assert SECRET not in repr(state) and SECRET not in repr(upd)
    assert SECRET in state.tokens  # still stored, only never displayed
