"""Fan-out (issue 4): worker chains with a join, a concurrency cap, failure policies,
cancel/pause propagation and progress roll-up.

Every "at no point" claim is checked from the store's own records while the run goes on
(the parent's item after every delivery; the children's items, by deterministic id, with
BatchGetItem), never from counters kept by the test.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
from conftest import drain

import jobstate
from jobstate import JobStatus
from jobstate.items import JobItem, child_item, job_item
from jobstate.schema import J
from jobstate.schema import job_key as _job_key
from jobstate.testing import Driver, FakeLambdaContext

pytestmark = pytest.mark.integration


class KeyWrites:
    """Counts write actions (UpdateItem/PutItem/DeleteItem, or one action inside a
    TransactWriteItems) that touch one item, and requests per operation."""

    WRITES = ("UpdateItem", "PutItem", "DeleteItem", "TransactWriteItems")

    def __init__(self, store: jobstate.JobStore, key: dict[str, Any]) -> None:
        self.key = key
        self.hits = 0
        self.ops: list[str] = []
        store.client.meta.events.register("before-parameter-build.dynamodb", self._on)

    def _on(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.ops.append(model.name)
        if model.name == "TransactWriteItems":
            bodies = [body for action in params["TransactItems"] for body in action.values()]
        elif model.name in self.WRITES:
            bodies = [params]
        else:
            return
        for body in bodies:
            key = body.get("Key") or {k: body["Item"][k] for k in ("pk", "sk")}
            if key == self.key:
                self.hits += 1

    @property
    def writes(self) -> int:
        return sum(op in self.WRITES for op in self.ops)

    def reset(self) -> None:
        self.hits = 0
        self.ops.clear()


def child_views(store: jobstate.JobStore, parent_id: str, spawn_step: int,
                n: int) -> list[dict[str, Any]]:
    """The children's own job items (only the fields the checks need), by deterministic id."""
    out: list[dict[str, Any]] = []
    for start in range(0, n, 100):
        keys = [_job_key(jobstate.records.child_id(parent_id, spawn_step, i))
                for i in range(start, min(n, start + 100))]
        resp = store.call("batch_get_item", RequestItems={store.table_name: {
            "Keys": keys, "ConsistentRead": True}})
        assert not resp.get("UnprocessedKeys")
        for item in map(job_item, resp["Responses"][store.table_name]):
            out.append({"job_id": item.job_id, "status": item.status,
                        "lease": item.lease_expires_at or 0,
                        "not_before": item.not_before or 0})
    return out


def register_parent(app: jobstate.App, runs: list[int], *, children: int | None = None,
                    total: int = 0, chains: int = 0, child_type: str = "chunk",
                    max_concurrency: int | None = None, policy: str = "fail") -> None:
    @app.job("parent", max_steps=20)
    def parent(ctx: jobstate.StepContext) -> Any:
        runs.append(ctx.step)
        if not ctx.cursor.get("spawned"):
            ctx.cursor["spawned"] = True
            if children is not None:
                ctx.spawn(child_type, [{"i": i} for i in range(children)],
                          max_concurrency=max_concurrency, on_child_failure=policy)
            else:
                ctx.spawn_chains(child_type, total=total, chains=chains,
                                 max_concurrency=max_concurrency, on_child_failure=policy)
        kids = ctx.children()
        return ctx.complete({
            "n": len(kids),
            "statuses": dict(Counter(k.status.value for k in kids)),
            "sum": sum(k.result for k in kids if isinstance(k.result, int)),
            "failed": [k.child_id for k in kids if k.status is not JobStatus.SUCCEEDED],
        })


def register_chunk(app: jobstate.App, steps: int = 1, fail: set[int] | None = None,
                   hook: Any = None) -> None:
    @app.job("chunk", max_steps=20, retry=jobstate.RetryPolicy(max_attempts=1))
    def chunk(ctx: jobstate.StepContext) -> Any:
        if hook is not None:
            hook(ctx)
        i = ctx.input.get("i", ctx.input.get("start"))
        n = ctx.cursor.get("n", 0) + 1
        ctx.cursor["n"] = n
        ctx.progress(n, steps, "steps")
        if n < steps:
            return None
        if fail and i in fail:
            raise ValueError(f"bad row in chunk {i}")
        size = ctx.input["end"] - ctx.input["start"] if "end" in ctx.input else i
        return ctx.complete(size)


