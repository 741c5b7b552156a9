"""Status API behind a Lambda function URL (payload format 2.0; IAM auth in the template).

    GET  /jobs/{id}              the job (tokens redacted) and, for a parent, the progress
                                 rolled up from its children (`jobstate.rollup`)
    GET  /jobs?type=&status=&limit=&next_token=
                                 one page of jobs, newest first; pass `next_token` back
    POST /jobs/{id}/cancel       cancel the job and its unfinished children; body
                                 `{"reason": "..."}` optional
    POST /callbacks/succeed      answer a job's callback (docs/callbacks.md); body
    POST /callbacks/fail         `{"token": "...", "result": ...}` / `{"token": "...",
    POST /callbacks/heartbeat    "error": "..."}` / `{"token": "..."}`; the job is due at
                                 once (the sweeper runs it). The token goes in the body,
                                 never the URL (URLs are logged), and is never echoed
    GET  /jobs/{id}/history      the job's history, oldest first (read grant)
    GET  /jobs/{id}/children     its latest spawn's children: id, status, progress (read
                                 grant on the child type)
    GET  /jobs/{id}/effects      its effect records, results redacted (read grant)
    POST /jobs/{id}/redrive      re-run a FAILED job; body `{"from_step": N, "reason":
                                 "..."}` optional (redrive grant)
    GET  /console                the web console page (jobstate.console), which reads and
                                 acts through the routes above

Operator actions are recorded in the job's history with the caller's IAM ARN as `who`.

Every request is authorised against grants (`JOBSTATE_STATUS_API_GRANTS`, the template's
`StatusApiGrants`): which IAM principals (ARN patterns) may read, list and cancel which
job types, and answer the callbacks of which. The caller is the IAM identity Lambda puts
in the request context (`requestContext.authorizer.iam.userArn`, signed with SigV4), never
a header. Nothing is allowed without a grant (see docs/security.md).

Answers are JSON. 400 names the bad parameter, 403 an action the caller may not take,
404 an unknown job (or one the caller may not read), callback token or route, 405 a wrong
method, 409 cancelling a finished job or answering a closed callback, 503 when DynamoDB
is unavailable; anything else is a 500 with the request id (the traceback goes to the
function's log, never the body).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import jobstate
from jobstate import observe
from jobstate.callbacks import parse_token  # the job a token names (no secret checked)
from jobstate.console import data as console_data  # the console's answers, shared
from jobstate.console.page import PAGE
from jobstate.records import child_ids_of  # the ids of a job's latest spawn (a read helper)

log = logging.getLogger("handlers.status_api")

MAX_LIMIT = 100
STATUSES = tuple(s.value for s in jobstate.JobStatus)
GRANTS_ENV = "JOBSTATE_STATUS_API_GRANTS"
ACTIONS = ("read", "list", "cancel", "redrive", "callback")
CALLBACK_ANSWERS = ("succeed", "fail", "heartbeat")
ALL = "*"


class HttpError(Exception):
    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra


def response(status: int, body: Any, headers: Mapping[str, str] | None = None
             ) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"content-type": "application/json", "cache-control": "no-store",
                    **(headers or {})},
        "body": json.dumps(body, default=str),
    }


# -- authorisation -------------------------------------------------------------------------


class GrantsInvalid(ValueError):
    """The grants document is malformed (a deployment error: every request is refused)."""


@dataclass(frozen=True)
class Grant:
    """Principals (ARN patterns, `*` matching any run of characters) and the job types
    they may read (GET /jobs/{id}, its history, children, effects), list (GET /jobs?type=,
    which shows the listed jobs), cancel (POST /jobs/{id}/cancel) and redrive (POST
    /jobs/{id}/redrive), and whose callbacks they may answer (POST /callbacks/...). A type
    `*` is every type."""

    principals: tuple[str, ...]
    read: frozenset[str] = frozenset()
    list: frozenset[str] = frozenset()
    cancel: frozenset[str] = frozenset()
    callback: frozenset[str] = frozenset()
    redrive: frozenset[str] = frozenset()

    def matches(self, arn: str) -> bool:
        return any(_glob(p).fullmatch(arn) for p in self.principals)


@functools.cache
def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


class Grants:
    """Who may do what: deny unless a grant says otherwise."""

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self.grants = tuple(grants)

    @classmethod
    def parse(cls, text: str | None) -> Grants:
        """Grants from JSON: `[{"principal": "arn:aws:sts::111122223333:assumed-role/ops/*",
        "read": ["*"], "list": ["etl-poller"], "cancel": ["etl-poller"]}, ...]`
        (`principal` may be a list). Empty or unset: no grants (everything is refused)."""
        if not text or not text.strip():
            return cls()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GrantsInvalid(f"{GRANTS_ENV} is not JSON ({exc.msg} at {exc.pos})") from None
        if not isinstance(doc, list):
            raise GrantsInvalid(f"{GRANTS_ENV} must be a JSON list of grants, got "
                                f"{type(doc).__name__}")
        return cls(_grant(i, g) for i, g in enumerate(doc))

    @classmethod
    def from_env(cls) -> Grants:
        return cls.parse(os.environ.get(GRANTS_ENV))

    def types(self, arn: str, action: str) -> frozenset[str]:
        """The job types `arn` may `action` ("*" among them: every type)."""
        out: set[str] = set()
        for g in self.grants:
            if g.matches(arn):
                out |= getattr(g, action)
        return frozenset(out)

    def allows(self, arn: str, action: str, job_type: str | None) -> bool:
        types = self.types(arn, action)
        return ALL in types or (job_type is not None and job_type in types)


def _grant(i: int, g: Any) -> Grant:
    where = f"{GRANTS_ENV}[{i}]"
    if not isinstance(g, dict):
        raise GrantsInvalid(f"{where} must be an object")
    unknown = sorted(set(g) - {"principal", *ACTIONS})
    if unknown:
        raise GrantsInvalid(f"{where} has unknown key(s) {unknown}; use principal, "
                            f"{', '.join(ACTIONS)}")
    principals = g.get("principal")
    principals = [principals] if isinstance(principals, str) else principals
    if not principals or not isinstance(principals, list) or not all(
            isinstance(p, str) and p.startswith("arn:") for p in principals):
        raise GrantsInvalid(f"{where}.principal must be an IAM ARN pattern (or a list of "
                            "them) starting with 'arn:', e.g. "
                            "'arn:aws:sts::111122223333:assumed-role/ops/*'")
    kinds: dict[str, frozenset[str]] = {}
    for action in ACTIONS:
        types = g.get(action, [])
        if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
            raise GrantsInvalid(f"{where}.{action} must be a list of job types (or '*')")
        for t in types:
            if t != ALL:
                try:
                    jobstate.codec.validate_job_type(t)
                except jobstate.InvalidInput as exc:
                    raise GrantsInvalid(f"{where}.{action}: {exc}") from None
        kinds[action] = frozenset(types)
    return Grant(tuple(principals), **kinds)


def caller_of(event: Mapping[str, Any]) -> str:
    """The caller's IAM ARN, as Lambda wrote it into the request context of a function
    URL with AuthType AWS_IAM (after checking the SigV4 signature). Headers are never
    looked at: the caller writes those."""
    ctx = event.get("requestContext")
    iam = ((ctx.get("authorizer") or {}).get("iam") or {}) if isinstance(ctx, Mapping) else {}
    arn = iam.get("userArn") if isinstance(iam, Mapping) else None
    if not isinstance(arn, str) or not arn.startswith("arn:"):
        raise HttpError(403, "the request carries no IAM identity "
                             "(requestContext.authorizer.iam.userArn): the function URL "
                             "must use AuthType AWS_IAM and the request be signed with SigV4")
    return arn


@dataclass(frozen=True)
class Caller:
    arn: str
    grants: Grants

    def may(self, action: str, job_type: str | None) -> bool:
        return self.grants.allows(self.arn, action, job_type)

    def may_any(self, action: str) -> bool:
        return bool(self.grants.types(self.arn, action))

    def refuse(self, action: str, what: str = "jobs") -> HttpError:
        # Names the caller's own ARN and the action: no job data, no other principal.
        return HttpError(403, f"{self.arn} may not {action} {what}; ask for a grant in "
                              f"{GRANTS_ENV} (the stack's StatusApiGrants parameter)")


def not_found(job_id: str) -> HttpError:
    """The same answer for a job that does not exist and one the caller may not read, so
    a caller cannot probe which ids exist."""
    return HttpError(404, f"no job {job_id!r} that you may read (it may never have existed, "
                          "have expired, or be of a type you have no read grant for)")


def job_json(store: jobstate.JobStore, view: jobstate.JobView,
             caller: Caller | None = None, *, rollup: bool = True) -> dict[str, Any]:
    """The job as JSON (tokens redacted). Relations to jobs of a type the caller may not
    read (its parent and ancestors, its children and their roll-up) are left out, and so
    is an error that quotes them."""
    out = view.to_dict()  # tokens redacted
    children_visible = caller is None or (view.child_type is not None
                                          and caller.may("read", view.child_type))
    parent_type = view.ancestors[-1] if view.ancestors else view.parent_type
    parent_visible = caller is None or not view.parent_id or (
        parent_type is not None and all(caller.may("read", t) for t in view.ancestors)
        and caller.may("read", parent_type))
    if rollup and view.children_total and children_visible:
        out["rollup"] = jobstate.rollup(store, view).to_dict()
    if not children_visible and view.error_type == "ChildFailed":
        out["error"] = ("children of this job did not succeed (their details are "
                        "withheld: you have no read grant for their type)")
    if not parent_visible:
        out["parent_id"] = None
        if view.error_type == "Cancelled":  # "parent <id> cancelled" / "... failed: ..."
            out["error"] = ("cancelled with its parent (details withheld: you have no read "
                            "grant for the parent's type)")
    return out


class StatusApi:
    """Routes function URL requests to a JobStore (injectable for tests)."""

    def __init__(self, store: jobstate.JobStore | None = None,
                 grants: Grants | None = None) -> None:
        self._store = store
        self._grants = grants

    @property
    def store(self) -> jobstate.JobStore:
        if self._store is None:
            self._store = jobstate.JobStore()  # lazily: nothing connects at import time
        return self._store

    @property
    def grants(self) -> Grants:
        if self._grants is None:
            self._grants = Grants.from_env()
        return self._grants

    def handler(self, event: Any, context: Any = None) -> dict[str, Any]:
        request_id = getattr(context, "aws_request_id", None)
        try:
            method, path, query, body = parse_request(event)
            caller = Caller(caller_of(event), self.grants)
            route, arg = self.route(method, path)
            return route(caller, arg, query, body)
        except GrantsInvalid as exc:
            log.error("status api refuses every request: %s (request id %s)", exc, request_id)
            return response(500, {"error": "the status API's grants are invalid; see the "
                                           "function's logs", "request_id": request_id})
        except HttpError as exc:
            return response(exc.code, {"error": str(exc), **exc.extra})
        except jobstate.JobNotFound as exc:
            return response(404, {"error": str(exc)})
        except (jobstate.JobFinished, jobstate.CallbackClosed) as exc:
            return response(409, {"error": str(exc)})
        except jobstate.InvalidInput as exc:
            return response(400, {"error": str(exc)})
        except jobstate.StoreUnavailable as exc:
            return response(503, {"error": str(exc)}, {"retry-after": "5"})
        except Exception:
            log.exception("status api request failed (request id %s)", request_id)
            return response(500, {"error": "internal error; see the function's logs",
                                  "request_id": request_id})

    def route(self, method: str, path: str) -> tuple[Callable[..., dict[str, Any]], str]:
        parts = path.strip("/").split("/")
        if parts[0] == "callbacks" and len(parts) == 2 and parts[1] in CALLBACK_ANSWERS:
            if method != "POST":
                raise HttpError(405, f"{method:.20} {path:.100} is not allowed; use POST",
                                allow="POST")
            return self.answer_callback, parts[1]
        if parts == ["console"] and method == "GET":
            return self.console_page, ""
        if parts[0] != "jobs":
            raise HttpError(404, f"no route {path!r:.100}; try GET /jobs or GET /jobs/{{id}}")
        if len(parts) == 1:
            if method != "GET":
                raise HttpError(405, f"{method:.20} /jobs is not allowed; use GET", allow="GET")
            return self.list_jobs, ""
        rest = "/".join(parts[1:])
        extra = self.console_route(method, rest) if len(parts) > 2 else None
        if extra is not None:
            return extra
        if method == "POST" and rest.endswith("/cancel") and len(parts) > 2:
            return self.cancel_job, unquote(rest.removesuffix("/cancel"))
        if method == "GET":
            return self.get_job, unquote(rest)
        raise HttpError(405, f"{method:.20} {path:.100} is not allowed; use GET /jobs/{{id}} or "
                             "POST /jobs/{id}/cancel", allow="GET, POST")

    # -- the console's routes (issue 20) ------------------------------------------------

    def console_route(self, method: str, rest: str
                      ) -> tuple[Callable[..., dict[str, Any]], str] | None:
        """GET /jobs/{id}/history|children|effects, POST /jobs/{id}/redrive, or None."""
        for suffix, verb, route in (("/history", "GET", self.job_history),
                                    ("/children", "GET", self.job_children),
                                    ("/effects", "GET", self.job_effects),
                                    ("/redrive", "POST", self.redrive_job)):
            if rest.endswith(suffix) and method == verb:
                return route, unquote(rest.removesuffix(suffix))
        return None

    def console_page(self, caller: Caller, _: str, query: Mapping[str, str],
                     body: Any) -> dict[str, Any]:
        out = response(200, None, {"content-type": "text/html; charset=utf-8"})
        out["body"] = PAGE  # static: the data comes through the routes, each authorised
        return out

    def job_history(self, caller: Caller, job_id: str, query: Mapping[str, str],
                    body: Any) -> dict[str, Any]:
        self.readable(caller, job_id)
        return response(200, console_data.history_json(self.store, job_id))

    def job_effects(self, caller: Caller, job_id: str, query: Mapping[str, str],
                    body: Any) -> dict[str, Any]:
        self.readable(caller, job_id)
        return response(200, console_data.effects_json(self.store, job_id))

    def job_children(self, caller: Caller, job_id: str, query: Mapping[str, str],
                     body: Any) -> dict[str, Any]:
        view = self.readable(caller, job_id)
        if view.child_type is not None and not caller.may("read", view.child_type):
            raise caller.refuse("read", f"jobs of type {view.child_type!r}")
        return response(200, console_data.children_json(self.store, view))

    def job_for(self, caller: Caller, action: str, job_id: str) -> jobstate.JobView:
        """The job `caller` may act on with `action` (a write): refused before any read
        without that grant for some type; a job it may neither act on nor read is a 404
        (its existence is not revealed); one it may only read, a 403."""
        if not caller.may_any(action):
            raise caller.refuse(action)  # before any read
        try:
            view = self.store.get(job_id)
        except jobstate.JobNotFound:
            raise not_found(job_id) from None
        if not (caller.may(action, view.job_type) or caller.may("read", view.job_type)):
            raise not_found(job_id)
        if not caller.may(action, view.job_type):
            raise caller.refuse(action, f"jobs of type {view.job_type!r}")
        return view

    def redrive_job(self, caller: Caller, job_id: str, query: Mapping[str, str],
                    body: Any) -> dict[str, Any]:
        body = body if isinstance(body, Mapping) else {}
        reason = body.get("reason") or ""
        if not isinstance(reason, str):
            raise HttpError(400, "reason must be a string")
        step = body.get("from_step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise HttpError(400, "from_step must be an integer step number")
        self.job_for(caller, "redrive", job_id)  # authorised before anything is written
        done = self.store.redrive(job_id, from_step=step, by=caller.arn, reason=reason[:500])
        return response(200, {"job": job_json(self.store, done, caller, rollup=False)})

    def get_job(self, caller: Caller, job_id: str, query: Mapping[str, str],
                body: Any) -> dict[str, Any]:
        return response(200, job_json(self.store, self.readable(caller, job_id), caller))

    def readable(self, caller: Caller, job_id: str) -> jobstate.JobView:
        """The job, if the caller may read it; else the not-found answer."""
        if not caller.may_any("read"):
            raise caller.refuse("read")  # before any read: nothing about the job is told
        try:
            view = self.store.get(job_id)
        except jobstate.JobNotFound:
            raise not_found(job_id) from None
        if not caller.may("read", view.job_type):
            raise not_found(job_id)
        return view

    def list_jobs(self, caller: Caller, _: str, query: Mapping[str, str],
                  body: Any) -> dict[str, Any]:
        unknown = sorted(set(query) - {"type", "status", "limit", "next_token"})
        if unknown:
            raise HttpError(400, f"unknown query parameter(s) {unknown!r:.200}; use type, "
                                 "status, limit, next_token")
        job_type = query.get("type") or None
        if job_type is not None:
            jobstate.codec.validate_job_type(job_type)
        if not caller.may("list", job_type):
            if job_type is None and caller.may_any("list"):
                raise HttpError(403, "list one job type at a time (?type=...): "
                                     f"{caller.arn} may not list every type")
            raise caller.refuse("list", f"jobs of type {job_type!r}" if job_type else "jobs")
        status = query.get("status") or None
        if status is not None and status.upper() not in STATUSES:
            raise HttpError(400, f"status must be one of {', '.join(STATUSES)}; got "
                                 f"{status!r:.40}")
        raw_limit = query.get("limit") or "50"
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise HttpError(400, f"limit must be an integer from 1 to {MAX_LIMIT}; got "
                                 f"{raw_limit!r:.40}")
        page = self.store.list(job_type, status.upper() if status else None,
                               limit=limit, next_token=query.get("next_token") or None)
        # A list stays one query and one batch read: roll-ups are for GET /jobs/{id}.
        jobs = [job_json(self.store, j, caller, rollup=False) for j in page.jobs
                if caller.may("list", j.job_type)]
        return response(200, {"jobs": jobs, "next_token": page.next_token})

    def cancel_job(self, caller: Caller, job_id: str, query: Mapping[str, str],
                   body: Any) -> dict[str, Any]:
        reason = "cancelled through the status API"
        if isinstance(body, Mapping) and body.get("reason") is not None:
            if not isinstance(body["reason"], str) or not body["reason"].strip():
                raise HttpError(400, "reason must be a non-empty string")
            reason = body["reason"][:500]
        view = self.job_for(caller, "cancel", job_id)
        if view.status.terminal and view.status is not jobstate.JobStatus.CANCELLED:
            raise HttpError(409, f"job {job_id!r} already {view.status.value}; there is "
                                 "nothing to cancel", status=view.status.value)
        # Every unfinished job of the tree must be one the caller may cancel, or nothing
        # is cancelled: half a tree cancelled leaves children working for a dead parent.
        forbidden = [j for j in unfinished_tree(self.store, view)
                     if not caller.may("cancel", j.job_type)]
        if forbidden:
            raise HttpError(403, f"job {job_id!r} has {len(forbidden)} unfinished "
                                 f"descendant(s) {caller.arn} may not cancel; nothing was "
                                 "cancelled")
        count, skipped = cancel_tree(self.store, view, reason,
                                     lambda j: caller.may("cancel", j.job_type), by=caller.arn)
        observe.event("cancel_requested", job_id=job_id, job_type=view.job_type,
                      detail=f"{count} job(s) cancelled by {caller.arn}")
        return response(200, {"job_id": job_id, "status": "CANCELLED", "cancelled": count,
                              "skipped": skipped})


    def answer_callback(self, caller: Caller, answer: str, query: Mapping[str, str],
                        body: Any) -> dict[str, Any]:
        """Record a callback's answer; the waiting job is due at once (`JobStore`)."""
        if not caller.may_any("callback"):
            raise caller.refuse("answer callbacks of", "any job")  # before any read
        if not isinstance(body, Mapping) or not isinstance(body.get("token"), str):
            raise HttpError(400, "the body must be JSON with the callback's \"token\"")
        allowed = {"token", "result"} if answer == "succeed" else (
            {"token", "error"} if answer == "fail" else {"token"})
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise HttpError(400, f"unknown body field(s) {unknown!r:.200}; use "
                                 f"{', '.join(sorted(allowed))}")
        token = body["token"]
        nowhere = HttpError(404, "no callback answers to that token that you may answer "
                                 "(unknown, forged, expired, or of a job type you have no "
                                 "callback grant for); nothing was written")
        try:
            job_id = parse_token(token)[0]
            job = self.store.get_job_item(job_id)
        except (jobstate.CallbackNotFound, jobstate.InvalidInput):
            raise nowhere from None
        if job is None or not caller.may("callback", job.job_type):
            raise nowhere
        try:
            if answer == "succeed":
                done = self.store.complete_callback(token, body.get("result"))
            elif answer == "fail":
                done = self.store.fail_callback(token, str(body.get("error") or ""))
            else:
                done = self.store.heartbeat_callback(token)
        except jobstate.CallbackNotFound:
            raise nowhere from None
        observe.event("callback_answered", job_id=done.job_id, job_type=job.job_type,
                      detail=f"{answer} of callback {done.name!r} by {caller.arn}")
        return response(200, {"job_id": done.job_id, "callback": done.name, "answer": answer,
                              "repeated": done.repeated, "woke": done.woke})


