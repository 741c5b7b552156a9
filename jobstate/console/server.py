"""`jobstate console`: the console page and its JSON on a local port, acting with the
operator's own AWS credentials (as the CLI does) and recorded in history as `who`.

Listens on 127.0.0.1 by default: it has no authentication of its own, so it must not be
reachable by others (the status API serves the same page behind IAM).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import InvalidInput, JobFinished, JobNotFound, StoreUnavailable
from ..fanout import cancel_tree, rollup
from ..records import JobView
from ..store import JobStore, validate_reason
from . import data
from .page import PAGE

log = logging.getLogger("jobstate.console")
MAX_BODY = 16 * 1024

Answer = tuple[int, Any]


class Console:
    """The console's routes over a JobStore (no HTTP here: `answer` is what a request gets)."""

    def __init__(self, store: JobStore, who: str) -> None:
        self.store = store
        self.who = who

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> Answer:
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        try:
            return self._route(method, parts, query, body)
        except JobNotFound as exc:
            return 404, {"error": str(exc)}
        except JobFinished as exc:
            return 409, {"error": str(exc)}
        except InvalidInput as exc:
            return 400, {"error": str(exc)}
        except StoreUnavailable as exc:
            return 503, {"error": str(exc)}

    def _route(self, method: str, parts: list[str], query: dict[str, str], body: Any) -> Answer:
        if method == "GET" and parts in ([], ["console"]):
            return 200, PAGE
        if method == "GET" and parts == ["jobs"]:
            page = self.store.list(query.get("type") or None, query.get("status") or None,
                                   limit=min(100, int(query.get("limit") or 50)),
                                   next_token=query.get("next_token") or None)
            return 200, {"jobs": [self._row(j) for j in page.jobs],
                         "next_token": page.next_token}
        if method == "GET" and parts == ["paused"]:
            return 200, {"paused": [{"job_type": c.job_type, "reason": c.reason,
                                     "paused_at": c.updated_at}
                                    for c in self.store.pauses.paused_now()]}
        if len(parts) == 3 and parts[0] == "types" and method == "POST":
            return self._type_action(parts[1], parts[2], body)
        if len(parts) >= 2 and parts[0] == "jobs":
            return self._job(method, parts[1], parts[2] if len(parts) == 3 else "", body)
        return 404, {"error": f"no route {'/'.join(parts)!r:.100}"}

    def _row(self, view: JobView) -> dict[str, Any]:
        """A listed job; a parent's progress rolled up from its children, as its detail
        shows it (a parent's own progress stays 0 while its children work)."""
        out = view.to_dict()
        if view.children_total:
            out["rollup"] = rollup(self.store, view).to_dict()
        return out

    def _job(self, method: str, job_id: str, what: str, body: Any) -> Answer:
        reason = _reason(body)
        if method == "GET" and what == "":
            view = self.store.get(job_id)
            out = view.to_dict()
            if view.children_total:
                out["rollup"] = rollup(self.store, view).to_dict()
            return 200, out
        if method == "GET" and what == "history":
            return 200, data.history_json(self.store, job_id)
        if method == "GET" and what == "effects":
            return 200, data.effects_json(self.store, job_id)
        if method == "GET" and what == "children":
            return 200, data.children_json(self.store, self.store.get(job_id))
        if method == "POST" and what == "cancel":
            count = cancel_tree(self.store, job_id, reason or "cancelled from the console",
                                by=self.who)
            return 200, {"job_id": job_id, "status": "CANCELLED", "cancelled": count}
        if method == "POST" and what == "redrive":
            step = body.get("from_step") if isinstance(body, dict) else None
            view = self.store.redrive(job_id, from_step=step, by=self.who, reason=reason)
            return 200, {"job": view.to_dict()}
        return 404, {"error": f"no route {method} jobs/{job_id}/{what}"[:200]}

    def _type_action(self, job_type: str, verb: str, body: Any) -> Answer:
        if verb not in ("pause", "resume"):
            return 404, {"error": f"no route types/{job_type}/{verb}"[:200]}
        paused = verb == "pause"
        due = self.store.set_paused(job_type, paused, _reason(body), by=self.who)
        return 200, {"job_type": job_type, "paused": paused, "due_now": due}


def _reason(body: Any) -> str:
    reason = body.get("reason") if isinstance(body, dict) else None
    return validate_reason(reason) if reason else ""


def handler_for(console: Console) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, method: str) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            body: Any = None
            size = int(self.headers.get("content-length") or 0)
            if size > MAX_BODY:
                self._send(413, {"error": "request body too large"})
                return
            if size:
                try:
                    body = json.loads(self.rfile.read(size))
                except ValueError:
                    self._send(400, {"error": "the body is not JSON"})
                    return
            try:
                status, out = console.answer(method, url.path, query, body)
            except Exception as exc:  # the page shows the error; the server keeps serving
                log.exception("console request failed")
                status, out = 500, {"error": f"{type(exc).__name__}: {exc}"}
            self._send(status, out)

        def _send(self, status: int, out: Any) -> None:
            html = isinstance(out, str)
            raw = (out if html else json.dumps(out, default=str)).encode()
            self.send_response(status)
            self.send_header("content-type", "text/html; charset=utf-8" if html
                             else "application/json")
            self.send_header("cache-control", "no-store")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def start(store: JobStore, *, who: str, host: str = "127.0.0.1", port: int = 8321,
          ) -> tuple[ThreadingHTTPServer, Callable[[], None]]:
    """Serve the console in a background thread; returns the server (its port in
    `server.server_address`) and a function that stops it."""
    server = ThreadingHTTPServer((host, port), handler_for(Console(store, who)))
    thread = threading.Thread(target=server.serve_forever, name="jobstate-console", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return server, stop
