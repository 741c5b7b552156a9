"""ETL poller (job type `etl-poller`): upload a report to an external ETL API, start its
ETL job exactly once, poll it for as long as it takes, send exactly one notification.

This is the seed scenario of a 40-minute BI ingest driven from 5-minute Lambdas: the ETL
job's token must survive recursion, two reports must not share state, and the job must
be started once and announced once even when Lambda duplicates or drops invocations.

The step (re-entered from the top on every invocation; the cursor says what is done):
1. `ctx.once("upload", ...)` uploads the report (at-least-once: a re-upload after a crash
   just replaces the upload; the upload id is committed in the cursor);
2. `ctx.once("start-etl", ...)` starts the ETL job, at-most-once with a `reconcile` that
   asks the API whether a job for this upload exists (so a crash between the API call and
   the DONE record neither starts a second job nor parks the job);
   the token lives only in `ctx.tokens` (a secret: redacted everywhere) and is
   checkpointed at once;
3. `ctx.poll(...)` checks the status with exponential backoff: short waits are slept in
   the invocation, longer ones end the step WAITING and the sweeper resumes it;
4. `ctx.once("notify", ...)` sends one notification, reconciled by its idempotency key;
5. completes with a summary (never the token).

Webhook mode (input `"mode": "webhook"`, or `EtlPoller(mode="webhook")`): step 2 hands the
ETL API a callback token (`ctx.callback`, docs/callbacks.md) and step 3 waits for the ETL
service to answer it instead of polling: no invocation while the ETL job runs, and the job
goes on as soon as the service calls back (`App.complete_callback`, the status API's
`POST /callbacks/succeed`, or `jobstate callback succeed`) with `{"state": "DONE", "rows":
N}`, or fails it with the reason. The callback times out after `poll_timeout_s`.

The ETL API is a small HTTP client (`EtlClient`, base URL from `ETL_API_URL`);
`FakeEtlApi` is an in-process fake with the same methods that can also serve HTTP.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.error import HTTPError, URLError
from urllib.parse import parse_qs, quote, urlsplit
from urllib.request import Request, urlopen

import jobstate

JOB_TYPE = "etl-poller"
RUNNING, DONE, FAILED = "RUNNING", "DONE", "FAILED"
MODES = ("poll", "webhook")


class EtlError(Exception):
    """The ETL API refused a request (4xx) or answered nonsense; retrying will not help."""


class EtlUnavailable(Exception):
    """The ETL API could not be reached or answered 5xx; the step is retried."""


class EtlApi(Protocol):
    def upload(self, report: Any) -> str: ...
    def start(self, upload_id: str, callback_token: str | None = None) -> str: ...
    def find(self, upload_id: str) -> str | None: ...
    def status(self, token: str) -> dict[str, Any]: ...


class Notifier(Protocol):
    def send(self, key: str, subject: str, body: str) -> str: ...
    def delivered(self, key: str) -> str | None: ...


# -- HTTP clients ------------------------------------------------------------------------


class _Http:
    def __init__(self, base_url: str, timeout_s: float) -> None:
        if not base_url:
            raise EtlError("no API base URL: set ETL_API_URL (or pass base_url=...).")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None) -> Any:
        # Errors name the route, never the path: `/jobs/<token>` carries the ETL token.
        what = f"{method} {_route(path)}"
        data = None if body is None else json.dumps(body).encode()
        req = Request(self.base_url + path, data=data, method=method,
                      headers={"content-type": "application/json",
                               "accept": "application/json", **(headers or {})})
        try:
            with urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code >= 500 or exc.code == 429:
                raise EtlUnavailable(f"{what}: HTTP {exc.code}") from None
            raise EtlError(f"{what}: HTTP {exc.code}") from None
        except (URLError, TimeoutError, OSError) as exc:
            raise EtlUnavailable(f"{what}: {type(exc).__name__}") from None
        return json.loads(raw) if raw else None

    def required(self, method: str, path: str, body: Any = None) -> Any:
        """`request`, where 404 is an error: a route the API must have."""
        found = self.request(method, path, body)
        if found is None:
            raise EtlError(f"{method} {_route(path)}: HTTP 404 from {self.base_url}; is "
                           "ETL_API_URL the ETL API's base URL?")
        return found


def _route(path: str) -> str:
    """`/jobs/tok-123?x=1` -> `/jobs/...`: the route, without ids or query values."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    return "/" + parts[0] + ("/..." if len(parts) > 1 else "")