def unfinished_tree(store: jobstate.JobStore, root: jobstate.JobView
                    ) -> list[jobstate.JobView]:
    """The unfinished descendants of `root` (of its latest spawns, recursively)."""
    out: list[jobstate.JobView] = []
    todo = [root]
    seen = {root.job_id}
    while todo:
        for cid in child_ids_of(todo.pop()):
            if cid in seen:
                continue
            seen.add(cid)
            try:
                child = store.get(cid)
            except jobstate.JobNotFound:
                continue
            if not child.status.terminal:
                out.append(child)
                todo.append(child)
    return out


def cancel_tree(store: jobstate.JobStore, root: jobstate.JobView, reason: str,
                may_cancel: Callable[[jobstate.JobView], bool], *,
                by: str | None = None) -> tuple[int, int]:
    """`jobstate.cancel_tree`, asking `may_cancel` before each job: a job it refuses (one
    spawned since the tree was checked) is left running, with its subtree. Returns
    (cancelled, skipped)."""
    count = skipped = 0
    todo: list[tuple[jobstate.JobView, str]] = [(root, reason)]
    while todo:
        view, why = todo.pop()
        if not may_cancel(view):
            skipped += 1
            continue
        try:
            done = store.cancel(view.job_id, why, by=by)
        except (jobstate.JobNotFound, jobstate.JobFinished):
            if view is root:
                raise
            continue  # it finished meanwhile
        count += 1
        for cid in child_ids_of(done):
            try:
                child = store.get(cid)
            except jobstate.JobNotFound:
                continue
            if not child.status.terminal:
                todo.append((child, f"parent {view.job_id} cancelled"))
    return count, skipped