# -- 1,000 children ---------------------------------------------------------------------------


@pytest.fixture
def fast_moto_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto snapshots the *whole table* (a deepcopy per action) before every
    TransactWriteItems so it can roll back, which makes 1,000 joins quadratic (minutes, and
    gigabytes). Snapshot only the items the transaction names instead: the same rollback,
    since a transaction can change nothing else."""
    import types

    from moto.dynamodb import models

    real_copy = models.copy
    real = models.DynamoDBBackend.transact_write_items

    def no_table_copy(obj: Any, *a: Any) -> Any:
        return obj if isinstance(obj, models.Table) else real_copy.deepcopy(obj, *a)

    def transact(self: Any, transact_items: list[dict[str, Any]]) -> None:
        saved = []
        for action in transact_items:
            op = next(iter(action.values()))
            table = self.get_table(op["TableName"])
            key = op.get("Key") or {a: op["Item"][a] for a in (table.hash_key_attr,
                                                               table.range_key_attr) if a}
            old = self.get_item(op["TableName"], key)
            saved.append((op["TableName"], key,
                          None if old is None else real_copy.deepcopy(old.to_json())))
        monkeypatch.setattr(models, "copy", types.SimpleNamespace(deepcopy=no_table_copy))
        try:
            real(self, transact_items)
        except Exception:
            for table_name, key, old in reversed(saved):
                if old is None:
                    if self.get_item(table_name, key) is not None:
                        self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, old["Attributes"])
            raise
        finally:
            monkeypatch.setattr(models, "copy", real_copy)

    monkeypatch.setattr(models.DynamoDBBackend, "transact_write_items", transact)


@pytest.mark.skipif(os.environ.get("JOBSTATE_TEST_BACKEND", "moto") != "moto",
                    reason="1,000 children: moto in-process only (speed)")
def test_thousand_children_join_exactly_once(app, cont, store, clock, fast_moto_transactions):
    n = 1000
    runs: list[int] = []
    register_parent(app, runs, total=100 * n, chains=n)
    register_chunk(app)
    pid = app.start("parent", None, job_id="big")
    parent_key = _job_key(pid)
    writes = KeyWrites(store, parent_key)
    d = Driver(app, cont, clock, seed=11, duplicates=0.05)

    child_costs: list[tuple[int, int]] = []
    pending_seen: list[int] = []
    while True:
        d._collect()
        if not d.queue:
            break
        event = d.queue.pop(d.rng.randrange(len(d.queue)))
        writes.reset()
        report = d.deliver(event)
        assert report is not None
        if event["jobstate"]["job_type"] == "chunk" and report["outcome"] == "completed":
            child_costs.append((writes.writes, writes.hits))
        raw = store.get_raw(pid)
        assert raw is not None
        pending = job_item(raw).pending or 0
        assert pending >= 0, f"pending went to {pending}"
        pending_seen.append(pending)

    parent = store.get(pid)
    assert parent.status is JobStatus.SUCCEEDED
    assert runs == [0, 1]  # resumed exactly once
    assert parent.result == {"n": n, "statuses": {"SUCCEEDED": n}, "sum": 100 * n,
                             "failed": []}
    assert parent.pending_children == 0
    assert min(pending_seen) == 0 and max(pending_seen) == n
    # Every child's result is visible to the parent, in order.
    kids = jobstate.fanout.children(store, pid)
    assert [k.index for k in kids] == list(range(n))
    assert all(k.result == 100 for k in kids)
    # Joins are O(1): each completing child wrote a constant number of times, and touched
    # the parent item exactly once (its join), whatever the number of children.
    assert len(child_costs) == n
    assert max(w for w, _ in child_costs) <= 2  # claim + terminal transaction
    assert {h for _, h in child_costs} == {1}
    assert d.stats.duplicates > 0  # duplicates were delivered, and harmless


def test_parent_item_written_once_per_join_plus_its_own_steps(app, cont, store, clock):
    n = 30
    runs: list[int] = []
    register_parent(app, runs, children=n)
    register_chunk(app, steps=2)
    pid = app.start("parent", None, job_id="writes")
    writes = KeyWrites(store, _job_key(pid))
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(pid).status is JobStatus.SUCCEEDED
    # 2 parent steps x (claim + commit) + one join per child; child steps never touch it.
    assert writes.hits == 2 * 2 + n
    # A duplicate parent continuation afterwards is a no-op.
    report = app.handler(jobstate.step_event(pid, 1, "parent"), FakeLambdaContext(clock))
    assert report["outcome"] in ("finished", "duplicate")
    assert runs == [0, 1]


# -- the concurrency cap --------------------------------------------------------------------


def test_max_concurrency_is_never_exceeded_under_chaos(app, cont, store, clock, monkeypatch,
                                                       fast_moto_transactions):
    n, cap = 40, 10
    runs: list[int] = []
    register_parent(app, runs, children=n, max_concurrency=cap)
    observed: list[tuple[int, int]] = []

    def check(ctx: Any = None) -> None:
        kids = child_views(store, "capped", 0, n)
        if ctx is None and not kids:
            return  # the parent has not spawned yet
        assert len(kids) == n
        now = clock.now_ms()
        running = sum(k["status"] is JobStatus.RUNNING or k["lease"] >= now for k in kids)
        live = sum(not k["status"].terminal and k["not_before"] != jobstate.transitions.QUEUED_UNTIL
                   for k in kids)
        assert running <= cap, f"{running} children RUNNING"
        assert live <= cap, f"{live} children runnable"
        observed.append((running, live))

    register_chunk(app, steps=3, hook=check)  # checked from inside every child step too
    real = app.handler

    def checked_handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
        try:
            return real(event, context)
        finally:
            check()

    monkeypatch.setattr(app, "handler", checked_handler)
    pid = app.start("parent", None, job_id="capped")
    d = Driver(app, cont, clock, seed=5, duplicates=0.2, crashes=0.05, lost=0.05,
               crash_points=("after_claim", "before_commit", "after_commit"))
    d.run_until_done([pid], calm_after=20)

    parent = store.get(pid)
    assert parent.status is JobStatus.SUCCEEDED
    assert parent.result["n"] == n and parent.result["statuses"] == {"SUCCEEDED": n}
    assert runs.count(1) == 1  # the resumed step ran once
    assert max(live for _, live in observed) == cap  # the cap was reached, never passed
    assert d.stats.crashes > 0 and d.stats.duplicates > 0


# -- failure policies -------------------------------------------------------------------------


def test_failed_child_with_policy_fail_fails_the_parent_naming_it(app, cont, store, clock):
    runs: list[int] = []
    register_parent(app, runs, children=5, policy="fail")
    register_chunk(app, fail={3})
    pid = app.start("parent", None, job_id="pf")
    drain(app, cont, FakeLambdaContext(clock))
    parent = store.get(pid)
    assert parent.status is JobStatus.FAILED
    bad = jobstate.records.child_id(pid, 0, 3)
    assert bad in (parent.error or "") and "bad row in chunk 3" in (parent.error or "")
    assert runs == [0]  # the parent's own code never ran on a failed fan-out


def test_failed_child_with_policy_continue_is_reported_to_the_parent(app, cont, store, clock):
    runs: list[int] = []
    register_parent(app, runs, children=5, policy="continue")
    register_chunk(app, fail={1, 3})
    pid = app.start("parent", None, job_id="pc")
    drain(app, cont, FakeLambdaContext(clock))
    parent = store.get(pid)
    assert parent.status is JobStatus.SUCCEEDED
    assert parent.result["statuses"] == {"SUCCEEDED": 3, "FAILED": 2}
    assert parent.result["failed"] == [jobstate.records.child_id(pid, 0, i) for i in (1, 3)]
    assert parent.result["sum"] == 0 + 2 + 4
    views = {c.index: c for c in jobstate.fanout.children(store, pid)}
    assert "bad row in chunk 1" in (views[1].error or "")


def test_child_finishing_twice_never_double_counts(app, cont, store, clock):
    runs: list[int] = []
    register_parent(app, runs, children=3, policy="continue")
    register_chunk(app, fail={2})

    pid = app.start("parent", None, job_id="twice")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(pid).status is JobStatus.SUCCEEDED
    # The failed child is resumed by an operator and finishes again: its second terminal
    # commit must not join (decrement) the parent a second time.
    bad = jobstate.records.child_id(pid, 0, 2)
    store.resume(bad)
    jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(bad).status is JobStatus.FAILED  # same input, same failure
    raw = store.get_raw(pid)
    assert raw is not None and job_item(raw).pending == 0
    assert len(jobstate.fanout.children(store, pid)) == 3
    assert runs == [0, 1]


# -- crash safety ---------------------------------------------------------------------------


@pytest.mark.parametrize("point", ["before_commit", "after_commit"])
def test_parent_crash_around_spawn_creates_no_duplicate_children(app, cont, store, clock,
                                                                 point):
    runs: list[int] = []
    register_parent(app, runs, children=6, max_concurrency=2)
    register_chunk(app)
    pid = app.start("parent", None, job_id=f"crash-{point}")
    d = Driver(app, cont, clock)
    assert d.deliver(cont.pop_all()[0], crash_at=point) is None
    d.run_until_done([pid])
    parent = store.get(pid)
    assert parent.status is JobStatus.SUCCEEDED
    assert parent.result["n"] == 6 and parent.result["sum"] == sum(range(6))
    assert parent.pending_children == 0
    kids = [j for j in store.iter_jobs("chunk")]
    assert sorted(k.job_id for k in kids) == sorted(jobstate.records.child_id(pid, 0, i)
                                                     for i in range(6))


# -- cancel, pause, roll-up -----------------------------------------------------------------


def test_cancel_tree_cancels_running_and_queued_children(app, cont, store, clock):
    n = 12
    runs: list[int] = []
    register_parent(app, runs, children=n, max_concurrency=4)
    register_chunk(app, steps=3)
    pid = app.start("parent", None, job_id="cancel-me")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))  # spawns; 4 children started
    for e in cont.pop_all():
        app.handler(e, FakeLambdaContext(clock))  # each child did one step
    before = child_views(store, pid, 0, n)
    assert Counter(k["status"] for k in before) == {JobStatus.RUNNING: 4, JobStatus.PENDING: 8}

    changed = jobstate.cancel_tree(store, pid)
    assert changed == 1 + n
    assert store.get(pid).status is JobStatus.CANCELLED
    assert {k["status"] for k in child_views(store, pid, 0, n)} == {JobStatus.CANCELLED}
    # In-flight continuations and later sweeps run nothing.
    reports = drain(app, cont, FakeLambdaContext(clock))
    assert reports and {r["outcome"] for r in reports} == {"finished"}
    clock.advance(3600)
    assert jobstate.sweep(store, cont).dispatched == 0
    assert runs == [0]
    assert jobstate.cancel_tree(store, pid) == 1  # idempotent


def test_pausing_the_parent_type_pauses_its_children(make_store, cont, clock):
    store = make_store(pause_cache_s=0)
    app = jobstate.App(store, cont)
    runs: list[int] = []
    register_parent(app, runs, children=3)
    register_chunk(app)
    pid = app.start("parent", None, job_id="paused-tree")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    store.set_paused("parent", True)
    reports = [app.handler(e, FakeLambdaContext(clock)) for e in cont.pop_all()]
    assert [r["outcome"] for r in reports] == ["paused"] * 3
    clock.advance(600)
    assert jobstate.sweep(store, cont).dispatched == 0
    store.set_paused("parent", False)
    jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(pid).status is JobStatus.SUCCEEDED


def test_progress_rolls_up_from_the_children(app, cont, store, clock):
    n, steps = 4, 5
    runs: list[int] = []
    register_parent(app, runs, children=n)
    register_chunk(app, steps=steps)
    pid = app.start("parent", None, job_id="rollup")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    assert jobstate.rollup(store, store.get(pid)) == jobstate.Progress(0, n, "items")
    # One step of each child: each reports 1/5 on its own item.
    for e in cont.pop_all():
        app.handler(e, FakeLambdaContext(clock))
    p = jobstate.rollup(store, store.get(pid))
    assert (p.done, p.total, p.unit) == (n, n * steps, "steps")
    assert p.fraction == pytest.approx(0.2)
    drain(app, cont, FakeLambdaContext(clock))
    p = jobstate.rollup(store, store.get(pid))
    assert (p.done, p.total) == (n * steps, n * steps)
    # A job without children reports its own progress.
    assert jobstate.rollup(store, store.get(jobstate.records.child_id(pid, 0, 0))).done == steps


def test_spawn_validates_before_writing(app, cont, store, clock):
    errors: list[str] = []

    @app.job("bad")
    def bad(ctx: jobstate.StepContext) -> Any:
        for kw in ({"max_concurrency": 0}, {"on_child_failure": "ignore"},
                   {"child_ids": ["a", "a"]}):
            with pytest.raises(jobstate.InvalidInput) as info:
                ctx.spawn("chunk", [{"i": 0}, {"i": 1}], **kw)
            errors.append(str(info.value))
        return ctx.complete()

    register_chunk(app)
    jid = app.start("bad", None, job_id="bad")
    drain(app, cont, FakeLambdaContext(clock))
    assert store.get(jid).status is JobStatus.SUCCEEDED
    assert len(errors) == 3
    assert list(store.iter_jobs("chunk")) == []
    assert jobstate.chain_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert jobstate.chain_ranges(2, 5) == [(0, 1), (1, 2)]


# -- pause through a tree, cancelled parents, re-run spawns ------------------------------------


def register_tree(app: jobstate.App, ran: list[str]) -> None:
    """root -> mid -> leaf, one child each."""
    for name, child in (("root", "mid"), ("mid", "leaf")):
        def step(ctx: jobstate.StepContext, child: str = child) -> Any:
            if not ctx.cursor.get("spawned"):
                ctx.cursor["spawned"] = True
                ctx.spawn(child, [{}])
            return ctx.complete(ctx.job_type)

        app.job(name)(step)

    @app.job("leaf")
    def leaf(ctx: jobstate.StepContext) -> Any:
        ran.append(ctx.job_id)
        return ctx.complete("leaf")


def tree_with_a_leaf_sent(make_store: Any, cont: jobstate.InMemoryContinuation,
                          clock: jobstate.ManualClock
                          ) -> tuple[jobstate.JobStore, jobstate.App, list[str], Any, Any]:
    """root -> mid -> leaf, run until the leaf's first step event is sent (not run):
    the store, the app, the leaves that ran, the invocation context, the leaf's event."""
    store = make_store(pause_cache_s=0)
    app = jobstate.App(store, cont)
    ran: list[str] = []
    register_tree(app, ran)
    app.start("root", None, job_id="r")
    ctx = FakeLambdaContext(clock)
    app.handler(cont.pop_all()[0], ctx)  # root spawns mid
    app.handler(cont.pop_all()[0], ctx)  # mid spawns leaf
    [leaf_event] = cont.pop_all()
    return store, app, ran, ctx, leaf_event


