"""Batch mailer (job types `batch-mailer` and `batch-mailer-chain`): one personalised
email to each of users 1..N, sent by K worker chains, with a summary after the join.

This is the seed scenario of a CloudWatch-scheduled batch "engine" of two Lambdas
(a worker creator and self-invoking workers) whose authors warn about retries sending
the same email three times and about runaway chains. Here:

- the parent (`batch-mailer`) splits [0, N) into K ranges with `ctx.spawn_chains` (child
  ids are deterministic, so a re-run spawn creates nothing new) and waits;
- each chain (`batch-mailer-chain`) mails its range in batches while `ctx.has_time()`,
  with `ctx.once_batch` (one effect key per user: `user-<id>`), and commits its cursor;
  a user rejected for good (bad address) is recorded as failed, not retried;
- the last chain to finish resumes the parent, which writes the summary (sent count,
  failed users, failed chains) as its result and, if `report_to` is given, mails it once.

A crash between the mail call and its DONE record leaves the outcome unknown. With a
mailer that can be asked whether a message went out (`lookup(key)`, e.g. a provider with
idempotency keys, or `FakeMailer`), `reconcile` settles it. SES cannot be asked: the
chain is parked (FAILED, `EffectOutcomeUnknown`) for an operator to settle with
`jobstate effect done/retry` and `jobstate resume` (docs/operations.md); the other
chains carry on (`on_child_failure="continue"`) and the summary names the parked chain.

Start a campaign by invoking the function with
`{"jobstate": {"start": {"job_type": "batch-mailer", "job_id": "weekly-2025-06",
"input": {"users": 100000, "chains": 10, "campaign": "weekly"}}}}`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import jobstate
from handlers import NoTimeForABatch

PARENT = "batch-mailer"
CHAIN = "batch-mailer-chain"
DEFAULT_BATCH = 100


@dataclass(frozen=True)
class User:
    id: int
    email: str
    name: str
    plan: str


class UserDirectory(Protocol):
    def get_many(self, ids: list[int]) -> Mapping[int, User]: ...


class Mailer(Protocol):
    def send(self, to: str, subject: str, body: str, *, key: str) -> str: ...


class MailRejected(Exception):
    """The provider refused this one message for good (bad address, suppressed, ...)."""


# SES v2 errors that mean the request was refused before anything was sent, and not
# because of this one recipient (throttling, a paused or misconfigured account): the
# chain's retry may send again; recording each user as rejected would be wrong.
SES_NOT_SENT = frozenset({"TooManyRequestsException", "LimitExceededException",
                          "SendingPausedException", "AccountSuspendedException",
                          "MailFromDomainNotVerifiedException", "NotFoundException",
                          "BadRequestException"})


def plausible_address(address: str) -> bool:
    """A cheap local check, so a malformed address is one user's rejection rather than
    a BadRequestException that says nothing about which of them was wrong."""
    local, at, domain = address.rpartition("@")
    return bool(at and local and "." in domain and not any(c.isspace() for c in address))


class SyntheticUserDirectory:
    """Users 1..N made up from their id — replace with your user store.

    Addresses are on the SES mailbox simulator (`success+user<id>@simulator.amazonses.com`),
    so a deployed stack can run a campaign without mailing anyone.
    """

    PLANS = ("free", "pro", "team")

    def __init__(self) -> None:
        self.lookups = 0

    def get_many(self, ids: list[int]) -> dict[int, User]:
        self.lookups += 1
        return {i: User(i, f"success+user{i}@simulator.amazonses.com", f"User {i}",
                        self.PLANS[i % len(self.PLANS)]) for i in ids}


class SesMailer:
    """Amazon SES v2 `SendEmail` from the identity `SENDER_IDENTITY_ARN`."""

    def __init__(self, identity_arn: str | None = None, *, sender: str | None = None,
                 client: Any = None) -> None:
        self.identity_arn = identity_arn or os.environ.get("SENDER_IDENTITY_ARN", "")
        if not self.identity_arn:
            raise ValueError("SesMailer needs SENDER_IDENTITY_ARN (the template sets it).")
        identity = self.identity_arn.rsplit("identity/", 1)[-1]
        self.sender = sender or os.environ.get("SENDER_EMAIL") or (
            identity if "@" in identity else f"no-reply@{identity}")
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # lazily: nothing connects at import time

            self._client = boto3.client("sesv2")
        return self._client

    def send(self, to: str, subject: str, body: str, *, key: str) -> str:
        from botocore.exceptions import ClientError

        if not plausible_address(to):
            raise MailRejected(f"not an email address: {to!r:.80}")
        try:
            resp = self.client.send_email(
                FromEmailAddress=self.sender,
                FromEmailAddressIdentityArn=self.identity_arn,
                Destination={"ToAddresses": [to]},
                Content={"Simple": {"Subject": {"Data": subject},
                                    "Body": {"Text": {"Data": body}}}},
                EmailTags=[{"Name": "jobstate_key",
                            "Value": "".join(c if c.isalnum() or c in "_-." else "_"
                                             for c in key)[:256]}],
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "MessageRejected":
                raise MailRejected(exc.response["Error"].get("Message", "rejected")) from None
            if code in SES_NOT_SENT:
                raise jobstate.EffectNotDone(f"SES refused the request ({code}); nothing was "
                                             "sent") from exc
            raise  # a 5xx or a timeout: it may have been sent (the chain parks)
        return str(resp["MessageId"])


class FakeMailer:
    """Keeps every message sent (the independent sink). `lookup(key)` models a provider
    that can be asked whether a message with this idempotency key went out."""

    def __init__(self, *, reject: set[str] | None = None, on_send: Any = None) -> None:
        self.outbox: list[dict[str, str]] = []
        self.reject = set(reject or ())
        self.on_send = on_send

    def send(self, to: str, subject: str, body: str, *, key: str) -> str:
        if self.on_send is not None:
            self.on_send(to)
        if to in self.reject:
            raise MailRejected(f"{to} is on the suppression list")
        self.outbox.append({"to": to, "subject": subject, "body": body, "key": key})
        return f"m-{len(self.outbox)}"

    def lookup(self, key: str) -> str | None:
        for i, m in enumerate(self.outbox):
            if m["key"] == key:
                return f"m-{i + 1}"
        return None


def personalise(user: User, campaign: str) -> tuple[str, str]:
    subject = f"{campaign}: your update, {user.name}"
    body = (f"Hello {user.name},\n\nhere is your {campaign} update for your "
            f"{user.plan} plan.\n")
    return subject, body


@functools.cache
def _default_mailer() -> Mailer:
    return SesMailer()


class BatchMailer:
    """The `batch-mailer` App (parent and chain types); directory and mailer injectable."""

    def __init__(
        self,
        store: jobstate.JobStore | None = None,
        continuation: jobstate.Continuation | None = None,
        *,
        directory: UserDirectory | None = None,
        mailer: Mailer | None = None,
        **app_options: Any,
    ) -> None:
        self.app = jobstate.App(store or jobstate.JobStore(), continuation, **app_options)
        self.directory: UserDirectory = directory or SyntheticUserDirectory()
        self._mailer = mailer
        self.app.job(PARENT, max_steps=100, deadline=24 * 3600)(self.campaign)
        self.app.job(CHAIN, max_steps=10_000, deadline=24 * 3600)(self.chain)
        self.handler = self.app.handler

    @property
    def mailer(self) -> Mailer:
        return self._mailer or _default_mailer()

    # -- parent ---------------------------------------------------------------------------

    def campaign(self, ctx: jobstate.StepContext) -> Any:
        inp = ctx.input
        users, chains = int(inp["users"]), int(inp.get("chains", 5))
        name = str(inp.get("campaign", ctx.job_id))
        if "spawned" not in ctx.cursor:
            if users < 1 or chains < 1:
                return ctx.fail(f"users and chains must be >= 1 (got {users}, {chains})")
            ctx.cursor["spawned"] = True
            ctx.progress(0, users, "users")
            ctx.spawn_chains(CHAIN, total=users, chains=chains,
                             extra={"campaign": name, "run": ctx.job_id,
                                    "batch": int(inp.get("batch", DEFAULT_BATCH))},
                             max_concurrency=inp.get("max_concurrency"),
                             on_child_failure="continue")
        finished = ctx.children()
        ok = [c for c in finished if c.status is jobstate.JobStatus.SUCCEEDED]
        sent = sum(int(c.result["sent"]) for c in ok)
        failed_users = sorted(u for c in ok for u in c.result["failed_users"])
        summary: dict[str, Any] = {
            "campaign": name,
            "users": users,
            "chains": len(finished),
            "sent": sent,
            "failed_users": failed_users,
            "failed_chains": [{"job_id": c.child_id, "status": c.status.value,
                               "error": (c.error or "")[:300]}
                              for c in finished if c not in ok],
        }
        ctx.progress(sent + len(failed_users), users, "users")
        report_to = str(inp.get("report_to") or "")
        if report_to:
            text = "\n".join(f"{k}: {v}" for k, v in summary.items())
            subject = f"{name}: {sent} of {users} sent"
            ctx.once("summary-mail", lambda: self.mailer.send(
                report_to, subject, text, key=f"{ctx.job_id}/summary"))
        return ctx.complete(summary)

    # -- worker chain ---------------------------------------------------------------------

    def chain(self, ctx: jobstate.StepContext) -> Any:
        start, end = int(ctx.input["start"]), int(ctx.input["end"])  # users start+1 .. end
        campaign, size = ctx.input["campaign"], int(ctx.input.get("batch", DEFAULT_BATCH))
        nxt = int(ctx.cursor.get("next", start))
        mailer = self.mailer
        lookup = getattr(mailer, "lookup", None)

        run = str(ctx.input.get("run") or ctx.job.parent_id or campaign)

        def mail_key(uid: int) -> str:
            # Unique per campaign *job*: next month's run of the same campaign name must not
            # meet this month's keys at a provider that de-duplicates by them.
            return f"{run}/{uid}"

        def send_one(user: User) -> Any:
            subject, body = personalise(user, campaign)
            try:
                return mailer.send(user.email, subject, body, key=mail_key(user.id))
            except MailRejected as exc:  # final for this user: record it, do not retry
                return {"rejected": str(exc)[:200]}

        reconcile = None
        if callable(lookup):
            def reconcile(user: User) -> Any:
                return lookup(mail_key(user.id)) or jobstate.NOT_DONE

        first = nxt
        while nxt < end and ctx.has_time():
            ids = list(range(nxt + 1, min(nxt + size, end) + 1))
            users = self.directory.get_many(ids)
            results = ctx.once_batch({f"user-{u}": (users[u],) for u in ids}, send_one,
                                     reconcile=reconcile)
            rejected = [int(k[5:]) for k, v in results.items() if isinstance(v, dict)]
            ctx.cursor["rejected"] = sorted(set(ctx.cursor.get("rejected", [])) | set(rejected))
            nxt = ids[-1]
            ctx.cursor["next"] = nxt
            ctx.progress(nxt - start, end - start, "users")
        if nxt == first < end:
            raise NoTimeForABatch(ctx.remaining_ms())  # never commit a step without progress
        if nxt < end:
            return None
        failed = ctx.cursor.get("rejected", [])
        return ctx.complete({"first_user": start + 1, "last_user": end,
                             "sent": end - start - len(failed), "failed_users": failed})


mailer_app = BatchMailer()
app = mailer_app.app
handler = mailer_app.handler
