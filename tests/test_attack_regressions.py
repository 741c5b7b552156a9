"""Regressions for the defects an outside attack found (issue 21).

Each test failed before its fix. The IAM, status-API and KMS items have theirs beside
the template and handler tests.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable
from typing import Any, cast

import pytest
from botocore.exceptions import ClientError
from conftest import ClientFault, drain

import jobstate
from jobstate import JobStatus, Semantics, faults
from jobstate.effects import ENCODE_ATTEMPTS, PERSIST_ATTEMPTS
from jobstate.testing import Crash, FakeLambdaContext

pytestmark = pytest.mark.integration

THROTTLED = {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}


DONE_WRITE = "done"  # an update that writes the record DONE
TAKE_OVER = "take-over"  # an update that hands a STARTED record to a new owner (runs + 1)


def _effect_write(op: str, kind: str = "") -> Callable[[str, dict[str, Any]], bool]:
    """Picks `op` requests on effect records (an `update_item` of that `kind`)."""
    def pick(name: str, kw: dict[str, Any]) -> bool:
        key = (kw.get("Key") or kw.get("Item") or {}).get("sk", {}).get("S", "")
        if name != op or not key.startswith("FX#"):
            return False
        if kind == DONE_WRITE:
            return {"S": "DONE"} in kw.get("ExpressionAttributeValues", {}).values()
        if kind == TAKE_OVER:  # its runs attribute, named as it is or by a placeholder
            runs = jobstate.schema.FX.RUNS
            return (runs in kw.get("ExpressionAttributeNames", {}).values()
                    or re.search(rf"\b{runs}\b", kw.get("UpdateExpression", "")) is not None)
        return True
    return pick


class AppliedThenLost(ClientFault):
    """The request is applied, then every answer is lost (botocore's retries exhausted):
    the caller sees an error for a write that happened."""

    def _call(self, name: str, attr: Callable[..., Any], kw: dict[str, Any]) -> Any:
        if self.left <= 0 or not self.pick(name, kw):
            return attr(**kw)
        self.left -= 1
        self.fired += 1
        attr(**kw)
        raise ClientError(cast(Any, THROTTLED), "".join(w.title() for w in name.split("_")))


# -- 1. a cipher failing while an effect's result is stored ----------------------------------


class FlakyCipher:
    """Encrypts by reversing; fails the first `failures` encryptions."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def encrypt(self, text: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("KMS ThrottlingException (the key's text would go here)")
        return text[::-1]

    def cipher(self) -> jobstate.Cipher:
        return jobstate.Cipher(self.encrypt, lambda text: text[::-1])


def _result_job(app: jobstate.App, semantics: Semantics,
                reconcile: Callable[[], Any] | None, calls: list[int]) -> None:
    def charge() -> dict[str, str]:
        calls.append(1)
        return {"charge": "ch_1"}

    @app.job("pay", retry=jobstate.RetryPolicy(max_attempts=3,
                                               wait=__import__("tenacity").wait_fixed(1)))
    def pay(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("charge", charge, semantics=semantics,
                                     reconcile=reconcile))


def test_a_cipher_failing_once_on_an_effect_result_is_tried_again(make_store, clock):
    flaky = FlakyCipher(failures=1)
    store = make_store(cipher=flaky.cipher())
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)
    calls: list[int] = []
    _result_job(app, Semantics.AT_MOST_ONCE, None, calls)
    jid = app.start("pay", None, job_id="pay")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert (job.status, job.result, calls) == (JobStatus.SUCCEEDED, {"charge": "ch_1"}, [1])


@pytest.mark.parametrize("semantics", [Semantics.AT_MOST_ONCE, Semantics.AT_LEAST_ONCE])
@pytest.mark.parametrize("reconcile", [False, True])
def test_an_effect_whose_result_cannot_be_encrypted_is_never_recorded_done(
        make_store, clock, semantics, reconcile):
    # Before: DONE with result None, and the retry SUCCEEDED the job with None.
    flaky = FlakyCipher(failures=ENCODE_ATTEMPTS)
    store = make_store(cipher=flaky.cipher())
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)
    calls: list[int] = []
    _result_job(app, semantics, (lambda: {"charge": "ch_1"}) if reconcile else None, calls)
    jid = app.start("pay", None, job_id="pay")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert not (job.status is JobStatus.SUCCEEDED and job.result is None)
    if semantics is Semantics.AT_MOST_ONCE and not reconcile:
        # It happened; its result is unknown here: an operator records it.
        assert (job.status, job.error_type) == (JobStatus.FAILED, "EffectOutcomeUnknown")
        assert "result could not be stored (RuntimeError)" in (job.error or "")
        assert calls == [1]
        [fx] = jobstate.list_effects(store, jid)
        assert fx["state"] == "STARTED"
    else:
        assert (job.status, job.result) == (JobStatus.SUCCEEDED, {"charge": "ch_1"})
        assert calls == ([1] if reconcile and semantics is Semantics.AT_MOST_ONCE else [1, 1])
    assert "KMS" not in (job.error or "")  # the cipher's own text is never kept


