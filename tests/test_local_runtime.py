"""The local Lambda runtime (issue 5): real worker subprocesses, SIGKILL at the deadline,
Lambda's async retries, the 16-hop recursion cut, seeded chaos.

The apps below live in this module; the runtime's workers import it as
`test_local_runtime:app` (pytest puts tests/ on sys.path, which the workers inherit).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import jobstate
from jobstate import faults
from jobstate.local import RECURSION_LIMIT, Chaos, LocalRuntime, LocalRuntimeError
from jobstate.local.chaos import Dice
from jobstate.local.queue import Delivery

# Real worker processes on real deadlines: run alone, not beside other tests
# (scripts/test runs these after the parallel tier).
pytestmark = pytest.mark.serial

app = jobstate.App(store=jobstate.JobStore(), lease_grace_s=0.3, reserve_ms=300)


def _record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _effect(path: str, i: int) -> int:
    _record(path, f"fx {i} {os.getpid()}")
    return os.getpid()


@app.job("sleepy", max_steps=20)
def sleepy(ctx: jobstate.StepContext) -> Any:
    """Six effects; after the third a checkpoint, then (first time only) a sleep past the
    deadline, so the worker is SIGKILLed mid-step."""
    d = ctx.input["dir"]
    i = ctx.cursor.get("i", 0)
    _record(f"{d}/starts", f"{i} {os.getpid()}")
    while i < 6:
        ctx.once(f"fx-{i}", _effect, f"{d}/effects", i)
        i += 1
        ctx.cursor["i"] = i
        if i == 3:
            ctx.checkpoint()
            marker = Path(d) / "slept"
            if not marker.exists():
                marker.write_text("x")
                time.sleep(60)  # past the deadline: the runtime kills this process
    return ctx.complete({"i": i})


@app.job("hops", max_steps=100)
def hops(ctx: jobstate.StepContext) -> Any:
    n = ctx.cursor.get("n", 0)
    if n >= ctx.input["steps"]:
        return ctx.complete({"n": n})
    ctx.cursor["n"] = n + 1
    return None


def _recorded(path: str, line: str) -> Any:
    """The reconcile of `_record`: did that line land in the file?"""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        lines = []
    return line if line in lines else jobstate.NOT_DONE


@app.job("counted", max_steps=100)
def counted(ctx: jobstate.StepContext) -> Any:
    n = ctx.cursor.get("n", 0)
    ctx.once(f"fx-{n}", _record, ctx.input["path"], f"fx {ctx.job_id} {n}",
             reconcile=_recorded)
    if n + 1 >= ctx.input["steps"]:
        return ctx.complete({"n": n + 1})
    ctx.cursor["n"] = n + 1
    return None


def _counted_with(semantics: jobstate.Semantics, reconcile: bool) -> Any:
    def step(ctx: jobstate.StepContext) -> Any:
        n = ctx.cursor.get("n", 0)
        ctx.once(f"fx-{n}", _record, ctx.input["path"], f"fx {ctx.job_id} {n}",
                 semantics=semantics, reconcile=_recorded if reconcile else None)
        if n + 1 >= ctx.input["steps"]:
            return ctx.complete({"n": n + 1})
        ctx.cursor["n"] = n + 1
        return None

    return step


app.job("counted-alo", max_steps=100)(_counted_with(jobstate.Semantics.AT_LEAST_ONCE, False))
app.job("counted-amo", max_steps=100)(_counted_with(jobstate.Semantics.AT_MOST_ONCE, False))


@app.job("broken", max_steps=5)
def broken(ctx: jobstate.StepContext) -> Any:
    return "not a valid step result"  # InvalidStepResult: raised into the "Lambda" runtime


def test_kill_at_deadline_resumes_from_checkpoint_without_repeating_effects(tmp_path):
    with LocalRuntime("test_local_runtime:app", timeout_ms=1_500, concurrency=2,
                      max_retry_attempts=0, sweep_interval_s=0.2, dispatch_timeout_s=1.0,
                      recursive_loop="Allow") as rt:
        view = rt.run("sleepy", {"dir": str(tmp_path)}, timeout_s=40)
        stats = rt.stats_dict()["total"]
        history = rt.store.history(view.job_id)
    assert view.status is jobstate.JobStatus.SUCCEEDED, view.error
    assert stats["kills_at_timeout"] == 1 and stats["crashes_injected"] == 0
    effects = (tmp_path / "effects").read_text().split("\n")[:-1]
    assert [e.split()[1] for e in effects] == ["0", "1", "2", "3", "4", "5"]  # each once
    first_pid = {e.split()[2] for e in effects[:3]}
    second_pid = {e.split()[2] for e in effects[3:]}
    assert len(first_pid) == 1 and len(second_pid) == 1 and first_pid != second_pid
    starts = [line.split() for line in (tmp_path / "starts").read_text().splitlines()]
    # The second worker started from the checkpoint (i=3), not from the step's start.
    assert [s[0] for s in starts] == ["0", "3"] and starts[1][1] in second_pid
    assert view.takeovers == 1
    assert any(h.event == "takeover" for h in history)


def test_recursive_loop_terminate_cuts_the_chain_allow_lets_it_finish(tmp_path):
    with LocalRuntime("test_local_runtime:app", timeout_ms=3_000, concurrency=1,
                      recursive_loop="Terminate", sweep_interval_s=None) as rt:
        cut = rt.start("hops", {"steps": 25})
        assert rt.wait_idle(timeout_s=30)
        view = rt.store.get(cut)
        # The start request is invocation 1, step k is invocation k + 2: invocations 1..16
        # ran, so step 14 committed and step 15's event was dropped.
        assert view.status is jobstate.JobStatus.RUNNING
        assert view.step == RECURSION_LIMIT - 1
        assert rt.stats.total.dropped_recursion == 1
        assert len(rt.messages) == 1 and "RecursiveLoop: Allow" in rt.messages[0]
        assert "16 hops" in rt.messages[0] and cut in rt.messages[0]

        rt.recursive_loop = "Allow"
        done = rt.run("hops", {"steps": 25}, timeout_s=30)
        assert done.status is jobstate.JobStatus.SUCCEEDED and done.result == {"n": 25}
        assert rt.stats.total.dropped_recursion == 1


def test_chaos_duplicates_crashes_lost_events_and_throttles_still_run_effects_once(tmp_path):
    chaos = Chaos(5, duplicate=0.5, crash=0.25, lost=0.15, throttle_invoke=0.5,
                  throttle_dynamodb=0.05)
    with LocalRuntime("test_local_runtime:app", timeout_ms=1_000, concurrency=3,
                      chaos=chaos, recursive_loop="Allow", sweep_interval_s=0.3,
                      time_scale=0.01, dispatch_timeout_s=1.0) as rt:
        path = str(tmp_path / "fx")
        # Fixed ids: the chaos dice are keyed by job and step, so the run is reproducible.
        ids = [rt.start("counted", {"path": path, "steps": 8}, job_id=f"chaos-{i}")
               for i in range(3)]
        views = rt.wait(ids, timeout_s=90)
        total = rt.stats_dict()["total"]
    assert [(v.status, v.error) for v in views.values()] == [
        (jobstate.JobStatus.SUCCEEDED, None)] * 3
    lines = Counter((tmp_path / "fx").read_text().splitlines())
    assert len(lines) == 24 and set(lines.values()) == {1}  # every effect exactly once
    assert total["duplicates_delivered"] > 0 and total["crashes_injected"] > 0
    assert total["throttled_invokes"] > 0 and total["lost_continuations"] > 0
    assert total["throttled_dynamodb"] > 0 and total["noops"] > 0



SLOW_START_APP = """
import os, time
import jobstate