MAX_BODY_BYTES = 16 * 1024  # a cancel reason is at most 500 characters
MAX_PATH_CHARS = 1024


def parse_request(event: Any) -> tuple[str, str, dict[str, str], Any]:
    """(method, path, query, JSON body) from a function URL event (payload 2.0).

    Whatever the event holds, a request that cannot be served is an HttpError (400) here,
    before anything is read or written.
    """
    if not isinstance(event, Mapping):
        raise HttpError(400, "not a function URL request")
    ctx = event.get("requestContext")
    http = (ctx.get("http") if isinstance(ctx, Mapping) else None) or {}
    method = http.get("method") if isinstance(http, Mapping) else None
    path = event.get("rawPath") or (http.get("path") if isinstance(http, Mapping) else None)
    if not isinstance(method, str) or not method or not isinstance(path, str):
        raise HttpError(400, "not a function URL request (payload format 2.0: rawPath, "
                             "requestContext.http.method)")
    if len(path) > MAX_PATH_CHARS:
        raise HttpError(400, f"the path is longer than {MAX_PATH_CHARS} characters")
    raw_query = event.get("queryStringParameters") or {}
    if not isinstance(raw_query, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_query.items()):
        raise HttpError(400, "queryStringParameters must map names to strings")
    query = dict(raw_query)
    return method.upper(), path, query, _body(event)


def _body(event: Mapping[str, Any]) -> Any:
    raw = event.get("body")
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise HttpError(400, "body must be a string (JSON, or base64 with isBase64Encoded)")
    if len(raw) > 2 * MAX_BODY_BYTES:
        raise HttpError(400, f"body is larger than {MAX_BODY_BYTES} bytes")
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(raw, validate=True).decode("utf-8")
        except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
            raise HttpError(400, "body is not valid base64 UTF-8") from None
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
        raise HttpError(400, f"body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise HttpError(400, "body is nested too deeply; send {\"reason\": \"...\"}") from None
    except ValueError:
        raise HttpError(400, "body must be JSON, e.g. {\"reason\": \"...\"}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "body must be a JSON object, e.g. {\"reason\": \"...\"}")
    return body


@functools.cache
def _api() -> StatusApi:
    return StatusApi()


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    return _api().handler(event, context)