# -- 2. state that cannot be encoded at commit ---------------------------------------------------


def test_a_cipher_failing_at_commit_is_a_failed_attempt_and_finally_fails_the_job(
        make_store, clock):
    # Before: the error escaped the handler with the lease held; nothing was recorded and
    # the sweeper re-ran the step after every lease expiry until the deadline.
    store = make_store(cipher=jobstate.Cipher(_denied, lambda text: text))
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)
    runs: list[int] = []

    @app.job("tok", retry=jobstate.RetryPolicy(max_attempts=3,
                                               wait=__import__("tenacity").wait_fixed(1)))
    def tok(ctx: jobstate.StepContext) -> Any:
        runs.append(ctx.attempt)
        ctx.tokens["etl"] = "run-123"
        return None

    jid = app.start("tok", None, job_id="tok")
    reports = drain(app, cont, FakeLambdaContext(clock))  # returns normally
    job = store.get(jid)
    assert runs == [1, 2, 3]
    assert (job.status, job.error_type, job.step, job.lease_owner) == (
        JobStatus.FAILED, "TokensUnwritable", 0, None)
    assert "could not encrypt the tokens" in (job.error or "")
    assert "AccessDenied" not in (job.error or "") or "run-123" not in (job.error or "")
    assert [r["outcome"] for r in reports][-1] == "failed"


def _denied(text: str) -> str:
    raise PermissionError("AccessDeniedException: not authorized to use key arn:...")


def test_an_int_too_large_for_json_fails_the_job_at_once_with_its_path(app, cont, store,
                                                                        clock):
    @app.job("big")
    def big(ctx: jobstate.StepContext) -> Any:
        ctx.cursor["n"] = 10 ** 5000
        return None

    jid = app.start("big", None, job_id="big")
    with pytest.raises(jobstate.StateNotSerializable, match=r"cursor\['n'\]"):
        drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    assert (job.status, job.error_type, job.lease_owner) == (
        JobStatus.FAILED, "StateNotSerializable", None)
    with pytest.raises(jobstate.StateNotSerializable, match="too large"):
        app.start("big", None, job_id="big-2", cursor={"n": -(10 ** 5000)})


# -- 4. tokens in every encoding are scrubbed ---------------------------------------------------


TOKENS = {"url": "s3cr3t/p@ss w+rd", "uni": "clé-été-ü", "num": 987654321, "short": "z9",
          "float": 1234.5}
LEAKS = [
    "GET https://api.example/x?key=s3cr3t%2Fp%40ss%20w%2Brd failed",   # quote(safe='')
    "GET https://api.example/x?key=s3cr3t%2fp%40ss+w%2brd failed",     # quote_plus, lower hex
    "redirect to /login?next=s3cr3t%252Fp%2540ss%2520w%252Brd",      # twice encoded
    'body {"t": "cl\\u00e9-\\u00e9t\\u00e9-\\u00fc"} rejected',      # JSON ensure_ascii
    "value 'cl\\xe9-\\xe9t\\xe9-\\xfc' rejected",                       # ascii()/repr
    "bytes b'cl\\xc3\\xa9-\\xc3\\xa9t\\xc3\\xa9-\\xc3\\xbc' rejected",  # UTF-8 bytes repr
    "account 987654321 is locked",                                     # a numeric token
    "amount 1234.5 is wrong",                                          # a float token
    "pin z9 expired",                                                  # a short token
]


