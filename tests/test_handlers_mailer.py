"""handlers.batch_mailer: exactly one email per user via K chains and a join, under chaos.

The independent sink is FakeMailer.outbox: every message the "provider" accepted.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aws_sinks import LambdaSink, Sink
from iam_coverage import covers, enforcing

import jobstate
from handlers import batch_mailer as bm
from jobstate.testing import Crash, Driver, FakeLambdaContext

# The template must allow every AWS call this handler makes (tests/iam_coverage.py).
iam = covers("BatchMailerFunction")

N, K = 500, 5


@pytest.fixture(autouse=True)
def fast_moto_transactions() -> None:
    # moto deep-copies every table on each TransactWriteItems (seconds per call once the
    # 500 effect items exist); the local runtime's fix checks conditions first and backs
    # up only the touched items (same results; installed by every LocalRuntime anyway).
    from jobstate.local import motofix

    motofix.install()


def email(uid: int) -> str:
    return f"success+user{uid}@simulator.amazonses.com"


def make(store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
         clock: jobstate.ManualClock, mailer: Any = None) -> tuple[bm.BatchMailer, Any]:
    # Each send takes 1 s of (manual) time: a chain of 100 users in batches of 50 needs
    # two 60 s invocations. (Few, large batches: moto copies the whole table on every
    # transaction, and once_batch makes two per batch.)
    mailer = mailer or bm.FakeMailer(on_send=lambda to: clock.advance(1.0))
    return bm.BatchMailer(store, cont, mailer=mailer), mailer


def start(app: jobstate.App, job_id: str = "weekly-1", users: int = N, chains: int = K,
          **extra: Any) -> str:
    return app.start(bm.PARENT, {"users": users, "chains": chains, "campaign": "weekly",
                                 "batch": 50, **extra}, job_id=job_id)


@pytest.mark.parametrize("seed", [21, 23, 27])
def test_one_email_per_user_under_chaos(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, seed: int,
) -> None:
    mailer_app, mailer = make(jobstate_store, jobstate_continuation, jobstate_clock)
    job_id = start(mailer_app.app)
    driver = Driver(mailer_app.app, jobstate_continuation, jobstate_clock, seed=seed,
                    duplicates=0.3, crashes=0.3, lost=0.1)
    driver.run_until_done(calm_after=40)
    sent = Counter(m["to"] for m in mailer.outbox)
    assert set(sent) == {email(u) for u in range(1, N + 1)}
    assert max(sent.values()) == 1, [to for to, n in sent.items() if n > 1][:5]
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.SUCCEEDED, job.error
    assert job.result == {"campaign": "weekly", "users": N, "chains": K, "sent": N,
                          "failed_users": [], "failed_chains": []}
    assert driver.stats.crashes > 0 and driver.stats.duplicates > 0 and driver.stats.lost > 0
    # Personalised: the body names the user and their plan.
    m = next(m for m in mailer.outbox if m["to"] == email(42))
    assert m["subject"] == "weekly: your update, User 42" and "free plan" in m["body"]
    # Progress rolls up from the chains' own items.
    assert jobstate.rollup(jobstate_store, job) == jobstate.Progress(N, N, "users")


def test_rejected_users_are_reported_not_retried(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    mailer = bm.FakeMailer(reject={email(7), email(133)})
    mailer_app, _ = make(jobstate_store, jobstate_continuation, jobstate_clock, mailer)
    job_id = start(mailer_app.app, users=200, chains=2, report_to="ops@example.com")
    Driver(mailer_app.app, jobstate_continuation, jobstate_clock, seed=2,
           duplicates=0.3).run_until_done()
    result = jobstate_store.get(job_id).result
    assert result["sent"] == 198 and result["failed_users"] == [7, 133]
    assert len(mailer.outbox) == 198 + 1  # + the summary, mailed once
    assert mailer.outbox[-1]["to"] == "ops@example.com"
    assert mailer.outbox[-1]["subject"] == "weekly: 198 of 200 sent"


class NoLookupMailer(bm.FakeMailer):
    """Like SES: cannot be asked whether a message went out. Its container dies right
    after user 130's message was accepted (before jobstate recorded it)."""

    lookup = None  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.killed = False

    def send(self, to: str, subject: str, body: str, *, key: str) -> str:
        message_id = super().send(to, subject, body, key=key)
        if key == "weekly-1/130" and not self.killed:  # keys are <campaign job id>/<user>
            self.killed = True
            raise Crash("container killed after the provider accepted the message")
        return message_id


