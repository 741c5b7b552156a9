"""A worker process of the local runtime: one warm Lambda container.

It runs `python -m jobstate.local` (worker.py) and talks over a socket pair: the runtime
sends it invocations, it answers with outcomes and the events it dispatched. Killing it
with SIGKILL is Lambda's timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .. import errors
from ..errors import JobStateError


class LocalRuntimeError(JobStateError):
    """The local runtime could not start (bad app reference, worker died at init, ...)."""


class Worker:
    """A worker process (a warm container) and our end of its socket.

    Its slot thread and `LocalRuntime.close()` may both tear it down; `stop()` and
    `kill()` are idempotent and thread-safe. The socket is closed exactly once, so a
    second close can never hit a file descriptor the process has since reused.
    """

    def __init__(self, popen: subprocess.Popen[bytes], conn: Connection, slot: int) -> None:
        self.popen, self.conn, self.slot = popen, conn, slot
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False

    def stop(self) -> None:
        """SIGKILL the process (Lambda's timeout) and reap it; the socket stays open."""
        with self._lock:
            if self.popen.poll() is None:
                self.popen.kill()
        self.popen.wait()

    def kill(self) -> None:
        """Stop the process and close our end of the socket."""
        self.stop()
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.conn.close()


@dataclass
class End:
    """How an invocation ended: `done` (with the handler's `result`), `timeout` (killed at
    the deadline), `crashed` (killed by chaos at `crashed_at`) or `exited` (it died)."""

    kind: str
    result: dict[str, Any] = field(default_factory=dict)
    crashed_at: str | None = None


def invoke(w: Worker, inv: dict[str, Any], deadline: float,
           on_message: Callable[..., None]) -> End:
    """Send `inv` to the worker and serve its messages until it answers, dies, or its
    deadline (epoch s) passes: then it is SIGKILLed, as Lambda kills a timed-out container.
    Messages other than the end (dispatched events, outcomes, stats) go to `on_message`."""
    crashed: str | None = None
    try:
        w.conn.send(("invoke", inv))
    except OSError:
        deadline = 0.0  # the worker is gone: handled as a death below
    while True:
        left = deadline - time.time()
        try:
            ready = left > 0 and w.conn.poll(left)
            msg = w.conn.recv() if ready else None
        except (EOFError, OSError):
            msg, ready = None, True
        if not ready and w.popen.poll() is not None:
            ready = True  # it died (e.g. could not even read the invocation)
        if not ready:
            w.kill()
            return End("timeout")
        if msg is None:  # the process died
            w.kill()
            return End("crashed", crashed_at=crashed) if crashed else End("exited")
        if msg[0] == "crash":
            crashed = msg[1]
        elif msg[0] == "done":
            return End("done", result=msg[1])
        else:
            on_message(*msg)


def spawn(slot: int, work_dir: Path, env: dict[str, str], config: dict[str, Any]) -> Worker:
    """Start the worker process of `slot` and send it its configuration."""
    mine, theirs = socket.socketpair()
    with open(work_dir / f"worker-{slot}.log", "ab") as out:
        popen = subprocess.Popen(
            [sys.executable, "-m", "jobstate.local", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, env=env, cwd=os.getcwd())
    theirs.close()
    conn = Connection(mine.detach())
    conn.send({**config, "tmp_dir": str(work_dir / f"worker-{slot}-tmp"),
               "sys_path": [p for p in sys.path if p]})
    return Worker(popen, conn, slot)


def await_ready(w: Worker, app_ref: str, work_dir: Path, init_timeout_s: float) -> None:
    """Wait for the worker to have imported the app; LocalRuntimeError if it did not."""
    msg: Any = None
    try:
        if w.conn.poll(init_timeout_s):
            msg = w.conn.recv()
    except (EOFError, OSError):
        msg = None
    if msg is not None and msg[0] == "ready":
        w.info = msg[1]
        return
    w.kill()
    if msg is not None and msg[0] == "init_error":
        raise LocalRuntimeError(f"could not load app {app_ref!r}: {msg[1]}")
    tail = log_tail(work_dir, w.slot)
    raise LocalRuntimeError(
        f"worker for {app_ref!r} did not start within {init_timeout_s:.0f}s"
        + (f"; its log ends with: {tail}" if tail else ""))


def log_tail(work_dir: Path, slot: int) -> str:
    try:
        text = (work_dir / f"worker-{slot}.log").read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def log(work_dir: Path, slot: int, line: str) -> None:
    """A line in the worker's log, from the runtime's side (a kill, a crash)."""
    with open(work_dir / f"worker-{slot}.log", "a") as f:
        f.write(line + "\n")


def rebuild_error(out: dict[str, Any]) -> JobStateError:
    """The worker's exception as the same jobstate error class, if it is one."""
    name, message = out.get("error_type") or "Error", out.get("error") or "unknown error"
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, JobStateError):
        try:
            return cls(message)
        except TypeError:
            pass
    return LocalRuntimeError(f"{name}: {message}")