@pytest.mark.parametrize("leak", LEAKS)
def test_a_token_in_any_encoding_is_scrubbed_from_errors_history_and_logs(
        app, cont, store, clock, caplog, leak):
    @app.job("leaky", max_attempts=1)
    def leaky(ctx: jobstate.StepContext) -> Any:
        ctx.tokens.update(TOKENS)
        ctx.checkpoint()
        raise RuntimeError(leak)

    jid = app.start("leaky", None, job_id="leaky")
    with caplog.at_level(logging.INFO, logger="jobstate"):
        drain(app, cont, FakeLambdaContext(clock))
    job = store.get(jid)
    texts = [job.error or "", json.dumps(job.to_dict()), caplog.text,
             *(h.detail or "" for h in store.history(jid))]
    assert jobstate.codec.REDACTED in (job.error or "")
    secrets = ["s3cr3t", "p%40ss", "%40ss", "cl\\u00e9", "\\xe9t", "\\xc3\\xa9t",
               "987654321", "1234.5", " z9 "]
    for text in texts:
        for secret in secrets:
            assert secret not in text, (secret, text)


def test_short_tokens_are_scrubbed_only_as_whole_words():
    scrub = jobstate.codec.scrub
    assert scrub("token ok, ok", {"t": "ok"}) == "token ***redacted***, ***redacted***"
    assert scrub("step 42 of 420", {"n": 42}) == "step ***redacted*** of 420"
    assert scrub("nothing", {}, None, {"a": None, "b": True}) == "nothing"


# -- 6. clock skew: an at-most-once call in flight is not reconciled away -------------------------


class SkewedClock:
    def __init__(self, base: jobstate.ManualClock, skew_s: float) -> None:
        self.base, self.skew_ms = base, int(skew_s * 1000)

    def now_ms(self) -> int:
        return self.base.now_ms() + self.skew_ms

    def sleep(self, seconds: float) -> None:
        self.base.sleep(seconds)


@pytest.mark.parametrize(("guard_s", "runs"), [(30.0, 1), (0.0, 2)])
def test_a_host_whose_clock_runs_ahead_does_not_repeat_an_effect_in_flight(
        store, clock, guard_s, runs):
    """Host A's at-most-once call is in flight in its last second; host B, 12 s ahead
    (beyond the 5 s lease grace), takes the step over. B must not trust reconcile (A's
    call has not landed yet) until A's lease plus the guard is over by B's clock: the
    effect runs twice only when the skew exceeds lease_grace_s + reconcile_guard_s."""
    cont = jobstate.InMemoryContinuation()
    store_b = jobstate.JobStore(store.table_name, endpoint_url=store.endpoint_url,
                                region="us-east-1", client=store.client,
                                clock=SkewedClock(clock, 12.0))
    host_a = jobstate.App(store, cont, reconcile_guard_s=guard_s)
    host_b = jobstate.App(store_b, cont, reconcile_guard_s=guard_s)
    landed: list[str] = []  # what the far side has processed
    nested: list[dict[str, Any]] = []

    def send(who: str) -> str:
        if who == "a" and not nested:
            clock.advance(59)  # A's call is slow; A is in its last second
            nested.append(host_b.handler(jobstate.step_event("skew", 0, "skew"),
                                         FakeLambdaContext(clock, timeout_ms=5_000)))
        landed.append(who)
        return f"sent-by-{who}"

    def reconcile(who: str) -> Any:
        return f"sent-by-{landed[0]}" if landed else jobstate.NOT_DONE

    for app, who in ((host_a, "a"), (host_b, "b")):
        @app.job("skew")
        def step(ctx: jobstate.StepContext, who: str = who) -> Any:
            return ctx.complete(ctx.once("mail", send, who, reconcile=reconcile))

    host_a.start("skew", job_id="skew")
    host_a.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    clock.advance(120)
    drain(host_b, cont, FakeLambdaContext(clock))
    jobstate.sweep(store, cont)
    drain(host_b, cont, FakeLambdaContext(clock))
    assert len(landed) == runs
    if runs == 1:
        assert nested[0]["outcome"] == "deferred"
        assert store.get("skew").status is JobStatus.SUCCEEDED


# -- 7. a lost response on the effect take-over --------------------------------------------------


def test_a_resent_effect_take_over_that_was_applied_is_not_lease_lost(app, cont, store, clock):
    runs: list[int] = []

    @app.job("alo")
    def alo(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("k", lambda: runs.append(1) or len(runs),
                                     semantics=Semantics.AT_LEAST_ONCE))

    app.start("alo", None, job_id="alo")

    def die(name: str, info: dict[str, Any]) -> None:
        if name == "effect_started":
            raise Crash(name)

    with faults.installed(die), pytest.raises(Crash):
        app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    clock.advance(3600)  # the dead invocation's lease is long over
    jobstate.sweep(store, cont)
    with ClientFault(store, _effect_write("update_item", TAKE_OVER)) as f:  # the take-over
        reports = drain(app, cont, FakeLambdaContext(clock))
    assert f.fired == 1
    assert [r["outcome"] for r in reports] == ["completed"]
    assert store.get("alo").status is JobStatus.SUCCEEDED


