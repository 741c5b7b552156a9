"""LocalRuntime: run a `module:app` on this machine the way Lambda runs it."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from ..errors import InvalidInput
from ..records import JobView
from ..store import JobStore
from ..sweeper import SweepReport, sweep
from . import process
from .chaos import Chaos, CrashPlan, Dice
from .engines import MotoServer, dummy_credentials
from .process import LocalRuntimeError, Worker, rebuild_error
from .queue import Delivery, EventQueue
from .stats import RuntimeStats

log = logging.getLogger("jobstate.local")

RECURSION_LIMIT = 16
# How `_run` reports an invocation whose process died rather than returned an error.
_INVOCATION_DIED = frozenset({"Timeout", "Crash", "RuntimeExited"})
RETRY_DELAYS_S = (60.0, 120.0)  # Lambda's async retries after an error or a timeout
RECURSION_HELP = (
    "Lambda's recursive loop detection stops a chain of invocations after 16 hops "
    "(metric RecursiveInvocationsDropped; the event goes to the on-failure destination). "
    "A jobstate chain recurses on purpose: set `RecursiveLoop: Allow` on the function "
    "(CloudFormation AWS::Lambda::Function.RecursiveLoop, or the PutFunctionRecursionConfig "
    "API; jobstate's template sets it) and keep max_steps/deadline as runaway guards. "
    "Locally: recursive_loop='Allow' (CLI: --recursive-loop Allow). Until then the sweeper "
    "restarts the chain after the dispatch timeout."
)


class _SweepContinuation:
    """The sweeper's continuation: an async invoke from outside any chain (hop 1)."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime

    def dispatch(self, event: dict[str, Any], *, context: Any = None) -> None:
        self.runtime._enqueue(dict(event), depth=1, source="sweeper")