def test_pausing_the_root_type_pauses_grandchildren_and_resuming_wakes_them(
        make_store, cont, clock):
    store, app, ran, ctx, leaf_event = tree_with_a_leaf_sent(make_store, cont, clock)
    store.set_paused("root", True)
    assert leaf_event["jobstate"]["ancestors"] == ["root", "mid"]
    assert app.handler(leaf_event, ctx)["outcome"] == "paused" and ran == []
    clock.advance(600)
    assert jobstate.sweep(store, cont).dispatched == 0 and ran == []
    assert store.set_paused("root", False) >= 1  # the leaf, two levels down, is due now
    jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))  # a new invocation: the old one timed out
    assert ran == ["r.s0.0.s0.0"] and store.get("r").status is JobStatus.SUCCEEDED


def spawned(app: jobstate.App, cont: jobstate.InMemoryContinuation,
            clock: jobstate.ManualClock, job_id: str, children: int, **opts: Any) -> None:
    """A parent of `children` chunks that has run its spawning step (children not run)."""
    register_parent(app, [], children=children, **opts)
    register_chunk(app)
    app.start("parent", None, job_id=job_id)
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))


def item_of(store: jobstate.JobStore, job_id: str) -> JobItem:
    return job_item(store.get_raw(job_id))


def test_a_cancelled_tree_leaves_nothing_for_the_sweeper_to_look_at(app, cont, store, clock):
    spawned(app, cont, clock, "cp", 3)
    assert jobstate.cancel_tree(store, "cp") == 4
    for job_id in ("cp", "cp.s0.0", "cp.s0.1", "cp.s0.2"):
        job = item_of(store, job_id)
        assert job.due_at is None and job.in_bucket("CANCELLED"), job
    clock.advance(3600)
    assert jobstate.sweep(store, cont).scanned == 0  # in neither the due index nor ACTIVE