# -- 8. a short DynamoDB outage does not park an effect that never ran --------------------------


def _amo_job(app: jobstate.App, fn: Callable[[], Any]) -> None:
    @app.job("amo", retry=jobstate.RetryPolicy(max_attempts=3,
                                               wait=__import__("tenacity").wait_fixed(1)))
    def amo(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("mail", fn))


def test_an_effect_whose_started_put_answer_was_lost_is_not_parked(app, cont, store, clock):
    sent: list[int] = []
    _amo_job(app, lambda: sent.append(1) or "sent")
    app.start("amo", None, job_id="amo")
    with AppliedThenLost(store, _effect_write("put_item")) as f:
        drain(app, cont, FakeLambdaContext(clock))
    job = store.get("amo")
    assert f.fired == 1
    assert (job.status, job.result, sent) == (JobStatus.SUCCEEDED, "sent", [1])


def test_a_done_write_through_a_short_outage_is_recorded(app, cont, store, clock):
    sent: list[int] = []
    _amo_job(app, lambda: sent.append(1) or "sent")
    app.start("amo", None, job_id="amo")
    with ClientFault(store, _effect_write("update_item", DONE_WRITE), times=PERSIST_ATTEMPTS - 1,
                     error=THROTTLED) as f:
        drain(app, cont, FakeLambdaContext(clock))
    job = store.get("amo")
    assert f.fired == PERSIST_ATTEMPTS - 1
    assert (job.status, job.result, sent) == (JobStatus.SUCCEEDED, "sent", [1])


def test_effect_not_done_survives_a_short_outage_while_it_is_forgotten(app, cont, store, clock):
    tries: list[int] = []

    def refused_then_sent() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise jobstate.EffectNotDone("refused before sending")
        return "sent"

    _amo_job(app, refused_then_sent)
    app.start("amo", None, job_id="amo")
    with ClientFault(store, _effect_write("delete_item"), times=2, error=THROTTLED) as f:
        drain(app, cont, FakeLambdaContext(clock))
    assert f.fired == 2
    job = store.get("amo")
    assert (job.status, job.result, len(tries)) == (JobStatus.SUCCEEDED, "sent", 2)


def test_an_outage_too_long_to_ride_out_says_what_happened(app, cont, store, clock):
    # The DONE write never gets through: the call happened, so the job parks, and the
    # message says the attempt ended without recording an outcome — not "it died".
    _amo_job(app, lambda: "sent")
    app.start("amo", None, job_id="amo")
    with ClientFault(store, _effect_write("update_item", DONE_WRITE), times=1000,
                     error=THROTTLED):
        drain(app, cont, FakeLambdaContext(clock))
        clock.advance(3600)
        jobstate.sweep(store, cont)
        drain(app, cont, FakeLambdaContext(clock))
    job = store.get("amo")
    assert (job.status, job.error_type) == (JobStatus.FAILED, "EffectOutcomeUnknown")
    assert "ended without recording an outcome" in (job.error or "")
    assert "DynamoDB failed its writes" in (job.error or "")


# -- 9. an event naming another registered type, or leaving ancestors out, meets the pause ------


def test_an_event_naming_another_registered_type_is_refused_and_writes_nothing(app, cont,
                                                                               store, clock):
    ran: list[str] = []
    for name in ("held", "free"):
        app.job(name)(lambda ctx, name=name: ran.append(name) or ctx.complete())
    store.set_paused("held", True)
    app.create("held", None, job_id="h1")
    before = store.get("h1")
    forged = jobstate.step_event("h1", 0, "free")
    with pytest.raises(jobstate.InvalidEvent, match="is of type 'held'"):
        app.handler(forged, FakeLambdaContext(clock))
    assert ran == []
    assert store.get("h1").to_dict() == before.to_dict()