class LocalRuntime:
    """Runs a jobstate app's handler in worker subprocesses, with Lambda's failure modes.

    `app_ref` is `"package.module:app"`; the module must build its App without
    connecting (`App(store=JobStore())`). Each worker imports it once with
    JOBSTATE_ENDPOINT_URL / JOBSTATE_TABLE set, then sets `app.continuation` to a
    continuation that sends events back to this runtime's queue.

    `time_scale` multiplies Lambda's own delays (the async retries ~1 and ~2 minutes after
    an error or a timeout, and `max_event_age_s`); 1.0 is real time.
    `dispatch_timeout_s` / `lease_grace_s`, when given, override the app's store and app
    settings inside the workers (handy to make recovery from lost events quick locally).
    `reconcile_guard_s` overrides `App(reconcile_guard_s=...)`: 0 by default, since every
    worker here reads the same clock (there is no skew to guard against); None keeps the
    app's own.
    """

    def __init__(
        self,
        app_ref: str,
        *,
        timeout_ms: int = 3_000,
        endpoint_url: str | None = None,
        table: str | None = None,
        region: str | None = None,
        chaos: Chaos | None = None,
        max_retry_attempts: int = 2,
        max_event_age_s: float = 21_600,
        recursive_loop: Literal["Terminate", "Allow"] = "Terminate",
        concurrency: int = 4,
        sweep_interval_s: float | None = 1.0,
        time_scale: float = 1.0,
        function_name: str = "jobstate-local",
        dispatch_timeout_s: float | None = None,
        lease_grace_s: float | None = None,
        reconcile_guard_s: float | None = 0.0,
        work_dir: str | None = None,
        env: dict[str, str] | None = None,
        init_timeout_s: float = 30.0,
    ) -> None:
        if not isinstance(app_ref, str) or ":" not in app_ref:
            raise InvalidInput(f"app reference {app_ref!r} must look like 'package.module:app'.")
        if not isinstance(timeout_ms, int) or not 100 <= timeout_ms <= 900_000:
            raise InvalidInput(f"timeout_ms must be an int from 100 to 900000, got {timeout_ms!r}")
        if max_retry_attempts not in (0, 1, 2):
            raise InvalidInput(f"max_retry_attempts must be 0, 1 or 2, got {max_retry_attempts!r}")
        if recursive_loop not in ("Terminate", "Allow"):
            raise InvalidInput(
                f"recursive_loop must be 'Terminate' or 'Allow', got {recursive_loop!r}")
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 64:
            raise InvalidInput(f"concurrency must be an int from 1 to 64, got {concurrency!r}")
        for name, v in (("time_scale", time_scale), ("max_event_age_s", max_event_age_s)):
            if not isinstance(v, int | float) or v <= 0:
                raise InvalidInput(f"{name} must be a positive number, got {v!r}")
        if sweep_interval_s is not None and sweep_interval_s <= 0:
            raise InvalidInput(f"sweep_interval_s must be positive or None, got "
                               f"{sweep_interval_s!r}")
        self.app_ref = app_ref
        self.timeout_ms = timeout_ms
        self.endpoint_url = endpoint_url
        self.table = table
        self.region = region
        self.chaos = chaos or Chaos()
        self.max_retry_attempts = max_retry_attempts
        self.max_event_age_s = float(max_event_age_s)
        self.recursive_loop = recursive_loop
        self.concurrency = concurrency
        self.sweep_interval_s = sweep_interval_s
        self.time_scale = float(time_scale)
        self.function_name = function_name
        self.overrides = {"dispatch_timeout_s": dispatch_timeout_s, "lease_grace_s": lease_grace_s,
                          "reconcile_guard_s": reconcile_guard_s}
        self.init_timeout_s = init_timeout_s
        self.extra_env = dict(env or {})
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="jobstate-local-"))
        self.stats = RuntimeStats()
        self.messages: list[str] = []
        self.failed_events: list[dict[str, Any]] = []
        self.queue = EventQueue()
        self.dice = Dice(self.chaos.seed)
        self._crashes = CrashPlan(self.chaos, self.dice)
        self._ddb: MotoServer | None = None
        self._store: JobStore | None = None
        self._workers: list[Worker | None] = [None] * concurrency
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._closing = False
        self._started_at = 0.0
        self._warned: set[str] = set()
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def store(self) -> JobStore:
        """A store on the app's table, for reading jobs (available once open)."""
        if self._store is None:
            raise LocalRuntimeError("the runtime is not open; use `with LocalRuntime(...)`.")
        return self._store

    def open(self) -> LocalRuntime:
        self._started_at = time.monotonic()
        try:
            embedded = self.endpoint_url is None
            if embedded:
                self._ddb = MotoServer(patched=True).start()
                self.endpoint_url = self._ddb.endpoint_url
            elif "moto.server" in sys.modules:  # a moto server of this process, probably
                from . import motofix

                motofix.install()
            for k, v in dummy_credentials(force=False).items():
                os.environ.setdefault(k, v)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._env = self._worker_env(embedded)
            for i in range(self.concurrency):  # start them all, then wait: they boot in parallel
                self._workers[i] = self._spawn(i)
            procs = [w for w in self._workers if w is not None]
            for w in procs:
                process.await_ready(w, self.app_ref, self.work_dir, self.init_timeout_s)
            info = procs[0].info
            self._store = JobStore(info["table"], self.endpoint_url, info["region"],
                                   dispatch_timeout_s=info["dispatch_timeout_ms"] / 1000)
            self._store.create_table()
        except BaseException:
            self.close()
            raise
        for i in range(self.concurrency):
            self._thread(self._serve_slot, f"jobstate-slot-{i}", i)
        if self.sweep_interval_s is not None:
            self._thread(self._sweep_loop, "jobstate-sweeper")
        return self

    def close(self) -> None:
        self._closing = True
        self._stop.set()
        self.queue.close()
        # Kill the processes first: a slot thread blocked on its worker's socket sees EOF
        # and returns. Sockets are closed only after the threads stopped, so none is closed
        # under a thread still polling it.
        for w in list(self._workers):
            if w is not None:
                w.stop()
        for t in self._threads:
            t.join(timeout=10)
        self._kill_all()  # closes the sockets, and kills any worker a slot started meanwhile
        if self._started_at:
            self.stats.wall_s = time.monotonic() - self._started_at
        if self._ddb is not None:
            self._ddb.stop()
            self._ddb = None
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _kill_all(self) -> None:
        for i, w in enumerate(list(self._workers)):
            if w is not None:
                w.kill()
                self._workers[i] = None

    def __enter__(self) -> LocalRuntime:
        return self.open()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _thread(self, target: Any, name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _worker_env(self, embedded: bool) -> dict[str, str]:
        env = dict(os.environ)
        env.update(dummy_credentials(force=embedded))
        assert self.endpoint_url is not None
        env["JOBSTATE_ENDPOINT_URL"] = self.endpoint_url
        if self.table:
            env["JOBSTATE_TABLE"] = self.table
        if self.region:
            env["AWS_REGION"] = env["AWS_DEFAULT_REGION"] = self.region
        env["AWS_LAMBDA_FUNCTION_NAME"] = self.function_name
        env["AWS_LAMBDA_FUNCTION_TIMEOUT"] = str(self.timeout_ms // 1000)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        return env

    # -- workers -----------------------------------------------------------------------

    def _worker_for(self, slot: int) -> Worker:
        w = self._workers[slot]
        if w is None or w.popen.poll() is not None:
            if self._closing:
                raise LocalRuntimeError("the runtime is closing")
            w = self._spawn(slot)
            process.await_ready(w, self.app_ref, self.work_dir, self.init_timeout_s)
            self._workers[slot] = w
        return w

    def _spawn(self, slot: int) -> Worker:
        self.stats.bump_runtime("cold_starts")
        return process.spawn(slot, self.work_dir, self._env, {
            "app_ref": self.app_ref, "function_name": self.function_name,
            "overrides": self.overrides})

    def _log(self, slot: int, line: str) -> None:
        process.log(self.work_dir, slot, line)


    # -- jobs ----------------------------------------------------------------------------

    def invoke(self, event: dict[str, Any], *, timeout_s: float = 120.0) -> dict[str, Any]:
        """A synchronous invocation (no chaos in it): `{"ok", "result" | "error"...}`."""
        fut: Future[dict[str, Any]] = Future()
        self.queue.put(Delivery(dict(event), 1, time.time(), _group(event), source="sync",
                                future=fut))
        return fut.result(timeout=timeout_s)

    def send(self, event: dict[str, Any]) -> None:
        """An asynchronous invocation (`InvocationType="Event"`) from outside any chain."""
        self._enqueue(dict(event), depth=1, source="invoke")

    def start(self, job_type: str, input: Any = None, *, job_id: str | None = None,
              attempts: int = 3) -> str:
        """Start a job through the handler (a start request, invoked synchronously).

        The request always carries a job id, so creating the job is idempotent. A start
        whose invocation died (killed at the timeout on a slow machine, for example) is
        sent again, up to `attempts` times in all, like a caller retrying a Lambda
        `Invoke`. Errors raised by the handler itself are never retried.
        """
        if not isinstance(attempts, int) or attempts < 1:
            raise InvalidInput(f"attempts must be an int >= 1, got {attempts!r}")
        jid = job_id or f"{job_type}-{uuid.uuid4().hex}"
        event = {"jobstate": {"start": {"job_type": job_type, "input": input, "job_id": jid}}}
        for attempt in range(1, attempts + 1):
            out = self.invoke(event)
            if out.get("ok"):
                return str(out["result"]["job_id"])
            if out.get("error_type") not in _INVOCATION_DIED or attempt == attempts:
                raise rebuild_error(out)
            self.stats.bump_runtime("start_retries")
        raise AssertionError("unreachable")

    def wait(self, job_ids: list[str], *, timeout_s: float = 60.0,
             poll_s: float = 0.2) -> dict[str, JobView]:
        """Block until every job is terminal; TimeoutError names the unfinished ones."""
        deadline = time.monotonic() + timeout_s
        views: dict[str, JobView] = {}
        while True:
            for jid in job_ids:
                if jid not in views or not views[jid].status.terminal:
                    views[jid] = self.store.get(jid)
            if all(v.status.terminal for v in views.values()):
                return views
            if time.monotonic() > deadline:
                left = [f"{j} ({v.status.value} at step {v.step})" for j, v in views.items()
                        if not v.status.terminal]
                raise TimeoutError(f"jobs not finished after {timeout_s:.0f}s: "
                                   + ", ".join(left))
            time.sleep(poll_s)

    def run(self, job_type: str, input: Any = None, *, job_id: str | None = None,
            timeout_s: float = 60.0) -> JobView:
        jid = self.start(job_type, input, job_id=job_id)
        return self.wait([jid], timeout_s=timeout_s)[jid]

    def wait_idle(self, timeout_s: float = 30.0, settle_s: float = 0.3) -> bool:
        """Wait until nothing is queued or running for `settle_s`; False on timeout."""
        deadline = time.monotonic() + timeout_s
        calm_since: float | None = None
        while time.monotonic() < deadline:
            if self.queue.idle():
                calm_since = calm_since or time.monotonic()
                if time.monotonic() - calm_since >= settle_s:
                    return True
            else:
                calm_since = None
            time.sleep(0.05)
        return False

    def sweep_now(self) -> SweepReport:
        """Run the sweeper once (also what the timer does)."""
        total = SweepReport()
        token: str | None = None
        while True:
            rep = sweep(self.store, _SweepContinuation(self), limit=500, next_token=token)
            for k, v in rep.to_dict().items():
                if isinstance(v, int):
                    setattr(total, k, getattr(total, k) + v)
            token = rep.next_token
            if token is None:
                break
        self.stats.bump_runtime("sweeps")
        return total

    def stats_dict(self) -> dict[str, Any]:
        if self._started_at and not self._closing:
            self.stats.wall_s = time.monotonic() - self._started_at
        return self.stats.to_dict()

    # -- the event queue -----------------------------------------------------------------

    def _enqueue(self, event: dict[str, Any], *, depth: int, source: str) -> None:
        if self._closing:
            return
        d = Delivery(event, depth, time.time(), _group(event), source=source)
        if source == "sweeper":
            self.stats.bump("swept", d.group)
        self.queue.put(d)
        rng = self.dice.rng(f"dup:{d.key}")
        if self.chaos.duplicate and rng.random() < self.chaos.duplicate:
            self.queue.put(replace(d, duplicate=True), time.time() + rng.uniform(0.02, 0.5))

    def _on_dispatch(self, event: dict[str, Any]) -> None:
        local = event.pop("_local", None) or {}
        depth = int(local.get("depth", 1))
        d = Delivery(event, depth, time.time(), _group(event))
        if self.dice.roll(f"lost:{d.key}", self.chaos.lost):
            self.stats.bump("lost_continuations", d.group)
            return
        self._enqueue(event, depth=depth, source="continuation")

    def _sweep_loop(self) -> None:
        assert self.sweep_interval_s is not None
        while not self._stop.wait(self.sweep_interval_s):
            try:
                self.sweep_now()
            except Exception as exc:  # the next tick tries again, like a scheduled Lambda
                log.warning("sweep failed: %s: %s", type(exc).__name__, exc)

    def _serve_slot(self, slot: int) -> None:
        while True:
            d = self.queue.get()
            if d is None:
                return
            try:
                self._deliver(slot, d)
            except Exception as exc:
                if d.future is not None and not d.future.done():
                    d.future.set_exception(exc)
                elif not self._closing:
                    log.exception("delivery failed")
            finally:
                self.queue.done()

    def _deliver(self, slot: int, d: Delivery) -> None:
        if d.future is None and self._dropped(d):
            return
        w = self._worker_for(slot)
        crash_at = self._crashes.aim(d.key) if d.future is None and self.chaos.crash else None
        if d.duplicate:
            self.stats.bump("duplicates_delivered", d.group)
        self.stats.bump("invocations", d.group)
        deadline = time.time() + self.timeout_ms / 1000
        inv = {"event": d.event, "request_id": d.request_id, "deadline_ms": int(deadline * 1000),
               "depth": d.depth, "crash_at": crash_at, "seed": self.dice.token(d.key),
               "throttle_invoke": self.chaos.throttle_invoke,
               "throttle_dynamodb": self.chaos.throttle_dynamodb}
        result = self._run(w, inv, deadline, d)
        if self._closing:
            return
        if d.future is not None:
            d.future.set_result(result)
        elif not result.get("ok"):
            self._lambda_retry(d, result)

    def _dropped(self, d: Delivery) -> bool:
        age = time.time() - d.first_at
        if age > self.max_event_age_s * self.time_scale:
            self.stats.bump("dropped_age", d.group)
            self._note(d.key, f"dropped the event for {d.key}: it is {age:.1f}s old, past "
                              "MaximumEventAgeInSeconds (time-scaled); the sweeper will "
                              "re-dispatch the job.")
            return True
        if self.recursive_loop == "Terminate" and d.depth > RECURSION_LIMIT:
            self.stats.bump("dropped_recursion", d.group)
            body = d.event.get("jobstate") or {}
            self._note(str(body.get("job_id")),
                       f"RecursiveLoop: dropped step {body.get('step')} of job "
                       f"{body.get('job_id')!r}, invocation {d.depth} of one chain. "
                       + RECURSION_HELP)
            return True
        return False

    def _note(self, key: str, message: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
            self.messages.append(message)
        log.warning("%s", message)

    def _run(self, w: Worker, inv: dict[str, Any], deadline: float,
             d: Delivery) -> dict[str, Any]:
        end = process.invoke(w, inv, deadline, self._on_message(d))
        if end.kind != "done":
            self._workers[w.slot] = None
            if self._closing:
                return {"ok": False}
        if end.kind == "timeout":  # the deadline: Lambda killed the container
            self._log(w.slot, f"{inv['request_id']} Task timed out after "
                              f"{self.timeout_ms / 1000:.2f} seconds (SIGKILL)")
            self.stats.bump("kills_at_timeout", d.group)
            return {"ok": False, "error_type": "Timeout",
                    "error": f"Task timed out after {self.timeout_ms} ms"}
        if end.kind == "crashed":
            self._crashes.fired(d.key)
            self.stats.bump("crashes_injected", d.group)
            self._log(w.slot, f"{inv['request_id']} chaos: SIGKILL at {end.crashed_at}")
            return {"ok": False, "error_type": "Crash",
                    "error": f"Runtime exited with signal: killed (chaos at {end.crashed_at})"}
        if end.kind == "exited":
            return {"ok": False, "error_type": "RuntimeExited",
                    "error": f"Runtime exited with code {w.popen.returncode}"}
        if not end.result.get("ok"):
            self.stats.bump("function_errors", d.group)
        return end.result

    def _on_message(self, d: Delivery) -> Any:
        def on_message(kind: str, *args: Any) -> None:
            if kind == "dispatch":
                self._on_dispatch(args[0])
            elif kind == "outcome":
                self.stats.outcome(args[0], args[1])
            elif kind == "stat":
                self.stats.bump(args[0], args[1])
        return on_message

    def _lambda_retry(self, d: Delivery, result: dict[str, Any]) -> None:
        if d.attempt < self.max_retry_attempts:
            delay = RETRY_DELAYS_S[d.attempt] * self.time_scale
            self.stats.bump("retries", d.group)
            self.queue.put(replace(d, attempt=d.attempt + 1, duplicate=False),
                           time.time() + delay)
            return
        self.stats.bump("failed_events", d.group)
        with self._lock:
            self.failed_events.append({"event": d.event, "error": result.get("error"),
                                       "error_type": result.get("error_type")})


def _group(event: dict[str, Any]) -> str | None:
    body = event.get("jobstate") or {}
    jt = body.get("job_type") or (body.get("start") or {}).get("job_type")
    return jt if isinstance(jt, str) else None