class EtlClient:
    """The ETL API over HTTP: POST /uploads, POST /jobs, GET /jobs?upload_id=, GET /jobs/T."""

    def __init__(self, base_url: str | None = None, *, timeout_s: float = 10.0) -> None:
        self._http = _Http(base_url or os.environ.get("ETL_API_URL", ""), timeout_s)

    def upload(self, report: Any) -> str:
        return str(self._http.required("POST", "/uploads", {"report": report})["upload_id"])

    def start(self, upload_id: str, callback_token: str | None = None) -> str:
        body = {"upload_id": upload_id}
        if callback_token is not None:  # webhook mode: the service answers it when done
            body["callback_token"] = callback_token
        return str(self._http.required("POST", "/jobs", body)["token"])

    def find(self, upload_id: str) -> str | None:
        """The token of the ETL job started for this upload, if there is one."""
        found = self._http.request("GET", f"/jobs?upload_id={quote(upload_id)}")
        jobs = (found or {}).get("jobs") or []
        return str(jobs[0]["token"]) if jobs else None

    def status(self, token: str) -> dict[str, Any]:
        found = self._http.request("GET", f"/jobs/{quote(token, safe='')}")
        if found is None or found.get("state") not in (RUNNING, DONE, FAILED):
            state = found.get("state") if isinstance(found, dict) else None
            raise EtlError(f"the ETL API does not know this job (answer: "
                           f"{'not found' if found is None else f'state {state!r:.40}'})")
        return dict(found)


class WebhookNotifier:
    """POSTs `{key, subject, body}` to a URL with an `Idempotency-Key` header.

    `delivered(key)` asks `GET <url>/<key>` (200: delivered, 404: not), which is what
    lets `ctx.once(..., reconcile=...)` settle a crash between the POST and its record.
    URL from `NOTIFY_URL`, else `<ETL_API_URL>/notifications`.
    """

    def __init__(self, url: str | None = None, *, timeout_s: float = 10.0) -> None:
        base = os.environ.get("ETL_API_URL", "").rstrip("/")
        url = url or os.environ.get("NOTIFY_URL") or (f"{base}/notifications" if base else "")
        if not url:
            raise EtlError("no notification URL: set NOTIFY_URL or ETL_API_URL.")
        self._http = _Http(url, timeout_s)

    def send(self, key: str, subject: str, body: str) -> str:
        resp = self._http.request("POST", "", {"key": key, "subject": subject, "body": body},
                                  headers={"Idempotency-Key": key})
        if resp is None:
            raise EtlError(f"POST to the notification URL answered 404; is NOTIFY_URL right? "
                           f"({self._http.base_url})")
        return str(resp["id"])

    def delivered(self, key: str) -> str | None:
        found = self._http.request("GET", "/" + quote(key, safe=""))
        return str(found["id"]) if found else None


# -- fakes for tests -------------------------------------------------------------------------