def test_unknown_outcome_parks_one_chain_and_an_operator_settles_it(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    mailer = NoLookupMailer()
    mailer_app, _ = make(jobstate_store, jobstate_continuation, jobstate_clock, mailer)
    job_id = start(mailer_app.app, users=200, chains=2)
    driver = Driver(mailer_app.app, jobstate_continuation, jobstate_clock)
    driver.run_until_done()
    assert mailer.killed
    killed = [j.job_id for j in jobstate_store.iter_jobs(bm.CHAIN, "FAILED")]
    [chain_id] = killed
    chain = jobstate_store.get(chain_id)
    assert chain.status is jobstate.JobStatus.FAILED
    assert "ended without recording an outcome" in (chain.error or "")
    summary = jobstate_store.get(job_id).result
    assert [c["job_id"] for c in summary["failed_chains"]] == [chain_id]
    assert summary["sent"] == 100  # the other chain finished

    # The runbook: look at each STARTED effect in the external system, settle, resume.
    outbox_keys = {m["key"]: f"m-{i + 1}" for i, m in enumerate(mailer.outbox)}
    unknown = [e for e in jobstate.list_effects(jobstate_store, chain_id)
               if e["state"] == "STARTED"]
    assert unknown
    for e in unknown:
        key = f"{job_id}/{e['key'].removeprefix('user-')}"
        if key in outbox_keys:
            jobstate.mark_effect(jobstate_store, chain_id, e["key"], done=True,
                                 result=outbox_keys[key])
        else:
            jobstate.mark_effect(jobstate_store, chain_id, e["key"], done=False)
    jobstate_store.resume(chain_id)
    driver.run_until_done()
    assert jobstate_store.get(chain_id).status is jobstate.JobStatus.SUCCEEDED
    sent = Counter(m["to"] for m in mailer.outbox)
    assert len(sent) == 200 and max(sent.values()) == 1


def test_a_campaign_run_again_next_month_mails_everyone_again(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    # Same campaign name, a new job: the provider de-duplicates by key, and reconcile asks
    # by key, so June's keys must not answer for July.
    mailer_app, mailer = make(jobstate_store, jobstate_continuation, jobstate_clock)
    driver = Driver(mailer_app.app, jobstate_continuation, jobstate_clock)
    for month in ("weekly-2025-06", "weekly-2025-07"):
        start(mailer_app.app, job_id=month, users=20, chains=2)
        driver.run_until_done()
        assert jobstate_store.get(month).result["sent"] == 20
    sent = Counter(m["to"] for m in mailer.outbox)
    assert len(sent) == 20 and set(sent.values()) == {2}
    assert len({m["key"] for m in mailer.outbox}) == 40


def test_ses_refusals_are_not_per_user_rejections() -> None:
    from botocore.exceptions import ClientError

    class Ses:
        def __init__(self, code: str) -> None:
            self.code = code

        def send_email(self, **_: Any) -> Any:
            raise ClientError({"Error": {"Code": self.code, "Message": "no"}}, "SendEmail")

    arn = "arn:aws:ses:us-east-1:123456789012:identity/example.com"
    send = lambda code, to="a@example.com": bm.SesMailer(arn, client=Ses(code)).send(  # noqa: E731
        to, "s", "b", key="k")
    with pytest.raises(bm.MailRejected):
        send("MessageRejected")  # this recipient, for good
    with pytest.raises(bm.MailRejected, match="not an email address"):
        send("MessageRejected", to="not an address")
    for code in ("TooManyRequestsException", "AccountSuspendedException", "BadRequestException"):
        with pytest.raises(jobstate.EffectNotDone):  # refused before sending: retry the chain
            send(code)
    with pytest.raises(ClientError):
        send("InternalFailure")  # it may have been sent: the outcome is unknown


def test_bad_campaign_fails_before_spawning(
    jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    mailer_app, mailer = make(jobstate_store, jobstate_continuation, jobstate_clock)
    job_id = mailer_app.app.start(bm.PARENT, {"users": 0, "chains": 3})
    Driver(mailer_app.app, jobstate_continuation, jobstate_clock).run_until_done()
    job = jobstate_store.get(job_id)
    assert job.status is jobstate.JobStatus.FAILED and "users and chains" in (job.error or "")
    assert [j.job_id for j in jobstate_store.iter_jobs()] == [job_id]
    assert mailer.outbox == []


def test_ses_mailer_sender_from_identity() -> None:
    # A botocore SES v2 client answering in-process: the IAM coverage check sees the call.
    ses = Sink("sesv2", SendEmail=lambda params: {"MessageId": "ses-1"})
    arn = "arn:aws:ses:us-east-1:123456789012:identity/example.com"
    mailer = bm.SesMailer(arn, client=ses.client)
    assert mailer.send("a@b.c", "s", "b", key="weekly/1") == "ses-1"
    sent = [params for _, params in ses.calls]
    assert sent[0]["FromEmailAddress"] == "no-reply@example.com"
    assert sent[0]["FromEmailAddressIdentityArn"] == arn
    assert sent[0]["EmailTags"] == [{"Name": "jobstate_key", "Value": "weekly_1"}]


def test_a_spawn_invokes_its_own_function(
        jobstate_store: jobstate.JobStore, jobstate_clock: jobstate.ManualClock) -> None:
    """Chains start by an asynchronous Invoke of the mailer itself (the template's
    InvokeSelf grant; the IAM coverage check sees it, with the function's ARN)."""
    sink = LambdaSink()
    cont = jobstate.LambdaContinuation("stack-batch-mailer", client=sink.client)
    mailer_app, _ = make(jobstate_store, cont, jobstate_clock)  # type: ignore[arg-type]
    start(mailer_app.app, "self-1", users=10, chains=2)
    [(_, event)] = sink.invokes
    mailer_app.handler(event, FakeLambdaContext(jobstate_clock))
    assert [n for n, _ in sink.invokes] == ["stack-batch-mailer"] * 3  # start, 2 chains


def test_a_campaign_cancelled_while_it_spawns_sends_no_mail_under_the_template_role(
        jobstate_store: jobstate.JobStore, jobstate_continuation: jobstate.InMemoryContinuation,
        jobstate_clock: jobstate.ManualClock) -> None:
    """Issue 21: the mailer's role lacked dynamodb:ConditionCheckItem, so AWS refused the
    withdrawal of a cancelled spawn, and the cancelled campaign's chains ran and sent
    their mail. The step runs here under the role of template.yaml, enforced as AWS does."""
    from jobstate import faults

    mailer_app, mailer = make(jobstate_store, jobstate_continuation, jobstate_clock)
    job_id = start(mailer_app.app, "cancel-1", users=20, chains=2)

    def cancel_parent(name: str, info: dict[str, Any]) -> None:
        if name == "before_commit" and info["job_id"] == job_id:
            jobstate_store.cancel(job_id, "operator: wrong list")

    [event] = jobstate_continuation.pop_all()
    with enforcing("BatchMailerFunction") as refused, faults.installed(cancel_parent):
        report = mailer_app.handler(event, FakeLambdaContext(jobstate_clock))
    assert report["outcome"] == "cancelled"
    driver = Driver(mailer_app.app, jobstate_continuation, jobstate_clock)
    for _ in range(3):  # an hour of sweeps: nothing is left to run
        jobstate_clock.advance(1200)
        driver.sweep()
        driver.run()
    assert mailer.outbox == []
    assert [j.job_id for j in jobstate_store.iter_jobs()] == [job_id]  # chains withdrawn
    assert refused == []
