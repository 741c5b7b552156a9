"""Exhaustive small-scope check: two concurrent invocations of one step (issue 6.3).

Two deliveries A and B of the same event (step 0 of a job whose step 0 checkpoints, runs
one AT_MOST_ONCE / AT_LEAST_ONCE effect and commits, and whose step 1 completes) run in
their own threads; every named crash point of the runtime (`jobstate.faults`, plus one
after the step's checkpoint) is a yield point where the scheduler decides who runs next.
Between two yield points lies one protocol operation:

    claim | checkpoint | effect STARTED | effect call | effect DONE | commit | dispatch

The scheduler enumerates EVERY schedule, not a sample: a depth-first search over the
choices "run A's next operation", "run B's next operation", "kill A here", "kill A here
and move the clock past A's lease" and "kill B here", re-running the scenario from
scratch for each branch. An invocation's path depends on the other's (a claim that finds
the step in flight ends it after one operation), so this is the dynamic form of "every
way to place A's operations among B's" (the static C(14, 7) placements collapse to the
executions that can really happen); each complete schedule runs once and is counted.
A has a 10 s timeout and B 60 s, so moving the clock past A's lease (A is dead by then)
leaves B alive.

After each schedule the chaos stops: pending events are delivered and the sweeper run
(moving the clock) until the job is terminal. Checked for every schedule:
- the effect ran at most once (AT_MOST_ONCE) / at least once (AT_LEAST_ONCE);
- step 0 committed exactly once and step 1 was claimed and run exactly once, however
  many continuations were sent;
- never two live leases at once; no delivery raised; each step started from the state
  committed (or checkpointed) before it;
- the job SUCCEEDED with the reference result, or (AT_MOST_ONCE without reconcile, and
  only when an invocation died inside the effect) is parked FAILED with
  EffectOutcomeUnknown, still at step 0.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import break_claim_lease_check

import jobstate
from jobstate import NOT_DONE, JobStatus, Semantics, faults, step_event
from jobstate.items import job_item
from jobstate.testing import Crash, FakeLambdaContext, dynamodb_client

pytestmark = pytest.mark.integration  # on every backend: moto, and AWS's DynamoDB Local

A_TIMEOUT_MS = 10_000
B_TIMEOUT_MS = 60_000
GRACE_S = 5.0
# Every point after which an invocation has done one more protocol operation. The last
# point, after_dispatch, is followed by nothing but the return, so it is not a yield.
YIELDS = ("before_claim", "after_claim", "checkpointed", "effect_started", "effect_called",
          "before_commit", "after_commit")
IN_EFFECT = ("effect_started", "effect_called")
VARIANTS: dict[str, tuple[Semantics, bool]] = {
    "amo": (Semantics.AT_MOST_ONCE, False),
    "amor": (Semantics.AT_MOST_ONCE, True),
    "alo": (Semantics.AT_LEAST_ONCE, False),
}


@dataclass
class Inv:
    """One invocation: its event, and (if scheduled) the handshake with the scheduler."""

    name: str
    event: dict[str, Any]
    scheduled: bool
    points: list[str] = field(default_factory=list)
    resume: threading.Event = field(default_factory=threading.Event)
    parked: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    kill: bool = False
    outcome: str | None = None
    lease: tuple[str, int] | None = None  # (owner, expires_at) while it holds one

    @property
    def step(self) -> int:
        return int(self.event["jobstate"]["step"])


class World:
    """One table and app; runs schedules of A and B against fresh jobs."""

    def __init__(self, variant: str, endpoint_url: str | None = None) -> None:
        self.variant = variant
        semantics, reconcile = VARIANTS[variant]
        self.clock = jobstate.ManualClock()
        self.store = jobstate.JobStore(f"il-{uuid.uuid4().hex[:10]}", region="us-east-1",
                                       endpoint_url=endpoint_url, clock=self.clock,
                                       client=dynamodb_client(endpoint_url))
        self.store.create_table()
        self.cont = jobstate.InMemoryContinuation()
        self.app = jobstate.App(self.store, self.cont, lease_grace_s=GRACE_S)
        self.local = threading.local()
        self.runs: Counter[str] = Counter()  # sink: job id -> times the effect ran
        self.problems: list[str] = []
        self.claims: list[tuple[Inv, str, int]] = []
        self.commits: Counter[int] = Counter()
        self.step1_runs = 0
        self.n = 0
        self.reached: dict[str, set[str]] = {"A": set(), "B": set()}

        @self.app.job("pair")
        def pair(ctx: jobstate.StepContext) -> Any:
            if ctx.step == 0:
                if ctx.cursor not in ({}, {"i": 0, "phase": "checkpointed"}):
                    self.problems.append(f"step 0 saw cursor {ctx.cursor}")
                ctx.cursor = {"i": 0, "phase": "checkpointed"}
                ctx.checkpoint()
                faults.point("checkpointed", job_id=ctx.job_id, step=ctx.step)
                value = ctx.once("fx", self.effect, ctx.job_id, semantics=semantics,
                                 reconcile=self.reconcile if reconcile else None)
                ctx.cursor = {"i": 1, "fx": value}
                return None
            if ctx.cursor != {"i": 1, "fx": f"done:{ctx.job_id}"}:
                self.problems.append(f"step {ctx.step} saw cursor {ctx.cursor}")
            self.step1_runs += 1
            ctx.cursor = {"i": 2, "fx": ctx.cursor.get("fx")}
            return ctx.complete({"fx": ctx.cursor["fx"]})

    def effect(self, job_id: str) -> str:
        self.runs[job_id] += 1
        return f"done:{job_id}"

    def reconcile(self, job_id: str) -> Any:
        return f"done:{job_id}" if self.runs[job_id] else NOT_DONE

    # -- invocations -------------------------------------------------------------------

    def hook(self, name: str, info: dict[str, Any]) -> None:
        inv: Inv | None = getattr(self.local, "inv", None)
        if inv is None:
            return
        inv.points.append(name)
        if name == "after_claim":
            self.on_claim(inv, info["job_id"])
        elif name == "after_commit":
            self.commits[inv.step] += 1
            inv.lease = None
        if inv.scheduled and name in YIELDS:
            inv.parked.set()
            inv.resume.wait()
            inv.resume.clear()
            if inv.kill:
                raise Crash(name)

    def on_claim(self, inv: Inv, job_id: str) -> None:
        raw = self.store.get_raw(job_id) or {}
        item = job_item(raw) if raw else None
        owner = (item.lease_owner if item else None) or "?"
        expires = (item.lease_expires_at if item else None) or 0
        now = self.clock.now_ms()
        for other, other_owner, other_expires in self.claims:
            # The stored expiry says the lease is live; `not other.finished` says its
            # holder is still running (ground truth: a lease that ended before its holder
            # died is a bug even if the store agrees with itself).
            if other is not inv and other.lease is not None and (
                    other_expires >= now or not other.finished):
                self.problems.append(f"{inv.name} claimed step {inv.step} while "
                                     f"{other.name} ({other_owner}) held it")
        self.claims.append((inv, owner, expires))
        inv.lease = (owner, expires)

    def run(self, inv: Inv, timeout_ms: int) -> None:
        self.local.inv = inv
        try:
            report = self.app.handler(inv.event, FakeLambdaContext(self.clock, timeout_ms))
            inv.outcome = report["outcome"]
        except Crash:
            inv.outcome = "killed"
        except BaseException as exc:  # a delivery must never raise
            inv.outcome = "raised"
            self.problems.append(f"{inv.name} raised {type(exc).__name__}: {exc}")
        finally:
            if inv.outcome != "killed":
                inv.lease = None
            self.local.inv = None
            inv.finished = True
            inv.parked.set()

    def start(self, inv: Inv, timeout_ms: int) -> None:
        threading.Thread(target=self.run, args=(inv, timeout_ms), daemon=True).start()
        self.wait(inv)

    def wait(self, inv: Inv) -> None:
        if not inv.parked.wait(30):
            raise RuntimeError(f"{inv.name} neither yielded nor finished")

    def advance(self, inv: Inv, *, kill: bool = False) -> None:
        inv.kill = kill
        inv.parked.clear()
        inv.resume.set()
        self.wait(inv)

    # -- one schedule ------------------------------------------------------------------

    def schedule(self, prefix: list[str]) -> list[tuple[tuple[str, ...], str]]:
        """Run A and B following `prefix`, then the first enabled choice; check; return
        the decisions taken (with what else was possible at each)."""
        self.n += 1
        job_id = f"{self.variant}-{self.n}"
        self.problems, self.claims, self.commits, self.step1_runs = [], [], Counter(), 0
        self.app.start("pair", None, job_id=job_id)
        self.cont.pop_all()  # A and B are the deliveries of step 0
        event = step_event(job_id, 0, "pair")
        a, b = Inv("A", event, True), Inv("B", event, True)
        t0 = self.clock.now_ms()
        self.start(a, A_TIMEOUT_MS)
        self.start(b, B_TIMEOUT_MS)
        died: dict[str, str] = {}
        decisions: list[tuple[tuple[str, ...], str]] = []
        while True:
            enabled: list[str] = []
            if not a.finished:
                enabled += ["A", "kill A"]
                if a.lease is not None:
                    enabled.append("kill A, time passes")
            if not b.finished:
                enabled += ["B", "kill B"]
            if not enabled:
                break
            i = len(decisions)
            choice = prefix[i] if i < len(prefix) else enabled[0]
            assert choice in enabled, f"replay diverged at {i}: {choice} not in {enabled}"
            decisions.append((tuple(enabled), choice))
            inv = a if "A" in choice else b
            if choice.startswith("kill"):
                died[inv.name] = inv.points[-1]
            self.advance(inv, kill=choice.startswith("kill"))
            if choice == "kill A, time passes":
                # A is past its timeout; its lease (deadline + grace) has expired.
                self.clock.set(t0 + A_TIMEOUT_MS + int(GRACE_S * 1000) + 1_000)
        for inv in (a, b):
            self.reached[inv.name].update(p for p in inv.points if p in YIELDS)
        self.finish(job_id, died, decisions)
        self.forget(job_id)
        return decisions

    def forget(self, job_id: str) -> None:
        """Delete the job's items: moto's queries scan the table, keep it small."""
        items = self.store.call("query", KeyConditionExpression="pk = :pk",
                                ExpressionAttributeValues={":pk": {"S": f"JOB#{job_id}"}},
                                ProjectionExpression="pk, sk")["Items"]
        for item in items:
            self.store.call("delete_item", Key={"pk": item["pk"], "sk": item["sk"]})

    def finish(self, job_id: str, died: dict[str, str],
               decisions: list[tuple[tuple[str, ...], str]]) -> None:
        """Chaos off: deliver and sweep to quiescence, then check the invariants."""
        for _ in range(6):
            for event in self.cont.pop_all():
                self.run(Inv("late", event, False), B_TIMEOUT_MS)
            job = self.store.get(job_id)
            if job.status.terminal:
                break
            self.clock.advance(300)
            jobstate.sweep(self.store, self.cont)
        job = self.store.get(job_id)
        where = f"schedule {[d[1] for d in decisions]} (died: {died})"
        runs = self.runs[job_id]
        semantics, reconcile = VARIANTS[self.variant]
        assert not self.problems, (self.problems, where)
        if semantics is Semantics.AT_MOST_ONCE:
            assert runs <= 1, (f"effect ran {runs} times", where)
        parked = (semantics is Semantics.AT_MOST_ONCE and not reconcile
                  and any(point in IN_EFFECT for point in died.values()))
        if parked:
            assert job.status is JobStatus.FAILED, (job.status, where)
            assert job.error_type == "EffectOutcomeUnknown", (job.error, where)
            assert self.commits[0] == 0 and self.step1_runs == 0, where
            assert job.step == 0, (job.step, where)
            return
        assert job.status is JobStatus.SUCCEEDED, (job.status, job.error, where)
        assert job.result == {"fx": f"done:{job_id}"}, (job.result, where)
        assert job.step == 2 and job.cursor == {"i": 2, "fx": f"done:{job_id}"}, where
        assert runs >= 1, where
        if semantics is Semantics.AT_MOST_ONCE:
            assert runs == 1, where
        assert self.commits[0] == 1, (f"step 0 committed {self.commits[0]} times", where)
        step1_claims = sum(1 for inv, _, _ in self.claims if inv.step == 1)
        assert step1_claims == 1 and self.step1_runs == 1, (step1_claims, where)


def enumerate_all(world: World) -> tuple[int, Counter[str]]:
    """Depth-first over every schedule; returns how many ran and how A ended."""
    seen: set[tuple[str, ...]] = set()
    endings: Counter[str] = Counter()
    stack: list[list[str]] = [[]]
    while stack:
        prefix = stack.pop()
        decisions = world.schedule(prefix)
        choices = tuple(c for _, c in decisions)
        assert choices not in seen, f"schedule {choices} ran twice"
        seen.add(choices)
        kills = [c for c in choices if c.startswith("kill")]
        endings[" + ".join(kills) or "no crash"] += 1
        for i in range(len(prefix), len(decisions)):
            enabled, chosen = decisions[i]
            for alt in enabled:
                if alt != chosen:
                    stack.append([*choices[:i], alt])
    return len(seen), endings


@pytest.fixture
def hooked(engine: str | None, make_store: Any) -> str | None:
    """The selected backend's endpoint (make_store keeps moto's mock active on moto)."""
    return engine


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_interleaving_of_two_deliveries(hooked: Any, variant: str) -> None:
    world = World(variant, hooked)
    prev = faults.install(world.hook)
    t0 = time.monotonic()
    try:
        count, endings = enumerate_all(world)
    finally:
        faults.install(prev)
    print(f"\n{variant}: {count} schedules checked in {time.monotonic() - t0:.1f}s "
          f"({dict(endings)})")
    assert endings["no crash"] > 0 and endings["kill A"] > 0 and endings["kill B"] > 0
    assert endings["kill A, time passes"] > 0 and endings["kill A + kill B"] > 0
    # Every operation boundary was a place where the other invocation could run, for
    # both of them: a crash point that stops firing would shrink the search silently.
    assert world.reached == {"A": set(YIELDS), "B": set(YIELDS)}, world.reached


def test_the_enumeration_catches_a_claim_without_lease_check(
        hooked: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: with the claim's lease clause removed, some schedule must fail."""
    break_claim_lease_check(monkeypatch)
    world = World("amor", hooked)
    prev = faults.install(world.hook)
    try:
        with pytest.raises(AssertionError, match="claimed step 0 while"):
            enumerate_all(world)
    finally:
        faults.install(prev)