class FakeEtlApi:
    """An in-process ETL API: counts what it is asked, finishes after `complete_after` polls.

    `on_status(token, n)` runs before each status answer (tests raise from it to kill an
    invocation mid-poll). `serve()` exposes the same fake over HTTP for `EtlClient`.
    """

    def __init__(self, complete_after: int = 3, *, fail: bool = False,
                 on_status: Callable[[str, int], None] | None = None) -> None:
        self.complete_after = complete_after
        self.fail = fail
        self.on_status = on_status
        self.uploads: dict[str, Any] = {}
        self.jobs: dict[str, dict[str, Any]] = {}  # token -> {upload_id, polls}
        self.starts = 0
        self.polls = 0
        self.notifications: list[dict[str, str]] = []  # the webhook's inbox, for serve()
        self.notify_posts = 0  # every POST to the webhook, duplicates included
        self._lock = threading.Lock()

    def upload(self, report: Any) -> str:
        with self._lock:
            upload_id = f"up-{len(self.uploads) + 1}"
            self.uploads[upload_id] = report
            return upload_id

    def start(self, upload_id: str, callback_token: str | None = None) -> str:
        with self._lock:
            if upload_id not in self.uploads:
                raise EtlError(f"unknown upload {upload_id}")
            self.starts += 1
            token = f"secret-etl-token-{uuid.uuid4().hex}"
            self.jobs[token] = {"upload_id": upload_id, "polls": 0,
                                "callback": callback_token}
            return token

    def finish(self, answer: Callable[[str, dict[str, Any]], Any],
               fail: Callable[[str, str], Any] | None = None) -> int:
        """Webhook mode: the service calls back every job started with a callback token
        (`answer(callback_token, result)`, or `fail(callback_token, error)` when this fake
        fails). Returns how many it answered."""
        with self._lock:
            waiting = [(t, j) for t, j in self.jobs.items()
                       if j.get("callback") and not j.get("answered")]
            for _, job in waiting:
                job["answered"] = True
        for _, job in waiting:
            if self.fail and fail is not None:
                fail(job["callback"], "bad rows in report")
            else:
                answer(job["callback"], {"state": DONE, "rows": len(json.dumps(
                    self.uploads[job["upload_id"]]))})
        return len(waiting)

    def find(self, upload_id: str) -> str | None:
        with self._lock:
            return next((t for t, j in self.jobs.items() if j["upload_id"] == upload_id),
                        None)

    def status(self, token: str) -> dict[str, Any]:
        with self._lock:
            job = self.jobs.get(token)
            if job is None:
                raise EtlError("unknown ETL job")
            job["polls"] += 1
            self.polls += 1
            n = job["polls"]
        if self.on_status is not None:
            self.on_status(token, n)
        if n < self.complete_after:
            return {"state": RUNNING}
        if self.fail:
            return {"state": FAILED, "error": "bad rows in report"}
        return {"state": DONE, "rows": len(json.dumps(self.uploads[job["upload_id"]]))}

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run this fake as an HTTP server on 127.0.0.1; yields its base URL."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _reply(self, code: int, body: Any = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                n = int(self.headers.get("content-length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def do_POST(self) -> None:
                path, body = urlsplit(self.path).path, self._body()
                if path == "/uploads":
                    return self._reply(200, {"upload_id": fake.upload(body["report"])})
                if path == "/jobs":
                    return self._reply(200, {"token": fake.start(
                        body["upload_id"], body.get("callback_token"))})
                if path == "/notifications":
                    with fake._lock:
                        fake.notify_posts += 1
                        known = [m for m in fake.notifications if m["key"] == body["key"]]
                        if not known:  # the receiver de-duplicates by Idempotency-Key
                            fake.notifications.append({**body, "id": f"n-{body['key']}"})
                    return self._reply(200, {"id": f"n-{body['key']}"})
                return self._reply(404)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                if parts == ["jobs"]:
                    uid = parse_qs(url.query).get("upload_id", [""])[0]
                    token = fake.find(uid)
                    return self._reply(200, {"jobs": [{"token": token}] if token else []})
                if len(parts) == 2 and parts[0] == "jobs":
                    try:
                        return self._reply(200, fake.status(parts[1]))
                    except EtlError:
                        return self._reply(404)
                if len(parts) == 2 and parts[0] == "notifications":
                    from urllib.parse import unquote

                    key = unquote(parts[1])
                    hit = [m for m in fake.notifications if m["key"] == key]
                    return self._reply(200, {"id": hit[0]["id"]}) if hit else self._reply(404)
                return self._reply(404)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


class FakeNotifier:
    """Records every message sent (the independent sink); `delivered` looks a key up."""

    def __init__(self) -> None:
        self.outbox: list[dict[str, str]] = []

    def send(self, key: str, subject: str, body: str) -> str:
        self.outbox.append({"key": key, "subject": subject, "body": body})
        return f"msg-{len(self.outbox)}"

    def delivered(self, key: str) -> str | None:
        for i, m in enumerate(self.outbox):
            if m["key"] == key:
                return f"msg-{i + 1}"
        return None


# -- the app ------------------------------------------------------------------------------