def test_a_re_run_spawn_costs_a_few_requests_not_one_per_child(app, cont, store, clock):
    from conftest import RequestLog

    @app.job("wide")
    def wide(ctx: jobstate.StepContext) -> Any:
        ctx.spawn("chunk", [{"i": i} for i in range(300)], max_concurrency=5)

    register_chunk(app)
    app.start("wide", None, job_id="wide")
    driver = Driver(app, cont, clock)
    log = RequestLog(store)
    driver.deliver(cont.pop_all()[0], crash_at="before_commit")  # children made, no commit
    first = log.writes
    driver.sweep()
    log.reset()
    driver.deliver(cont.pop_all()[0], crash_at="before_commit")  # the spawn runs again
    assert log.writes <= 2 * first, (first, log.ops)
    assert "PutItem" not in log.ops


def test_children_and_the_failure_policy_see_only_the_latest_spawn(app, cont, store, clock):
    seen: dict[int, list[str]] = {}

    @app.job("twice")
    def twice(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn("pick", [True, False], on_child_failure="continue")
        if ctx.step == 1:
            seen[1] = [c.status.value for c in ctx.children()]
            ctx.spawn("pick", [True, True])  # policy 'fail': spawn 1's failure is not its
        seen[2] = [c.child_id for c in ctx.children()]
        return ctx.complete(None)

    @app.job("pick", max_attempts=1)
    def pick(ctx: jobstate.StepContext) -> Any:
        return ctx.complete("ok") if ctx.input else ctx.fail("bad input")

    app.start("twice", None, job_id="tw")
    drain(app, cont, clock)
    assert store.get("tw").status is JobStatus.SUCCEEDED
    assert sorted(seen[1]) == ["FAILED", "SUCCEEDED"]
    assert seen[2] == ["tw.s1.0", "tw.s1.1"]


def test_a_resumed_child_that_succeeds_counts_as_succeeded(app, cont, store, clock):
    flaky = {"fail": True}

    @app.job("par")
    def par(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:  # 'continue': a failed child does not decide the spawn (fail-fast)
            ctx.spawn("kid", [0, 1], on_child_failure="continue")
        return ctx.complete([c.result for c in ctx.children()])

    @app.job("kid", max_attempts=1)
    def kid(ctx: jobstate.StepContext) -> Any:
        if ctx.input == 1 and flaky["fail"]:
            raise RuntimeError("downstream 503")
        return ctx.complete(f"r{ctx.input}")

    app.start("par", None, job_id="pp")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    ev = {e["jobstate"]["job_id"]: e for e in cont.pop_all()}
    app.handler(ev["pp.s0.1"], FakeLambdaContext(clock))
    assert store.get("pp.s0.1").status is JobStatus.FAILED
    flaky["fail"] = False
    store.resume("pp.s0.1")
    app.handler(ev["pp.s0.1"], FakeLambdaContext(clock))
    # The second finish rewrote the child's link (not just the child's item), without
    # counting the child twice: the parent still waits for child 0 alone.
    link = store.call("get_item", Key={"pk": {"S": "JOB#pp"}, "sk": {"S": "CHILD#pp.s0.1"}},
                      ConsistentRead=True)["Item"]
    assert child_item(link).status == "SUCCEEDED" and child_item(link).error is None
    assert jobstate.codec.loads(child_item(link).result) == "r1"
    assert store.get("pp").pending_children == 1
    app.handler(ev["pp.s0.0"], FakeLambdaContext(clock))
    drain(app, cont, clock)
    p = store.get("pp")
    assert p.status is JobStatus.SUCCEEDED and p.result == ["r0", "r1"]
    assert p.pending_children == 0


def test_a_resumed_child_that_is_cancelled_rewrites_its_link(app, cont, store, clock):
    @app.job("par2")
    def par2(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:  # 'continue': a failed child does not decide the spawn (fail-fast)
            ctx.spawn("kid2", [0, 1], on_child_failure="continue")
        return ctx.complete(None)

    @app.job("kid2", max_attempts=1)
    def kid2(ctx: jobstate.StepContext) -> Any:
        if ctx.input == 1:
            raise RuntimeError("downstream 503")
        return ctx.complete(None)

    app.start("par2", None, job_id="pc")
    app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    ev = {e["jobstate"]["job_id"]: e for e in cont.pop_all()}
    app.handler(ev["pc.s0.1"], FakeLambdaContext(clock))
    store.resume("pc.s0.1")
    store.cancel("pc.s0.1", "not needed after all")
    link = store.call("get_item", Key={"pk": {"S": "JOB#pc"}, "sk": {"S": "CHILD#pc.s0.1"}},
                      ConsistentRead=True)["Item"]
    assert child_item(link).status == "CANCELLED"
    assert store.get("pc").pending_children == 1  # counted once, when it first failed


def test_a_reused_parent_id_overwrites_its_expired_children(app, cont, store, clock):
    @app.job("reuse")
    def reuse(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn("tenfold", list(ctx.input))
        return ctx.complete([c.result for c in ctx.children()])

    @app.job("tenfold")
    def tenfold(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.input * 10)

    app.start("reuse", [1, 2], job_id="ru")
    drain(app, cont, clock)
    clock.advance(store.retention_s + 60)  # expired, not yet deleted by TTL
    app.start("reuse", [3, 4], job_id="ru")
    drain(app, cont, clock)
    p = store.get("ru")
    assert p.status is JobStatus.SUCCEEDED and p.result == [30, 40]


def test_a_child_id_held_by_a_live_job_of_another_spawn_is_a_conflict(app, cont, store, clock):
    @app.job("clash")
    def clash(ctx: jobstate.StepContext) -> Any:
        if ctx.step in (0, 1):
            ctx.spawn("tenfold2", [ctx.step], child_ids=["item-a"])
        return ctx.complete(None)

    @app.job("tenfold2")
    def tenfold2(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.input)

    app.start("clash", None, job_id="cl")
    drain(app, cont, clock)
    for _ in range(4):
        clock.advance(1200)
        jobstate.sweep(store, cont)
        drain(app, cont, clock)
    p = store.get("cl")
    assert p.status is JobStatus.FAILED and "JobConflict" in (p.error or "")
    assert p.pending_children == 0  # the conflict struck before the parent committed


def cancel_mid_spawn(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                     store: jobstate.JobStore, clock: jobstate.ManualClock, job_id: str,
                     children: int, meanwhile: Any = None) -> dict[str, Any]:
    """Run the parent's spawning step, cancelling the parent between the children's puts
    and the spawn commit (after `meanwhile()`, when given). Returns the step's report."""
    from jobstate import faults

    register_parent(app, [], children=children)
    register_chunk(app)
    app.start("parent", None, job_id=job_id)

    def cancel_parent(name: str, info: dict[str, Any]) -> None:
        if name == "before_commit" and info["job_id"] == job_id:
            if meanwhile is not None:
                meanwhile()
            store.cancel(job_id, "operator: wrong input")

    with faults.installed(cancel_parent):
        report: dict[str, Any] = app.handler(cont.pop_all()[0], FakeLambdaContext(clock))
    return report


def test_a_parent_cancelled_while_it_spawns_withdraws_its_children_and_can_resume(
        app, cont, store, clock):
    """Crash point 'cancel between the children's puts and the spawn commit': the commit is
    refused and the children it wrote, never counted nor dispatched, are withdrawn: none
    runs, the parent's pending count stays 0, and a resumed parent spawns them afresh and
    finishes (children left behind CANCELLED would be adopted and never join)."""
    assert cancel_mid_spawn(app, cont, store, clock, "cs", 5)["outcome"] == "cancelled"
    assert cont.pop_all() == []  # no child start event, no parent continuation
    assert child_views(store, "cs", 0, 5) == []  # withdrawn: nothing left to run
    parent = store.get("cs")
    assert parent.status is JobStatus.CANCELLED and (parent.pending_children or 0) == 0
    clock.advance(3600)
    assert jobstate.sweep(store, cont).dispatched == 0 and cont.pop_all() == []
    store.resume("cs")
    jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))
    done = store.get("cs")
    assert done.status is JobStatus.SUCCEEDED, done
    assert done.result["n"] == 5 and done.result["statuses"] == {"SUCCEEDED": 5}
    assert (done.pending_children or 0) == 0


@pytest.mark.parametrize("function_id", ["FileProcessorFunction", "EtlPollerFunction",
                                         "BatchMailerFunction"])
def test_a_cancelled_spawn_is_withdrawn_under_each_worker_role(app, cont, store, clock,
                                                               function_id):
    """Issue 21: the withdrawal is a transaction with a ConditionCheck on the parent, which
    needs dynamodb:ConditionCheckItem; under a role without it AWS refuses the whole
    transaction and the children of the cancelled spawn run. Each worker's role from
    template.yaml, enforced as AWS does, lets the withdrawal through."""
    from iam_coverage import enforcing

    with enforcing(function_id) as refused:
        assert cancel_mid_spawn(app, cont, store, clock, "rw", 4)["outcome"] == "cancelled"
    assert child_views(store, "rw", 0, 4) == []  # withdrawn: nothing left to run
    assert refused == []


def test_withdrawing_a_cancelled_spawn_leaves_a_child_that_already_ran(app, cont, store,
                                                                      clock):
    """The withdrawal's conditions: a child someone started anyway (no longer PENDING) is
    kept; the untouched ones are withdrawn."""
    def start_child_by_hand() -> None:
        app.handler({"jobstate": {"job_id": "cw.s0.1", "step": 0}}, FakeLambdaContext(clock))

    cancel_mid_spawn(app, cont, store, clock, "cw", 3, meanwhile=start_child_by_hand)
    assert [k["job_id"] for k in child_views(store, "cw", 0, 3)] == ["cw.s0.1"]
    assert store.get("cw.s0.1").status is JobStatus.SUCCEEDED


def test_a_child_whose_parent_or_released_sibling_is_gone_still_finishes(app, cont, store,
                                                                        clock):
    """Each part of a join can be refused on its own; the child's own terminal write never
    waits on its parent's bookkeeping. A deleted queued sibling: the child joins, releases
    nothing. A deleted parent (expired, then removed by TTL): no join at all."""
    spawned(app, cont, clock, "gone", 3, max_concurrency=1)
    [first] = cont.pop_all()  # the cap: only child 0 is started
    store.call("delete_item", Key=_job_key("gone.s0.1"))  # the sibling it would release
    assert app.handler(first, FakeLambdaContext(clock))["outcome"] == "completed"
    assert store.get("gone.s0.0").status is JobStatus.SUCCEEDED
    assert store.get("gone").pending_children == 2  # counted once; nobody released
    [released] = cont.pop_all()  # its event still goes out, and says what is wrong
    with pytest.raises(jobstate.JobNotFound, match=r"gone\.s0\.1"):
        app.handler(released, FakeLambdaContext(clock))

    store.call("delete_item", Key=_job_key("gone"))
    third = {"jobstate": {"job_id": "gone.s0.2", "step": 0}}
    store.call("update_item", Key=_job_key("gone.s0.2"),  # as if released
               UpdateExpression=f"SET {J.NOT_BEFORE} = :z REMOVE {J.WAIT_REASON}",
               ExpressionAttributeValues={":z": {"N": "0"}})
    assert app.handler(third, FakeLambdaContext(clock))["outcome"] == "completed"
    assert store.get("gone.s0.2").status is JobStatus.SUCCEEDED


def test_cancelling_a_child_whose_parent_is_gone_cancels_it(app, cont, store, clock):
    spawned(app, cont, clock, "orph", 2)
    store.call("delete_item", Key=_job_key("orph"))
    assert store.cancel("orph.s0.0", "cleanup").status is JobStatus.CANCELLED


def test_resuming_the_root_type_leaves_a_descendant_whose_own_type_is_still_paused_held(
        make_store, cont, clock):
    store, app, ran, ctx, leaf_event = tree_with_a_leaf_sent(make_store, cont, clock)
    store.set_paused("root", True)  # holds root, mid and the leaf
    store.set_paused("leaf", True)  # the leaf is held already (by root)
    store.set_paused("root", False)
    leaf = store.get("r.s0.0.s0.0")
    assert (leaf.paused_by, leaf.display_status) == ("leaf", "PAUSED")  # handed over
    assert app.handler(leaf_event, ctx)["outcome"] == "paused" and ran == []
    store.set_paused("leaf", False)
    jobstate.sweep(store, cont)
    drain(app, cont, FakeLambdaContext(clock))  # a new invocation: the old one timed out
    assert ran == ["r.s0.0.s0.0"] and store.get("r").status is JobStatus.SUCCEEDED
