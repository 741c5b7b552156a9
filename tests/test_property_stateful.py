"""Property tier: a hypothesis state machine over the real store and protocol (issue 6.2).

The machine drives jobs of random length through `App.handler` on moto (a fresh table
per example) the way Lambda would: events delivered, duplicated, replayed late or lost,
invocations killed at a named crash point (`jobstate.faults`) or frozen there while
others run (a slow container; it is killed when the clock passes its deadline), time
moved past leases and waits, the sweeper run, jobs cancelled, types paused and resumed,
and parked jobs settled by a (truthful) operator. Every step `i` of a job does
`ctx.once(f"fx-{i}", sink)` and commits `cursor == {"i": i + 1}`; the sink is a counter
outside jobstate. Job types:

- `amo`   AT_MOST_ONCE without reconcile (a crash inside the effect parks the job FAILED
          with EffectOutcomeUnknown: allowed, counted);
- `amor`  AT_MOST_ONCE with a reconcile that asks the sink;
- `alo`   AT_LEAST_ONCE.

After every rule: a job's step never goes back; two leases of one job are never live at
once; the committed cursor is the reference one for its step; an AT_MOST_ONCE effect ran
at most once and every effect a job committed past ran at least once; terminal states
never change (except an operator's resume of a parked job). At the end (liveness): chaos
off, deliveries and sweeps to quiescence finish every job that was not cancelled with
the reference result, each AT_MOST_ONCE effect having run exactly once.

Examples per run come from the hypothesis profile (tests/conftest_hypothesis.py):
`HYPOTHESIS_PROFILE=dev|ci|slow` (ci, 200 examples, is the default when CI=true; slow
runs 2000). `test_broken_claim_*` prove the machine catches the bug it exists for: with
the claim's lease clause removed it must fail.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import break_claim_lease_check
from conftest_hypothesis import active
from hypothesis import Phase, event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import jobstate
from jobstate import NOT_DONE, Semantics, faults
from jobstate.items import JobItem, effect_item, job_item
from jobstate.testing import Crash, FakeLambdaContext, dynamodb_client

TIMEOUT_MS = 60_000
GRACE_S = 5.0
DISPATCH_TIMEOUT_S = 120.0
MAX_JOBS = 4
MAX_FROZEN = 2
KINDS: dict[str, tuple[Semantics, bool]] = {
    "amo": (Semantics.AT_MOST_ONCE, False),
    "amor": (Semantics.AT_MOST_ONCE, True),
    "alo": (Semantics.AT_LEAST_ONCE, False),
}
# How `deliver` treats an event (repeats weight the draw).
HOW = ("once", "once", "twice", "replay", "crash", "crash", "crash", "freeze", "freeze+dup",
       "freeze+dup", "lose")
# What else happens between deliveries (`+N s`: the clock moves N seconds).
WORLD = ("+1s", "+30s", "+59s", "+61s", "+66s", "+125s", "+600s", "sweep", "sweep", "cancel",
         "pause", "settle")
STEP_COUNT = 20  # rules per example; keeps the ci profile (200 examples) near 3 minutes
RACE_POINTS = ("after_claim", "effect_started", "effect_called", "before_commit")
# Every named crash point, weighted towards those inside an effect (the outcome is
# unknown: reconcile, parking, settling) and after a commit (a continuation lost), the
# paths the machine is for.
CRASH_AT = (*faults.POINTS, *(("effect_started", "effect_called") * 4),
            "after_commit", "after_dispatch")

# Totals over every example of a run, to show the machine reached the paths it is for.
STATS: Counter[str] = Counter()


class Violation(AssertionError):
    """An invariant of the step protocol does not hold."""


class Sink:
    """The external system: counts how often each effect really ran."""

    def __init__(self) -> None:
        self.runs: Counter[tuple[str, int]] = Counter()

    def call(self, job_id: str, i: int) -> str:
        self.runs[(job_id, i)] += 1
        return f"{job_id}/{i}"

    def find(self, job_id: str, i: int) -> Any:
        STATS["reconcile_asked"] += 1
        return f"{job_id}/{i}" if self.runs[(job_id, i)] else NOT_DONE


@dataclass
class Control:
    """How one invocation is driven: killed at a point, or frozen there."""

    crash_at: str | None = None
    freeze_at: str | None = None
    kill: bool = False
    frozen: bool = False
    go: threading.Event = field(default_factory=threading.Event)
    yielded: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    owners: list[str] = field(default_factory=list)
    outcome: str | None = None
    error: BaseException | None = None
    deadline_ms: int = 0
    event: dict[str, Any] | None = None


@dataclass
class Lease:
    owner: str
    expires_at: int
    ctl: Control
    released: bool = False


class JobMachine(RuleBasedStateMachine):
    """The step protocol under Lambda's failure modes; see the module docstring."""

    check_leases = True  # the broken-claim test turns this off to reach the effect check
    only_kind: str | None = None  # ...and runs only this job type
    reconcile_guard_s = 30.0  # App's default
    endpoint_url: str | None = None  # the test backend (None: moto in-process)

    def __init__(self) -> None:
        super().__init__()
        self.clock = jobstate.ManualClock()
        self.store = jobstate.JobStore(f"prop-{uuid.uuid4().hex[:10]}", region="us-east-1",
                                       endpoint_url=self.endpoint_url, clock=self.clock,
                                       dispatch_timeout_s=DISPATCH_TIMEOUT_S,
                                       client=dynamodb_client(self.endpoint_url))
        self.store.create_table()
        self.cont = jobstate.InMemoryContinuation()
        self.app = jobstate.App(self.store, self.cont, lease_grace_s=GRACE_S,
                                reconcile_guard_s=self.reconcile_guard_s)
        self.sink = Sink()
        self.local = threading.local()
        self.problems: list[str] = []
        self.jobs: dict[str, tuple[str, int]] = {}  # job id -> (kind, steps)
        self.cancelled: set[str] = set()
        self.paused: set[str] = set()
        self.pending: list[dict[str, Any]] = []
        self.past: dict[tuple[str, int], dict[str, Any]] = {}
        self.frozen: list[Control] = []
        self.leases: dict[str, list[Lease]] = {}
        self.last_step: dict[str, int] = {}
        self.terminal: dict[str, tuple[str, int, Any]] = {}
        self.parks: set[tuple[str, Any]] = set()
        self.broken = False
        for kind in KINDS:
            self._register(kind)
        self._prev_hook = faults.install(self._hook)

    # -- the job -------------------------------------------------------------------------

    def _register(self, kind: str) -> None:
        semantics, reconcile = KINDS[kind]

        @self.app.job(kind, max_steps=100)
        def step(ctx: jobstate.StepContext) -> Any:
            i, n = ctx.step, ctx.input["n"]
            expected = {"i": i} if i else {}
            if ctx.cursor != expected:
                self.problems.append(f"{ctx.job_id} step {i} started from cursor "
                                     f"{ctx.cursor}, not the committed {expected}")
            value = ctx.once(f"fx-{i}", self.sink.call, ctx.job_id, i, semantics=semantics,
                             reconcile=self.sink.find if reconcile else None)
            if value != f"{ctx.job_id}/{i}":
                self.problems.append(f"{ctx.job_id} fx-{i} returned {value!r}")
            ctx.cursor = {"i": i + 1}
            if i + 1 >= n:
                return ctx.complete({"n": n, "last": value})
            return None

    def reference(self, job_id: str) -> dict[str, Any]:
        n = self.jobs[job_id][1]
        return {"n": n, "last": f"{job_id}/{n - 1}"}

    # -- invocations ---------------------------------------------------------------------

    def _hook(self, name: str, info: dict[str, Any]) -> None:
        ctl: Control | None = getattr(self.local, "ctl", None)
        if ctl is None:
            return
        if name == "after_claim":
            self._on_claim(ctl, info["job_id"])
        elif name == "after_commit":
            self._release(ctl)  # the commit cleared this lease
        if name == ctl.crash_at:
            raise Crash(name)
        if name == ctl.freeze_at and not ctl.frozen:
            ctl.frozen = True
            ctl.yielded.set()
            if not ctl.go.wait(60):
                raise RuntimeError("a frozen invocation was never resumed")
            if ctl.kill:
                raise Crash(name)

    def _on_claim(self, ctl: Control, job_id: str) -> None:
        raw = self.store.get_raw(job_id) or {}
        item = job_item(raw) if raw else None
        owner = (item.lease_owner if item else None) or "?"
        expires = (item.lease_expires_at if item else None) or 0
        now = self.clock.now_ms()
        held = self.leases.setdefault(job_id, [])
        for mine in held:
            if mine.ctl is ctl:
                # The same invocation claims again (a retry or a deferral served in
                # process): its earlier lease was given back by a fenced write, or this
                # claim could not have succeeded.
                mine.released = True
        if self.check_leases:
            for other in held:
                # Live by the store's own expiry, or (ground truth) because its holder is
                # still running: a lease that ends before its holder is killed is a bug
                # even when the store agrees with itself.
                running = not other.ctl.finished.is_set()
                if not other.released and (other.expires_at >= now or running):
                    self.problems.append(
                        f"two live leases on {job_id}: {owner} claimed while {other.owner} "
                        f"holds it until {other.expires_at} (now {now}"
                        f"{', its holder still running' if running else ''})")
        held.append(Lease(owner, expires, ctl))
        ctl.owners.append(owner)
        STATS["claims"] += 1

    def _release(self, ctl: Control) -> None:
        for held in self.leases.values():
            for lease in held:
                if lease.ctl is ctl:
                    lease.released = True

    def _run(self, ctl: Control, event: dict[str, Any]) -> None:
        self.local.ctl = ctl
        try:
            report = self.app.handler(event, FakeLambdaContext(self.clock, TIMEOUT_MS))
            ctl.outcome = report.get("outcome")
            self._release(ctl)
        except Crash:
            ctl.outcome = "crashed"
        except BaseException as exc:  # a delivery must never raise into Lambda
            ctl.error = exc
            self.problems.append(f"handler raised {type(exc).__name__}: {exc}")
        finally:
            self.local.ctl = None
            ctl.finished.set()
            ctl.yielded.set()
        STATS[f"outcome:{ctl.outcome}"] += 1

    def deliver_now(self, event: dict[str, Any], crash_at: str | None = None) -> Control:
        ctl = Control(crash_at=crash_at, event=event)
        self._run(ctl, event)
        self._collect()
        return ctl

    def _collect(self) -> None:
        for e in self.cont.pop_all():
            self.pending.append(e)
            body = e["jobstate"]
            self.past[(body["job_id"], body["step"])] = e

    def _wait(self, ctl: Control) -> None:
        if not ctl.yielded.wait(60):
            raise RuntimeError("an invocation neither froze nor finished")

    def _unfreeze(self, ctl: Control, *, kill: bool) -> None:
        self.frozen.remove(ctl)
        ctl.kill = kill
        ctl.yielded.clear()
        ctl.go.set()
        if not ctl.finished.wait(60):
            raise RuntimeError("a resumed invocation did not finish")
        self._collect()

    # -- rules ---------------------------------------------------------------------------

    @initialize(lengths=st.lists(st.integers(1, 6), min_size=len(KINDS),
                                 max_size=len(KINDS)),
                dies=st.sampled_from([None, *((k, p) for k in sorted(KINDS)
                                              for p in ("effect_started", "effect_called"))]))
    def start_jobs(self, lengths: list[int], dies: tuple[str, str] | None) -> None:
        """One job of each kind from the start (random lengths), so every example can
        reach each kind's unknown-outcome path: reconcile, park, retry. With `dies`
        (kind, point), that kind's first delivery is killed inside its effect (before or
        after the external call) and its lease runs out, the event redelivered later:
        the unknown-outcome path is within reach of every such example, not only of
        those that chain a crash, a long wait and a redelivery by chance."""
        for kind, n in zip(sorted(KINDS), lengths, strict=True):
            self.start_job(kind, n)
        if dies is None:
            return
        kind, point = dies
        mine = [e for e in self.pending if self.jobs[e["jobstate"]["job_id"]][0] == kind]
        if not mine:
            return
        e = mine[0]
        self.pending.remove(e)
        if self.deliver_now(e, crash_at=point).outcome == "crashed":
            STATS[f"crash:{point}"] += 1
        self.time_passes(int(TIMEOUT_MS / 1000 + GRACE_S) + 1)
        self.pending.append(e)  # its retry (or the sweeper's) comes later

    @rule(kind=st.sampled_from(sorted(KINDS)), n=st.integers(1, 6))
    def start_job(self, kind: str, n: int) -> None:
        """A new job starts (while others run), up to MAX_JOBS per example."""
        if len(self.jobs) >= MAX_JOBS:
            return
        kind = self.only_kind or kind
        job_id = f"{kind}-{len(self.jobs)}"
        self.jobs[job_id] = (kind, n)
        self.app.start(kind, {"n": n}, job_id=job_id)
        self._collect()

    @rule(i=st.integers(0, 99), how=st.sampled_from(HOW), point=st.sampled_from(CRASH_AT))
    def deliver(self, i: int, how: str, point: str) -> None:
        """Deliver a pending event the way Lambda may: once, twice, killed at `point`,
        frozen at `point` while other rules run (with `+dup`, a duplicate of the event
        stays pending to race it), or lost. `replay` delivers a stale copy of any event
        ever dispatched (also what happens when nothing is pending)."""
        self._deliver(i, how, point)

    def _deliver(self, i: int, how: str, point: str) -> None:
        if how == "replay" or not self.pending:
            keys = sorted(self.past)
            self.deliver_now(self.past[keys[i % len(keys)]])
            return
        idx = i % len(self.pending)
        e = self.pending[idx] if how == "freeze+dup" else self.pending.pop(idx)
        if how == "once":
            self.deliver_now(e)
        elif how == "twice":
            self.deliver_now(e)
            self.deliver_now(e)
        elif how == "crash":
            if self.deliver_now(e, crash_at=point).outcome == "crashed":
                STATS[f"crash:{point}"] += 1
        elif how == "lose":
            pass
        elif how.startswith("freeze"):
            if len(self.frozen) >= MAX_FROZEN:
                self.deliver_now(e)
            else:
                self.freeze(e, point)

    def freeze(self, e: dict[str, Any], point: str) -> None:
        ctl = Control(freeze_at=point, event=e, deadline_ms=self.clock.now_ms() + TIMEOUT_MS)
        threading.Thread(target=self._run, args=(ctl, e), daemon=True).start()
        self._wait(ctl)
        if ctl.finished.is_set():
            self._collect()
        else:
            self.frozen.append(ctl)
            STATS[f"frozen:{point}"] += 1

    @rule(i=st.integers(0, 99), point=st.sampled_from(CRASH_AT))
    def hang(self, i: int, point: str) -> None:
        """A container hangs at `point` until Lambda kills it at its timeout: what it wrote
        before `point` stays, nothing after it is written, and its lease runs out. (A
        frozen delivery is also killed when time passes its deadline later; this makes
        that case one rule, so it cannot be left to chance.)"""
        if not self.pending or len(self.frozen) >= MAX_FROZEN:
            return
        e = self.pending.pop(i % len(self.pending))
        before = len(self.frozen)
        self.freeze(e, point)
        if len(self.frozen) > before:
            self.time_passes(TIMEOUT_MS // 1000 + 1)

    @rule(i=st.integers(0, 99), point=st.sampled_from(RACE_POINTS),
          wait_s=st.sampled_from([1, 30, 59]))
    def race(self, i: int, point: str, wait_s: int) -> None:
        """A slow container: a delivery freezes at `point`, time passes (less than its
        timeout, so it is alive), a duplicate of its event arrives and runs, then the
        first goes on. The race a lease exists for, as one rule."""
        if not self.pending or len(self.frozen) >= MAX_FROZEN:
            return
        e = self.pending[i % len(self.pending)]
        before = len(self.frozen)
        self.freeze(e, point)
        if len(self.frozen) == before:
            return  # it did not get as far as `point` (a no-op, say)
        ctl = self.frozen[-1]
        self.time_passes(wait_s)
        if e in self.pending:
            self.pending.remove(e)
            self.deliver_now(e)
        if ctl in self.frozen:
            self._unfreeze(ctl, kill=False)
        STATS[f"race:{point}"] += 1

    @rule(i=st.integers(0, 9))
    def thaw(self, i: int) -> None:
        """A frozen invocation goes on (no-op when none is frozen: every rule is always
        valid, so swarm testing never aborts an example)."""
        if self.frozen:
            self._unfreeze(self.frozen[i % len(self.frozen)], kill=False)
            STATS["thawed"] += 1

    @rule(what=st.sampled_from(WORLD), i=st.integers(0, 9))
    def world_moves(self, what: str, i: int) -> None:
        """Time passes (`+N s`, killing frozen invocations at their deadline), the sweeper
        runs, or an operator acts: `jobstate cancel JOB`, `jobstate pause|resume TYPE`,
        or settling a parked job (ask the external system, mark the effect, resume)."""
        if what.startswith("+"):
            self.time_passes(int(what[1:-1]))
        elif what == "sweep":
            self.sweep()
        elif what == "cancel":
            job_id = sorted(self.jobs)[i % len(self.jobs)]
            try:
                self.store.cancel(job_id)
            except jobstate.JobFinished:
                return
            self.cancelled.add(job_id)
        elif what == "pause":
            self.toggle_pause(sorted(KINDS)[i % len(KINDS)])
        elif what == "settle":
            parked = [j for j in sorted(self.jobs) if self._parked(j)]
            if parked:
                self._settle(parked[i % len(parked)])

    def time_passes(self, seconds: int) -> None:
        target = self.clock.now_ms() + seconds * 1000
        for ctl in sorted(self.frozen, key=lambda c: c.deadline_ms):
            if ctl.deadline_ms <= target:
                # Lambda kills the container at its deadline, whatever it was doing.
                self.clock.set(max(self.clock.now_ms(), ctl.deadline_ms))
                self._unfreeze(ctl, kill=True)
                STATS["frozen_killed"] += 1
        self.clock.set(target)

    def sweep(self) -> None:
        report = jobstate.sweep(self.store, self.cont)
        STATS["swept"] += report.dispatched
        self._collect()

    def toggle_pause(self, kind: str) -> None:
        paused = kind not in self.paused
        self.store.set_paused(kind, paused)
        if paused:
            self.paused.add(kind)
        else:
            self.paused.discard(kind)

    def _parked(self, job_id: str) -> bool:
        t = self.terminal.get(job_id)
        return t is not None and t[0] == "FAILED" and job_id not in self.cancelled

    def _settle(self, job_id: str) -> None:
        """What the operator does for a parked job: ask the external system, settle, resume."""
        for fx in jobstate.list_effects(self.store, job_id):
            if fx["state"] == "STARTED":
                i = int(fx["key"].removeprefix("fx-"))
                if self.sink.runs[(job_id, i)]:
                    jobstate.mark_effect(self.store, job_id, fx["key"], done=True,
                                         result=f"{job_id}/{i}")
                else:
                    jobstate.mark_effect(self.store, job_id, fx["key"], done=False)
        self.store.resume(job_id)
        self.terminal.pop(job_id, None)
        STATS["settled"] += 1

    # -- invariants ----------------------------------------------------------------------

    def scan(self) -> tuple[dict[str, JobItem], dict[tuple[str, str], str]]:
        jobs: dict[str, JobItem] = {}
        effects: dict[tuple[str, str], str] = {}
        kw: dict[str, Any] = {}
        while True:
            resp = self.store.call("scan", ConsistentRead=True, **kw)
            for item in resp["Items"]:
                pk, sk = item["pk"]["S"], item["sk"]["S"]
                if sk == "JOB":
                    jobs[pk.removeprefix("JOB#")] = job_item(item)
                elif sk.startswith("FX#"):
                    effects[(pk.removeprefix("JOB#"), sk[3:])] = effect_item(item).state
            if "LastEvaluatedKey" not in resp:
                return jobs, effects
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def fail(self, message: str) -> None:
        self.broken = True
        raise Violation(message)

    @invariant()
    def protocol_invariants(self) -> None:
        STATS["checks"] += 1
        if self.problems:
            self.fail("; ".join(self.problems))
        jobs, effects = self.scan()
        for job_id, (kind, n) in self.jobs.items():
            item = jobs.get(job_id)
            if item is None:
                self.fail(f"job {job_id} vanished")
            status = item.status.value
            step = item.step
            cursor = json.loads(item.cursor or "{}")
            result = json.loads(item.result) if item.result is not None else None
            if step < self.last_step.get(job_id, 0):
                self.fail(f"{job_id} went back from step {self.last_step[job_id]} to {step}")
            self.last_step[job_id] = step
            if cursor != ({"i": step} if step else {}):
                self.fail(f"{job_id} at step {step} ({status}) has cursor {cursor}")
            for i in range(n):
                runs = self.sink.runs[(job_id, i)]
                if KINDS[kind][0] is Semantics.AT_MOST_ONCE and runs > 1:
                    self.fail(f"AT_MOST_ONCE effect fx-{i} of {job_id} ran {runs} times")
                if i < step and runs < 1:
                    self.fail(f"{job_id} committed past step {i} but fx-{i} never ran")
                if i < step and effects.get((job_id, f"fx-{i}")) != "DONE":
                    self.fail(f"{job_id} committed past step {i} without fx-{i} DONE")
            if status == "SUCCEEDED" and (step != n or result != self.reference(job_id)):
                self.fail(f"{job_id} succeeded at step {step} with {result}")
            if status == "CANCELLED" and job_id not in self.cancelled:
                self.fail(f"{job_id} is CANCELLED but nobody cancelled it")
            error = item.error or ""
            if status == "FAILED" and (kind != "amo"
                                       or item.error_type != "EffectOutcomeUnknown"):
                self.fail(f"{job_id} FAILED: {error}")
            seen = (status, step, result)
            if status in ("SUCCEEDED", "FAILED", "CANCELLED"):
                before = self.terminal.setdefault(job_id, seen)
                if before != seen:
                    self.fail(f"terminal {job_id} changed from {before} to {seen}")
                if status == "FAILED" and (job_id, seen) not in self.parks:
                    self.parks.add((job_id, seen))
                    STATS["parked"] += 1
            elif job_id in self.terminal:
                self.fail(f"terminal {job_id} {self.terminal[job_id]} became {status}")

    # -- liveness ------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if not self.broken:
                self.drive_to_quiescence()
        finally:
            for ctl in list(self.frozen):
                self._unfreeze(ctl, kill=True)
            faults.install(self._prev_hook)
            self.store.delete_table()

    def drive_to_quiescence(self) -> None:
        """Chaos off: what is pending is delivered, frozen invocations (still alive: the
        clock has not reached their deadline) go on, the operator lifts pauses and settles
        parked jobs, and deliveries and sweeps run until nothing is left to do."""
        while self.pending:
            self.deliver_now(self.pending.pop(0))
        for ctl in list(self.frozen):
            self._unfreeze(ctl, kill=False)
        for kind in list(self.paused):
            self.toggle_pause(kind)
        for _ in range(30):
            while self.pending:
                self.deliver_now(self.pending.pop(0))
            self.protocol_invariants()
            open_jobs = [j for j in self.jobs if j not in self.terminal]
            parked = [j for j in self.jobs if self._parked(j)]
            if not open_jobs and not parked:
                break
            for job_id in parked:
                self._settle(job_id)
            self.clock.advance(TIMEOUT_MS / 1000 + GRACE_S + DISPATCH_TIMEOUT_S + 1)
            self.sweep()
        self.protocol_invariants()
        for job_id, (kind, n) in self.jobs.items():
            status = self.terminal.get(job_id, ("open",))[0]
            if job_id in self.cancelled:
                if status != "CANCELLED":
                    self.fail(f"cancelled {job_id} ended {status}")
                continue
            if status != "SUCCEEDED":
                self.fail(f"liveness: {job_id} is {status} after the chaos stopped")
            for i in range(n):
                runs = self.sink.runs[(job_id, i)]
                if runs < 1 or (KINDS[kind][0] is Semantics.AT_MOST_ONCE and runs != 1):
                    self.fail(f"liveness: fx-{i} of finished {job_id} ran {runs} times")
            event(f"finished {kind}")
        STATS["examples"] += 1


# -- tests ---------------------------------------------------------------------------------


@pytest.fixture
def moto(engine: str | None, make_store: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The selected backend (make_store keeps moto's mock active on moto)."""
    monkeypatch.setattr(JobMachine, "endpoint_url", engine)


def test_step_protocol_state_machine(moto: Any) -> None:
    STATS.clear()
    t0 = time.monotonic()
    config = active(stateful_step_count=STEP_COUNT)
    run_state_machine_as_test(JobMachine, settings=config)
    took = time.monotonic() - t0
    print(f"\nstate machine: {STATS['examples']} examples in {took:.1f}s; {dict(STATS)}")
    if config.max_examples >= 100:
        # The run reached the paths it is for, not only happy ones. (Per-point counts vary
        # from run to run; these groups are reached many times in every ci run: reconcile
        # 77-105 times in 200 examples since start_jobs may kill a first delivery inside
        # its effect; 0-29 before, which once failed CI.)
        reached = {
            "died inside an effect": ("crash:effect_started", "crash:effect_called",
                                      "frozen:effect_started", "frozen:effect_called"),
            "died after its commit": ("crash:after_commit", "crash:after_dispatch",
                                      "frozen:after_commit", "frozen:after_dispatch"),
            "frozen, then went on": ("thawed",),
            "frozen, then timed out": ("frozen_killed",),
            "duplicate no-op": ("outcome:duplicate",),
            "in flight elsewhere": ("outcome:in_flight",),
            "reconcile asked": ("reconcile_asked",),
            "parked and settled": ("settled",),
        }
        for what, keys in reached.items():
            assert sum(STATS[k] for k in keys) > 0, (what, dict(STATS))


# -- the suite catches the bug it is for ----------------------------------------------------

@pytest.fixture
def claim_without_lease_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Break the claim: its condition no longer looks at the lease."""
    break_claim_lease_check(monkeypatch)


class WhileHoldersLive(JobMachine):
    """The same machine, with no clock jump past a deadline: whoever holds a lease (a
    frozen or killed invocation) still holds it when duplicates arrive."""

    @rule(what=st.sampled_from(["+1s", "+30s", "sweep", "pause", "cancel"]),
          i=st.integers(0, 9))
    def world_moves(self, what: str, i: int) -> None:
        JobMachine.world_moves(self, what, i)


class NoLeaseLedger(WhileHoldersLive):
    """...with only the effect sink to notice a broken claim: AT_MOST_ONCE jobs with a
    reconcile, and deliveries that freeze an invocation inside its step while a
    duplicate of its event stays pending."""

    check_leases = False
    only_kind = "amor"
    # The skew guard would stop this double run too (a take-over waits out the earlier
    # owner's lease before reconcile decides); it is off so the sink alone must see it.
    reconcile_guard_s = 0.0

    @rule(i=st.integers(0, 99), how=st.sampled_from(["once", "freeze+dup"]),
          point=st.sampled_from(["after_claim", "effect_started", "effect_called"]))
    def deliver(self, i: int, how: str, point: str) -> None:
        self._deliver(i, how, point)


# Generation only: the first failing example is the proof (shrinking it takes minutes).
# It is typically found within a few dozen examples; 1000 is a bound, not a budget.
# Derandomized: with a random seed the search took 2 s to 112 s (a CI run's worst case
# pushed the whole run past its 20 minutes); this seed finds each bug in under 15 s,
# every run.
BROKEN = active(max_examples=1000, stateful_step_count=STEP_COUNT, database=None,
                derandomize=True, phases=[Phase.generate], print_blob=False,
                report_multiple_bugs=False)


def test_broken_claim_is_caught_as_double_lease(moto: Any,
                                                 claim_without_lease_check: None) -> None:
    with pytest.raises(Violation, match="two live leases"):
        run_state_machine_as_test(WhileHoldersLive, settings=BROKEN)


def test_a_lease_that_ends_before_its_holder_is_caught(moto: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # The bug the store cannot see: the lease is written shorter than the invocation's
    # real deadline (here 2 s: above the 1.5 s reserve, or the step would fail at once as
    # one with no time for work), so a duplicate takes the step while its holder still runs.
    monkeypatch.setattr(jobstate.App, "_deadline_ms",
                        lambda self, context: self.clock.now_ms() + 2_000)
    with pytest.raises(Violation, match="its holder still running"):
        run_state_machine_as_test(WhileHoldersLive, settings=BROKEN)


def test_broken_claim_is_caught_as_double_effect(moto: Any,
                                                  claim_without_lease_check: None) -> None:
    # Without the lease ledger, the effect sink itself sees the damage: a duplicate takes
    # the step while the first invocation is inside its effect, reconcile says "not yet",
    # and both run the AT_MOST_ONCE effect.
    with pytest.raises(Violation, match=r"AT_MOST_ONCE effect .* ran [2-9] times"):
        run_state_machine_as_test(NoLeaseLedger, settings=BROKEN)