class EtlPoller:
    """The `etl-poller` App; the ETL API and the notifier are injectable."""

    def __init__(
        self,
        store: jobstate.JobStore | None = None,
        continuation: jobstate.Continuation | None = None,
        *,
        api: EtlApi | None = None,
        notifier: Notifier | None = None,
        poll_interval_s: float = 30.0,
        max_poll_interval_s: float = 300.0,
        poll_timeout_s: float = 6 * 3600.0,
        mode: str = "poll",
        **app_options: Any,
    ) -> None:
        if mode not in MODES:
            raise jobstate.InvalidInput(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.app = jobstate.App(store or jobstate.JobStore(), continuation, **app_options)
        self._api = api
        self._notifier = notifier
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        # An unreachable API is retried with backoff; a refusal (EtlError) fails the job.
        retry = jobstate.RetryPolicy(max_attempts=5, retry_on=(
            EtlUnavailable, jobstate.StoreUnavailable, ConnectionError, TimeoutError))
        self.app.job(JOB_TYPE, max_steps=2_000, deadline=24 * 3600, retry=retry)(self.step)
        self.handler = self.app.handler

    @property
    def api(self) -> EtlApi:
        if self._api is None:
            self._api = EtlClient()  # lazily: ETL_API_URL is read on first use
        return self._api

    @property
    def notifier(self) -> Notifier:
        if self._notifier is None:
            self._notifier = WebhookNotifier()
        return self._notifier

    def step(self, ctx: jobstate.StepContext) -> Any:
        api, notifier = self.api, self.notifier
        if "upload_id" not in ctx.cursor:
            ctx.cursor["upload_id"] = ctx.once("upload", api.upload, ctx.input["report"],
                                               semantics=jobstate.Semantics.AT_LEAST_ONCE)
        upload_id: str = ctx.cursor["upload_id"]
        mode = ctx.input.get("mode", self.mode)
        if mode not in MODES:
            return ctx.fail(f"input mode must be one of {MODES}, got {mode!r:.40}")
        cb = (ctx.callback("etl", timeout_s=self.poll_timeout_s) if mode == "webhook"
              else None)

        if "etl" not in ctx.tokens:
            started: dict[str, str] = {}

            def start(uid: str) -> dict[str, bool]:
                started["token"] = api.start(uid, cb.token if cb else None)
                return {"started": True}  # the token is a secret: not an effect result

            def reconcile(uid: str) -> Any:
                return {"started": True} if api.find(uid) else jobstate.NOT_DONE

            ctx.once("start-etl", start, upload_id, reconcile=reconcile)
            token = started.get("token") or api.find(upload_id)
            if not token:
                raise EtlError(f"the ETL job of upload {upload_id} was started, but the API "
                               "does not list it")
            ctx.tokens["etl"] = token
            ctx.checkpoint()  # the token survives even if this invocation dies now
        token = ctx.tokens["etl"]

        if cb is not None:
            status = self._answer(cb)
        else:
            status = ctx.poll(lambda: api.status(token),
                              until=lambda s: s["state"] != RUNNING, name="etl",
                              interval_s=self.poll_interval_s,
                              max_interval_s=self.max_poll_interval_s,
                              timeout_s=self.poll_timeout_s)
        name = ctx.input.get("name", upload_id)
        ok = status["state"] == DONE
        subject = f"ETL {'finished' if ok else 'FAILED'}: {name}"
        body = (f"Report {name} (upload {upload_id}) "
                + (f"loaded, {status.get('rows')} rows." if ok
                   else f"failed: {status.get('error', 'no reason given')}."))
        key = f"{ctx.job_id}/notify"
        ctx.once("notify", notifier.send, key, subject, body,
                 reconcile=lambda k, *_: notifier.delivered(k) or jobstate.NOT_DONE)
        if not ok:
            return ctx.fail(f"ETL job of upload {upload_id} failed: "
                            f"{status.get('error', 'no reason given')}")
        return ctx.complete({"upload_id": upload_id, "state": status["state"],
                             "rows": status.get("rows"), "notified": True})


    @staticmethod
    def _answer(cb: jobstate.Callback) -> dict[str, Any]:
        """The ETL service's callback as a status (the step waits here until it comes)."""
        try:
            answer = cb.result()
        except jobstate.CallbackFailed as exc:
            return {"state": FAILED, "error": exc.error[:500]}
        except jobstate.CallbackTimedOut:
            return {"state": FAILED, "error": "the ETL service never called back"}
        if not isinstance(answer, dict) or answer.get("state") not in (DONE, FAILED):
            return {"state": FAILED, "error": "the ETL service called back with no state"}
        return answer


poller = EtlPoller()
app = poller.app
handler = poller.handler
