"""The transition table (statemachine.TRANSITIONS, shown in docs/concepts.md) is what the
code does: each transition is applied to a job in the state it expects, and the change
of status, step and lease read back from the table is the one the table states.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import jobstate
from jobstate import schema, statemachine, transitions
from jobstate.items import CallbackItem, JobItem, job_item
from jobstate.lease import Lease, State, new_owner
from jobstate.status import JobStatus
from jobstate.transitions import callbacks as cbtransitions

pytestmark = pytest.mark.integration

Scenario = Callable[[jobstate.JobStore], tuple[str, JobItem | None]]


def created(store: jobstate.JobStore, job_id: str = "t", **extra: Any) -> str:
    new = store.new_job_item("kind", {"n": 1}, job_id, jobstate.Limits(), extra=extra)
    transitions.create(store, new.item, new.input)
    return job_id


def claimed(store: jobstate.JobStore, job_id: str = "t") -> Lease:
    created(store, job_id)
    until = store.clock.now_ms() + 60_000
    owner = new_owner("req")
    transitions.claim(store, job_id, 0, owner, until)
    job = store.get(job_id, secrets=True)
    return Lease(job_id, "kind", 0, owner, until, store.clock.now_ms(), "req", job)


def state(store: jobstate.JobStore, lease: Lease) -> State:
    return State.encode(store, {"at": 1}, {}, {"done": 1, "total": 2, "unit": None},
                        job_id=lease.job_id)


def item(store: jobstate.JobStore, job_id: str = "t") -> JobItem | None:
    return store.get_job_item(job_id)


def sc_create(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    return "t", None


def sc_claim(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    created(store)
    return "t", item(store)


SCENARIOS: dict[str, tuple[Scenario, Callable[[jobstate.JobStore], None]]] = {}


def scenario(name: str, before: Scenario) -> Callable[[Callable[[jobstate.JobStore], None]],
                                                       Callable[[jobstate.JobStore], None]]:
    def register(apply: Callable[[jobstate.JobStore], None]) -> Callable[[jobstate.JobStore],
                                                                         None]:
        SCENARIOS[name] = (before, apply)
        return apply
    return register


def _leased(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    lease = claimed(store)
    store.test_lease = lease  # type: ignore[attr-defined]
    return "t", item(store)


def _lease(store: jobstate.JobStore) -> Lease:
    lease: Lease = store.test_lease  # type: ignore[attr-defined]
    return lease


@scenario("create", sc_create)
def _create(store: jobstate.JobStore) -> None:
    created(store)


@scenario("claim", sc_claim)
def _claim(store: jobstate.JobStore) -> None:
    transitions.claim(store, "t", 0, new_owner("req"), store.clock.now_ms() + 60_000)


@scenario("checkpoint", _leased)
def _checkpoint(store: jobstate.JobStore) -> None:
    transitions.checkpoint(store, _lease(store), state(store, _lease(store)))


@scenario("commit", _leased)
def _commit(store: jobstate.JobStore) -> None:
    transitions.commit(store, _lease(store), state(store, _lease(store)), hop=2)


@scenario("sleep", _leased)
def _sleep(store: jobstate.JobStore) -> None:
    transitions.sleep(store, _lease(store), state(store, _lease(store)),
                      until_ms=store.clock.now_ms() + 3_600_000, reason="sleep")


@scenario("retry", _leased)
def _retry(store: jobstate.JobStore) -> None:
    transitions.retry(store, _lease(store), "boom", "Error", attempt=1,
                      at_ms=store.clock.now_ms() + 1_000)


@scenario("defer", _leased)
def _defer(store: jobstate.JobStore) -> None:
    transitions.defer(store, _lease(store), store.clock.now_ms() + 1_000, "in flight")


@scenario("spawn", _leased)
def _spawn(store: jobstate.JobStore) -> None:
    transitions.spawn(store, _lease(store), state(store, _lease(store)), count=2,
                      child_type="kind", policy="fail", max_concurrency=None,
                      child_ids_json=None)


@scenario("finish", _leased)
def _finish(store: jobstate.JobStore) -> None:
    lease = _lease(store)
    upd = transitions.finish_update(store, lease, state(store, lease), JobStatus.SUCCEEDED,
                                    result_json="1")
    transitions.finish(store, lease, upd, JobStatus.SUCCEEDED)


@scenario("release", _leased)
def _release(store: jobstate.JobStore) -> None:
    transitions.release(store, _lease(store))


def _leased_then_cancelled(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    _leased(store)
    transitions.cancel(store, "t", "kind", "stop")
    return "t", item(store)


@scenario("release-cancelled", _leased_then_cancelled)
def _release_cancelled(store: jobstate.JobStore) -> None:
    transitions.release_cancelled(store, _lease(store))


@scenario("cancel", sc_claim)
def _cancel(store: jobstate.JobStore) -> None:
    transitions.cancel(store, "t", "kind", "stop")


def _cancelled(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    created(store)
    transitions.cancel(store, "t", "kind", "stop")
    return "t", item(store)


@scenario("resume", _cancelled)
def _resume(store: jobstate.JobStore) -> None:
    found = item(store)
    assert found is not None
    transitions.resume(store, found, max_steps=None, deadline_at=found.deadline_at)


@scenario("pause-mark", sc_claim)
def _pause_mark(store: jobstate.JobStore) -> None:
    job = item(store)
    assert job is not None
    transitions.pause_mark(store, job, "kind")


def _held(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    created(store)
    job = item(store)
    assert job is not None
    transitions.pause_mark(store, job, "kind")
    return "t", item(store)


@scenario("unpause", _held)
def _unpause(store: jobstate.JobStore) -> None:
    job = item(store)
    assert job is not None
    transitions.unpause(store, job, "kind")


@scenario("join", sc_claim)
def _join(store: jobstate.JobStore) -> None:
    store.transact([transitions.join_action(store, "t")])


def _spawned_with_policy(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    lease = claimed(store)
    transitions.spawn(store, lease, state(store, lease), count=2, child_type="kind",
                      policy="fail", max_concurrency=None, child_ids_json=None, tolerated=0)
    return "t", item(store)


@scenario("decide", _spawned_with_policy)
def _decide(store: jobstate.JobStore) -> None:
    store.transact([transitions.join_action(
        store, "t", spawn_step=0, counter=schema.J.CHILDREN_FAILED,
        verdict=jobstate.completion.FAILURE_TOLERANCE_EXCEEDED)])
    decided = item(store)
    assert decided is not None and decided.verdict == "FAILURE_TOLERANCE_EXCEEDED"
    assert decided.pending == 0 and decided.children_failed == -1


def _queued(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    new = store.new_job_item("kind", None, "t", jobstate.Limits(), runnable_now=False)
    transitions.create(store, new.item)
    return "t", item(store)


@scenario("release-sibling", _queued)
def _release_sibling(store: jobstate.JobStore) -> None:
    store.transact([transitions.release_sibling_action(store, "t")])


def _spawned_then_cancelled(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    lease = claimed(store, "parent")
    store.test_lease = lease  # type: ignore[attr-defined]
    created(store, "t", **{schema.J.PARENT_ID: "parent", schema.J.PARENT_STEP: 0})
    transitions.cancel(store, "parent", "kind", "stop")
    return "t", item(store)


@scenario("withdraw", _spawned_then_cancelled)
def _withdraw(store: jobstate.JobStore) -> None:
    lease = _lease(store)
    store.transact([transitions.withdraw_check(store, lease),
                    transitions.withdraw_action(store, lease, "t")])


@scenario("sweep-take", sc_claim)
def _sweep_take(store: jobstate.JobStore) -> None:
    found = item(store)
    assert found is not None
    transitions.sweep_take(store, found, store.clock.now_ms())


def _asleep(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    lease = claimed(store)
    transitions.sleep(store, lease, state(store, lease), until_ms=store.clock.now_ms() + 1_000,
                      reason="sleep")
    return "t", item(store)


@scenario("sweep-wake", _asleep)
def _sweep_wake(store: jobstate.JobStore) -> None:
    found = item(store)
    assert found is not None and found.due_at is not None
    transitions.sweep_wake(store, found, store.clock.now_ms())


def _callback(store: jobstate.JobStore, due_ms: int) -> CallbackItem:
    return CallbackItem("t", "approval", "OPEN", timeout_at=due_ms, job_type="kind",
                        job_created=store.clock.now_ms())


def _asleep_on_callback(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    lease = claimed(store)
    transitions.sleep(store, lease, state(store, lease), until_ms=store.clock.now_ms() + 1_000,
                      reason=cbtransitions.wait_reason("approval"))
    return "t", item(store)


@scenario("callback-wake", _asleep_on_callback)
def _callback_wake(store: jobstate.JobStore) -> None:
    woken = cbtransitions.callback_wake(store, _callback(store, 0), dispatching=True)
    assert woken is not None and woken.due_at is None


@scenario("callback-extend", _asleep_on_callback)
def _callback_extend(store: jobstate.JobStore) -> None:
    due = store.clock.now_ms() + 5_000
    assert cbtransitions.callback_extend(store, _callback(store, due), due)
    found = item(store)
    assert found is not None and found.due_at == due


def stored(store: jobstate.JobStore, job_id: str) -> JobItem | None:
    """The item as stored, expired or not."""
    raw = store.call("get_item", Key=schema.job_key(job_id), ConsistentRead=True).get("Item")
    return job_item(raw) if raw else None


def _expired(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    created(store)
    transitions.cancel(store, "t", "kind", "stop")
    store.clock.advance(store.retention_s + 10)  # type: ignore[attr-defined]
    return "t", stored(store, "t")


@scenario("purge", _expired)
def _purge(store: jobstate.JobStore) -> None:
    transitions.purge(store, "t")


def observed(before: JobItem | None, after: JobItem | None) -> dict[str, str]:
    if after is None:
        return {"status": "deleted", "step": "-", "lease": "-"}
    if before is None:
        return {"status": after.status.value, "step": str(after.step),
                "lease": "none" if after.lease_owner is None else "taken"}
    # "=": unchanged; a status named in the table is accepted as the outcome even when
    # it was already that (a commit leaves a RUNNING job RUNNING).
    status = ("=" if after.status == before.status else "") + "|" + after.status.value
    step = {0: "=", 1: "+1"}.get(after.step - before.step, str(after.step - before.step))
    if before.lease_owner == after.lease_owner:
        lease = "="
    else:
        lease = "taken" if after.lease_owner else "released"
    return {"status": status, "step": step, "lease": lease}


def matches(declared: str, seen: str) -> bool:
    options = [s for s in seen.split("|") if s]
    return any(s == declared or s in declared.split("/") or declared.startswith(s + " ")
               for s in options)


@pytest.mark.parametrize("t", statemachine.TRANSITIONS, ids=lambda t: t.name)
def test_each_transition_changes_what_the_table_says(store: jobstate.JobStore,
                                                     t: statemachine.Transition) -> None:
    assert t.name in SCENARIOS, f"no scenario for transition {t.name!r}: add one here"
    before_fn, apply = SCENARIOS[t.name]
    job_id, before = before_fn(store)
    apply(store)
    after = stored(store, job_id)
    seen = observed(before, after)
    for field in ("status", "step", "lease"):
        assert matches(getattr(t, field), seen[field]), (t.name, field, getattr(t, field),
                                                         seen[field])
    # The due index entry: gone ("none"), untouched ("="), or set (a time it names).
    if after is not None and t.due != "-":
        if t.due == "none":
            assert after.due_at is None, t.name
        elif t.due == "=":
            assert after.due_at == (before.due_at if before else None), t.name
        else:
            assert after.due_at is not None, t.name


def test_every_scenario_is_a_transition() -> None:
    assert set(SCENARIOS) == {t.name for t in statemachine.TRANSITIONS}


def _failed(store: jobstate.JobStore) -> tuple[str, JobItem | None]:
    lease = claimed(store)
    upd = transitions.finish_update(store, lease, None, JobStatus.FAILED, error="boom",
                                    error_type="Error")
    transitions.finish(store, lease, upd, JobStatus.FAILED)
    return "t", item(store)


@scenario("redrive", _failed)
def _redrive(store: jobstate.JobStore) -> None:
    found = item(store)
    assert found is not None
    transitions.redrive(store, found, step=found.step, cursor=None, progress=None,
                        deadline_at=found.deadline_at, held_by=None)