class SlowFirstStart(jobstate.App):
    def start(self, *args, **kwargs):
        job_id = super().start(*args, **kwargs)  # created and dispatched ...
        marker = os.environ["SLOW_START_MARKER"]
        if not os.path.exists(marker):  # ... then, the first time, past the deadline
            open(marker, "w").close()
            time.sleep(60)
        return job_id

app = SlowFirstStart(store=jobstate.JobStore(), reserve_ms=300)  # a 1 s timeout: room for work

@app.job("one")
def one(ctx):
    return ctx.complete({"ok": True})
"""


def test_a_start_killed_at_the_timeout_is_sent_again_and_makes_one_job(tmp_path, monkeypatch):
    (tmp_path / "slow_start_app.py").write_text(SLOW_START_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    with LocalRuntime("slow_start_app:app", timeout_ms=1_000, concurrency=2,
                      sweep_interval_s=None, recursive_loop="Allow",
                      env={"SLOW_START_MARKER": str(tmp_path / "slept")}) as rt:
        jid = rt.start("one", {"x": 1}, job_id="one-1")
        view = rt.wait([jid], timeout_s=30)[jid]
        assert jid == "one-1" and view.status is jobstate.JobStatus.SUCCEEDED
        assert [j.job_id for j in rt.store.list("one").jobs] == ["one-1"]
        assert rt.stats_dict()["start_retries"] == 1
        assert rt.stats.total.kills_at_timeout == 1
        with pytest.raises(jobstate.InvalidInput, match="attempts"):
            rt.start("one", attempts=0)


def test_function_errors_are_retried_by_lambda_then_sent_to_on_failure(tmp_path):
    with LocalRuntime("test_local_runtime:app", timeout_ms=2_000, concurrency=1,
                      max_retry_attempts=2, time_scale=0.005, sweep_interval_s=None) as rt:
        jid = rt.start("broken")
        assert rt.wait_idle(timeout_s=30)
        view = rt.store.get(jid)
        s = rt.stats.by_type["broken"]
        # The step failed the job and raised (a programming error): a function error.
        # Lambda's retry ~1 min later (scaled) finds the job FAILED: a no-op, it stops.
        assert view.status is jobstate.JobStatus.FAILED
        assert "InvalidStepResult" in (view.error or "")
        assert (s.invocations, s.function_errors, s.retries, s.noops) == (3, 1, 1, 1)

        # An event that fails every time: 1 + 2 retries, then the on-failure destination.
        rt.send(jobstate.step_event("ghost-job", 0, "hops"))
        assert rt.wait_idle(timeout_s=30)
        g = rt.stats.by_type["hops"]
        assert (g.invocations, g.function_errors, g.retries, g.failed_events) == (3, 3, 2, 1)
        assert rt.failed_events[0]["error_type"] == "JobNotFound"

        # Older than MaximumEventAgeInSeconds (time-scaled) when its turn comes: dropped.
        rt.queue.put(Delivery(jobstate.step_event(jid, 0, "broken"), 1,
                              time.time() - 21_600 * 0.005 - 1, "broken"))
        assert rt.wait_idle(timeout_s=30)
        assert s.dropped_age == 1 and s.invocations == 3


def test_start_errors_come_back_as_jobstate_errors():
    with LocalRuntime("test_local_runtime:app", concurrency=1, sweep_interval_s=None) as rt:
        with pytest.raises(jobstate.UnknownJobType, match="no job type 'nope'"):
            rt.start("nope")
        with pytest.raises(jobstate.InvalidInput):
            rt.start("hops", {"steps": 1}, job_id="bad id with spaces")


def test_bad_app_reference_is_a_clear_error():
    with pytest.raises(LocalRuntimeError, match="No module named 'no_such_module'"):
        LocalRuntime("no_such_module:app", concurrency=1).open()
    with pytest.raises(LocalRuntimeError, match=r"not a jobstate\.App"):
        LocalRuntime("test_local_runtime:sleepy", concurrency=1).open()
    with pytest.raises(jobstate.InvalidInput):
        LocalRuntime("no-colon")
    with pytest.raises(jobstate.InvalidInput):
        LocalRuntime("m:app", max_retry_attempts=3)


def test_chaos_spec_and_dice_are_reproducible():
    c = Chaos.parse("on,crash=0.3", seed=4)
    assert c.crash == 0.3 and c.duplicate > 0 and c.seed == 4 and c.enabled
    assert not Chaos.parse("off").enabled
    assert Chaos.parse("duplicate=0.2,lost=0.1").to_dict()["lost"] == 0.1
    for bad in ("crash=2", "explode=0.1", "crash"):
        with pytest.raises(jobstate.InvalidInput):
            Chaos.parse(bad)
    a, b = Dice(9), Dice(9)
    rolls_a = [a.roll(f"dup:j:{i % 3}", 0.5) for i in range(30)]
    rolls_b = [b.roll(f"dup:j:{i % 3}", 0.5) for i in range(30)]
    assert rolls_a == rolls_b and any(rolls_a) and not all(rolls_a)


MATRIX_STEPS = 3


@pytest.mark.parametrize("point", faults.POINTS)
def test_fault_matrix_real_sigkill_at_each_crash_point(tmp_path, point):
    # The first delivery of every step SIGKILLs its worker at `point` (a real process
    # death, not an exception) while DynamoDB throttles a third of the requests; three
    # jobs, one per promise: each ends as that promise says, with effects counted in a
    # file outside jobstate.
    chaos = Chaos(11, crash=1.0, crash_first=True, crash_points=(point,),
                  throttle_dynamodb=0.1)
    kinds = {"counted": "amor", "counted-alo": "alo", "counted-amo": "amo"}
    with LocalRuntime("test_local_runtime:app", timeout_ms=2_000, concurrency=3,
                      chaos=chaos, recursive_loop="Allow", sweep_interval_s=0.2,
                      time_scale=0.01, dispatch_timeout_s=1.0) as rt:
        path = str(tmp_path / "fx")
        ids = {kind: rt.start(jt, {"path": path, "steps": MATRIX_STEPS},
                              job_id=f"matrix-{kind}-{point}")
               for jt, kind in kinds.items()}
        views = rt.wait(list(ids.values()), timeout_s=90)
        total = rt.stats_dict()["total"]
    runs = Counter((tmp_path / "fx").read_text().splitlines())

    def ran(kind: str, n: int) -> int:
        return runs[f"fx {ids[kind]} {n}"]

    # What is asserted holds at any machine speed: a slow machine adds real deadline kills
    # (`kills_at_timeout`), which may land anywhere in a step, and the chaos crash is
    # aimed at each step until a delivery reaches its point, so it is never used up by a
    # delivery that died earlier.
    in_effect = point in ("effect_started", "effect_called")
    timeouts = total["kills_at_timeout"]
    for kind in ("amor", "alo"):
        view = views[ids[kind]]
        assert view.status is jobstate.JobStatus.SUCCEEDED, (kind, view.error)
    for n in range(MATRIX_STEPS):
        assert ran("amor", n) == 1  # at most once, and reconcile settled every crash
        # At least once; twice where the kill came after the call (more after a deadline
        # kill between the call and its DONE write, which at-least-once allows).
        assert ran("alo", n) >= (2 if point == "effect_called" else 1)
    amo = views[ids["amo"]]
    assert all(ran("amo", n) <= 1 for n in range(MATRIX_STEPS))  # never twice
    if in_effect:  # no reconcile: the unknown outcome parks the job, nothing repeated
        assert (amo.status, amo.step, amo.error_type) == (
            jobstate.JobStatus.FAILED, 0, "EffectOutcomeUnknown")
        if timeouts == 0:  # a deadline kill inside the effect may park it first
            assert ran("amo", 0) == (1 if point == "effect_called" else 0)
    elif amo.status is not jobstate.JobStatus.SUCCEEDED:
        # Parked by a kill nobody chose: only a real deadline kill inside its effect can.
        assert amo.error_type == "EffectOutcomeUnknown" and timeouts > 0
    else:
        assert [ran("amo", n) for n in range(MATRIX_STEPS)] == [1] * MATRIX_STEPS
    # amor and alo were killed at every step that reaches the point (a completion sends
    # no continuation: after_commit/after_dispatch are not reached on the last step).
    reached = MATRIX_STEPS - (point in ("after_commit", "after_dispatch"))
    assert total["crashes_injected"] >= 2 * reached
    assert total["throttled_dynamodb"] > 0


def _sleeping_worker() -> Any:
    import socket
    import subprocess
    import sys
    from multiprocessing.connection import Connection

    from jobstate.local.process import Worker

    mine, theirs = socket.socketpair()
    popen = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             stdin=subprocess.DEVNULL)
    theirs.close()
    return Worker(popen, Connection(mine.detach()), 0)


def test_a_worker_torn_down_by_several_threads_at_once_closes_its_socket_once():
    """A slot thread killing its timed-out worker while close() kills all of them once
    closed the same fd twice (CI: OSError EBADF from LocalRuntime.__exit__)."""
    import threading

    for _ in range(20):
        w = _sleeping_worker()
        barrier = threading.Barrier(4)
        errors: list[BaseException] = []

        def tear_down(w: Any = w, barrier: threading.Barrier = barrier,
                      errors: list[BaseException] = errors) -> None:
            barrier.wait()
            try:
                w.kill()
            except BaseException as exc:  # pragma: no cover - the regression
                errors.append(exc)

        threads = [threading.Thread(target=tear_down) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert w.popen.returncode is not None and w.conn.closed


def test_closing_the_runtime_while_invocations_are_in_flight_is_clean():
    for _ in range(3):
        rt = LocalRuntime("test_local_runtime:app", concurrency=4, sweep_interval_s=0.2,
                          recursive_loop="Allow", chaos=Chaos(seed=3, duplicate=0.5))
        with rt:
            rt.start("hops", {"steps": 10_000})
            rt.start("hops", {"steps": 10_000})
            time.sleep(1.0)
        assert all(w is None for w in rt._workers)
