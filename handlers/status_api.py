"""Status API behind a Lambda function URL (payload format 2.0; IAM auth in the template).

    GET  /jobs/{id}              the job (tokens redacted) and, for a parent, the progress
                                 rolled up from its children (`jobstate.rollup`)
    GET  /jobs?type=&status=&limit=&next_token=
                                 one page of jobs, newest first; pass `next_token` back
    POST /jobs/{id}/cancel       cancel the job and its unfinished children
                                 (`jobstate.cancel_tree`); body `{"reason": "..."}` optional

Answers are JSON. 400 names the bad parameter, 404 an unknown job or route, 405 a wrong
method, 409 cancelling a finished job, 503 when DynamoDB is unavailable; anything else
is a 500 with the request id (the traceback goes to the function's log, never the body).
"""

from __future__ import annotations

import base64
import functools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

import jobstate
from jobstate import observe

log = logging.getLogger("handlers.status_api")

MAX_LIMIT = 100
STATUSES = tuple(s.value for s in jobstate.JobStatus)


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


def job_json(store: jobstate.JobStore, view: jobstate.JobView) -> dict[str, Any]:
    out = view.to_dict()  # tokens redacted
    if view.children_total:
        out["rollup"] = jobstate.rollup(store, view).to_dict()
    return out


class StatusApi:
    """Routes function URL requests to a JobStore (injectable for tests)."""

    def __init__(self, store: jobstate.JobStore | None = None) -> None:
        self._store = store

    @property
    def store(self) -> jobstate.JobStore:
        if self._store is None:
            self._store = jobstate.JobStore()  # lazily: nothing connects at import time
        return self._store

    def handler(self, event: Any, context: Any = None) -> dict[str, Any]:
        request_id = getattr(context, "aws_request_id", None)
        try:
            method, path, query, body = parse_request(event)
            route, arg = self.route(method, path)
            return route(arg, query, body)
        except HttpError as exc:
            return response(exc.code, {"error": str(exc), **exc.extra})
        except jobstate.JobNotFound as exc:
            return response(404, {"error": str(exc)})
        except jobstate.JobFinished as exc:
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
        if parts[0] != "jobs":
            raise HttpError(404, f"no route {path!r}; try GET /jobs or GET /jobs/{{id}}")
        if len(parts) == 1:
            if method != "GET":
                raise HttpError(405, f"{method} /jobs is not allowed; use GET", allow="GET")
            return self.list_jobs, ""
        rest = "/".join(parts[1:])
        if method == "POST" and rest.endswith("/cancel") and len(parts) > 2:
            return self.cancel_job, unquote(rest.removesuffix("/cancel"))
        if method == "GET":
            return self.get_job, unquote(rest)
        raise HttpError(405, f"{method} {path} is not allowed; use GET /jobs/{{id}} or "
                             "POST /jobs/{id}/cancel", allow="GET, POST")

    def get_job(self, job_id: str, query: Mapping[str, str], body: Any) -> dict[str, Any]:
        return response(200, job_json(self.store, self.store.get(job_id)))

    def list_jobs(self, _: str, query: Mapping[str, str], body: Any) -> dict[str, Any]:
        unknown = sorted(set(query) - {"type", "status", "limit", "next_token"})
        if unknown:
            raise HttpError(400, f"unknown query parameter(s) {unknown}; use type, status, "
                                 "limit, next_token")
        status = query.get("status") or None
        if status is not None and status.upper() not in STATUSES:
            raise HttpError(400, f"status must be one of {', '.join(STATUSES)}; got {status!r}")
        raw_limit = query.get("limit") or "50"
        try:
            limit = int(raw_limit)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise HttpError(400, f"limit must be an integer from 1 to {MAX_LIMIT}; got "
                                 f"{raw_limit!r}")
        page = self.store.list(query.get("type") or None,
                               status.upper() if status else None,
                               limit=limit, next_token=query.get("next_token") or None)
        return response(200, {"jobs": [j.to_dict() for j in page.jobs],
                              "next_token": page.next_token})

    def cancel_job(self, job_id: str, query: Mapping[str, str], body: Any) -> dict[str, Any]:
        reason = "cancelled through the status API"
        if isinstance(body, Mapping) and body.get("reason") is not None:
            if not isinstance(body["reason"], str) or not body["reason"].strip():
                raise HttpError(400, "reason must be a non-empty string")
            reason = body["reason"][:500]
        view = self.store.get(job_id)
        if view.status.terminal and view.status is not jobstate.JobStatus.CANCELLED:
            raise HttpError(409, f"job {job_id!r} already {view.status.value}; there is "
                                 "nothing to cancel", status=view.status.value)
        count = jobstate.cancel_tree(self.store, job_id, reason)
        observe.event("cancel_requested", job_id=job_id, job_type=view.job_type,
                      detail=f"{count} job(s) cancelled")
        return response(200, {"job_id": job_id, "status": "CANCELLED", "cancelled": count})


def parse_request(event: Any) -> tuple[str, str, dict[str, str], Any]:
    """(method, path, query, JSON body) from a function URL event (payload 2.0)."""
    if not isinstance(event, Mapping):
        raise HttpError(400, "not a function URL request")
    http = (event.get("requestContext") or {}).get("http") or {}
    method = str(http.get("method") or "").upper()
    path = event.get("rawPath") or http.get("path")
    if not method or not isinstance(path, str):
        raise HttpError(400, "not a function URL request (payload format 2.0: rawPath, "
                             "requestContext.http.method)")
    query = {str(k): str(v) for k, v in (event.get("queryStringParameters") or {}).items()}
    raw = event.get("body")
    body: Any = None
    if raw:
        if event.get("isBase64Encoded"):
            try:
                raw = base64.b64decode(raw).decode("utf-8")
            except ValueError:
                raise HttpError(400, "body is not valid base64 UTF-8") from None
        try:
            body = json.loads(raw)
        except ValueError:
            raise HttpError(400, "body must be JSON") from None
    return method, path, query, body


@functools.cache
def _api() -> StatusApi:
    return StatusApi()


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    return _api().handler(event, context)