def test_an_event_without_its_ancestors_meets_an_ancestor_pause(app, cont, store, clock):
    ran: list[int] = []

    @app.job("parent")
    def parent(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn("child", [1])
        return ctx.complete()

    @app.job("child")
    def child(ctx: jobstate.StepContext) -> Any:
        ran.append(1)
        return ctx.complete()

    app.start("parent", None, job_id="p")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))  # spawns; events dropped
    [child_event] = cont.pop_all()
    store.set_paused("parent", True)
    bare = jobstate.step_event(child_event["jobstate"]["job_id"], 0, "child")  # no ancestors
    report = app.handler(bare, FakeLambdaContext(clock))
    assert report["outcome"] == "paused" and ran == []
    assert store.get(child_event["jobstate"]["job_id"]).lease_owner is None


# -- 11. a backlog is not flooded with re-dispatches, nor blamed on the recursion limit ----------


def test_redispatch_backs_off_per_step_and_chain_cut_is_only_for_deep_chains(
        app, cont, store, clock, caplog):
    @app.job("slow")
    def slow(ctx: jobstate.StepContext) -> Any:
        return None if ctx.step < 1 else ctx.complete()

    app.start("slow", None, job_id="slow")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))  # commits step 1
    cont.pop_all()  # its continuation is stuck in a backlog
    sends = []
    with caplog.at_level(logging.WARNING, logger="jobstate"):
        for second in range(0, 2000, 10):
            clock.advance(10)
            jobstate.sweep(store, cont)
            if cont.pop_all():
                sends.append(second + 10)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert sends[0] == 120 and gaps[:3] == [120, 240, 480]  # doubling, not every 120 s
    assert "chain_cut" not in caplog.text  # hop 2: not the recursion limit


def test_a_continuation_lost_past_the_recursion_limit_is_named(app, cont, store, clock,
                                                                caplog):
    @app.job("deep")
    def deep(ctx: jobstate.StepContext) -> Any:
        return None if ctx.step < 3 else ctx.complete()

    app.start("deep", None, job_id="deep")
    event = cont.pop_all()[0]
    event["jobstate"]["hop"] = 16  # the 16th invocation of one chain
    app.handler(event, FakeLambdaContext(clock))
    [lost] = cont.pop_all()
    assert lost["jobstate"]["hop"] == 17
    clock.advance(121)
    with caplog.at_level(logging.WARNING, logger="jobstate"):
        jobstate.sweep(store, cont)
    assert "chain_cut" in caplog.text and "invocation 17" in caplog.text
    [again] = cont.pop_all()
    assert again["jobstate"]["hop"] == 1  # the sweeper starts a new chain


# -- 12. a raising hook never changes the job ------------------------------------------------------


def test_a_hook_that_raises_is_logged_and_the_step_still_runs(app, cont, store, clock, caplog):
    @app.job("hooked")
    def hooked(ctx: jobstate.StepContext) -> Any:
        return ctx.complete("done")

    def bad_hook(outcome: str, report: dict[str, Any]) -> None:
        raise ValueError(f"hook broke on {outcome}")

    app.hooks.append(bad_hook)
    app.start("hooked", None, job_id="hooked")
    with caplog.at_level(logging.WARNING, logger="jobstate"):
        reports = drain(app, cont, FakeLambdaContext(clock))
    assert [r["outcome"] for r in reports] == ["completed"]
    job = store.get("hooked")
    assert (job.status, job.result, job.lease_owner) == (JobStatus.SUCCEEDED, "done", None)
    assert "hook_failed" in caplog.text and "bad_hook raised ValueError" in caplog.text


# -- 13. success after a failed attempt clears the error ----------------------------------------


@pytest.mark.parametrize("ends", ["commit", "complete"])
def test_a_step_that_succeeds_after_a_failed_attempt_keeps_no_old_error(app, cont, store,
                                                                        clock, ends):
    tries: list[int] = []

    @app.job("flaky", retry=jobstate.RetryPolicy(max_attempts=3,
                                                 wait=__import__("tenacity").wait_fixed(1)))
    def flaky(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            tries.append(1)
            if len(tries) == 1:
                raise TimeoutError("first try timed out")
            if ends == "complete":
                return ctx.complete("ok")
            return None
        return ctx.complete("ok")

    app.start("flaky", None, job_id="flaky")
    drain(app, cont, FakeLambdaContext(clock))
    job = store.get("flaky")
    assert (job.status, job.error, job.error_type) == (JobStatus.SUCCEEDED, None, None)
    assert any(h.event == "retry_scheduled" for h in store.history("flaky"))  # kept there
