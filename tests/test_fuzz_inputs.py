"""Bad-input fuzzing (issue 6.5): hypothesis-generated events, start inputs, step state,
effect keys, job ids and types.

Whatever comes in, jobstate either accepts it (and stores it faithfully) or rejects it
with a `JobStateError` subclass that carries a message; a rejected input writes nothing
(no write request at all for malformed input; for a well-formed event naming a missing
job, the conditional claim fails and the table is unchanged). Examples per test come from
the hypothesis profile (tests/conftest_hypothesis.py).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import RequestLog, scan
from conftest_hypothesis import active
from hypothesis import event, given
from hypothesis import strategies as st

import jobstate
from jobstate import JobStateError, JobStatus
from jobstate.codec import STATE_BUDGET_BYTES

ids = itertools.count()

# The documented rules (README / error messages), written independently of jobstate.codec.
VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/=+\-]{0,199}")
VALID_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,63}")


def valid_id(value: Any) -> bool:
    return isinstance(value, str) and VALID_ID.fullmatch(value) is not None


def valid_type(value: Any) -> bool:
    return isinstance(value, str) and VALID_TYPE.fullmatch(value) is not None

# -- strategies ------------------------------------------------------------------------------

# Every code point, lone surrogates included (they cannot be encoded as UTF-8).
any_char = st.one_of(st.characters(), st.characters(categories=["Cs"]))
any_text = st.text(any_char, max_size=40)


@st.composite
def huge_text(draw: Any) -> str:
    return draw(any_char) * draw(st.sampled_from([201, 513, 1001, 70_000, 360_000, 420_000]))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**38),
    st.floats(allow_nan=True, allow_infinity=True), any_text, st.binary(max_size=8),
    st.complex_numbers(max_magnitude=10), st.just(object()), st.just({1, 2}),
)
jsonish = st.recursive(
    scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.tuples(kids, kids),
                           st.dictionaries(st.one_of(any_text, st.integers(), st.none()),
                                           kids, max_size=4)),
    max_leaves=12,
)
deep = st.integers(30, 40).map(lambda n: json.loads("[" * n + "]" * n))
values = st.one_of(jsonish, huge_text(), deep)

good_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@/=+\-]{0,30}\Z")
bad_ids = st.one_of(
    any_text, huge_text(), st.integers(), st.none(), st.binary(max_size=8),
    st.sampled_from(["", " ", "a b", "#", "a#b", "JOB#x", "ünï", "a\n", "a\x00", "-a", ".a",
                     "x" * 201, "a/../b", "a\tb"]),
)
bad_types = st.one_of(bad_ids, st.sampled_from(["T-1", "x" * 65, "a:b", "a/b", "a\n"]))


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
    """Good values half the time (a flat one_of would drown them among the bad ones)."""
    return st.booleans().flatmap(lambda ok: good if ok else bad)


some_ids = mostly(good_ids, bad_ids)
some_types = mostly(st.sampled_from(["t", "state", "nope"]), bad_types)
steps = mostly(st.integers(0, 3), st.one_of(
    st.integers(), st.integers(min_value=2**63), st.floats(), st.booleans(), any_text,
    st.none(), st.lists(st.integers(), max_size=2)))
ancestor_lists = st.one_of(
    st.lists(some_types, max_size=4), st.lists(st.just("t"), min_size=17, max_size=40),
    st.lists(huge_text(), min_size=1, max_size=2), jsonish)
bodies = st.fixed_dictionaries(
    {}, optional={"job_id": some_ids, "step": steps, "job_type": some_types,
                  "parent_type": bad_types, "ancestors": ancestor_lists, "v": scalars,
                  "start": jsonish},
)
step_events = st.fixed_dictionaries(
    {"job_id": some_ids, "step": steps}, optional={"job_type": some_types},
).map(lambda b: {"jobstate": b})
starts = st.fixed_dictionaries(
    {"job_type": some_types},
    optional={"input": values, "job_id": some_ids, "extra": scalars},
).map(lambda s: {"jobstate": {"start": s}})
events = st.one_of(
    jsonish,
    st.dictionaries(any_text, jsonish, max_size=3),
    bodies.map(lambda b: {"jobstate": b}),
    step_events,
    starts,
)
effect_keys = st.one_of(any_text, huge_text(), st.integers(), st.none(), st.binary(max_size=4),
                        st.sampled_from(["", "#", "FX#", "a\nb", "\x7f", "k" * 512,
                                         "k" * 513, "é" * 400, "\u2028", "key with spaces"]))

# -- helpers ---------------------------------------------------------------------------------


MALFORMED = (jobstate.InvalidInput, jobstate.StateNotSerializable, jobstate.StateTooLarge)


def rejected_cleanly(exc: BaseException, log: RequestLog, before: list[dict[str, Any]],
                     store: jobstate.JobStore, *, no_requests: bool = True) -> None:
    """A rejection is a JobStateError with a message, and it wrote nothing."""
    assert isinstance(exc, JobStateError), f"{type(exc).__name__}: {exc}"
    assert str(exc).strip(), f"{type(exc).__name__} without a message"
    if no_requests and isinstance(exc, MALFORMED):
        assert log.writes == 0, (log.ops, exc)
    log_ops = list(log.ops)
    assert scan(store) == before, (log_ops, exc)


def forget(store: jobstate.JobStore, job_id: str) -> None:
    """Delete an accepted job again, so later scans stay small (inputs may be 300 KB)."""
    store.call("delete_item", Key={"pk": {"S": f"JOB#{job_id}"}, "sk": {"S": "JOB"}})


def plain(value: Any) -> Any:
    """What a value looks like after a JSON round trip."""
    return json.loads(json.dumps(value))


def is_json(value: Any, depth: int = 0) -> bool:
    if depth > 32:
        return False
    if value is None or isinstance(value, bool | int | str):
        return not isinstance(value, str) or _utf8(value)
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple):
        return all(is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _utf8(k) and is_json(v, depth + 1)
                   for k, v in value.items())
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.fixture
def world(app: jobstate.App, store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
          clock: jobstate.ManualClock) -> Any:
    """An app with job types whose steps do what the current example says."""
    box: dict[str, Any] = {}

    @app.job("t")
    def t(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.input)

    @app.job("state")
    def state(ctx: jobstate.StepContext) -> Any:
        if "cursor" in box:
            ctx.cursor = box["cursor"]
        if "tokens" in box:
            ctx.tokens = box["tokens"]
        return None

    @app.job("fx")
    def fx(ctx: jobstate.StepContext) -> Any:
        box["calls"] += 1
        return ctx.complete(ctx.once(box["key"], lambda: "ran"))

    class World:
        pass

    w = World()
    w.app, w.store, w.cont, w.clock, w.box = app, store, cont, clock, box  # type: ignore
    w.log = RequestLog(store)  # type: ignore[attr-defined]
    return w


def attempt(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except Exception as exc:  # every exception is judged by the caller
        return None, exc


# -- tests -----------------------------------------------------------------------------------


@active()
@given(fuzzed=events)
def test_fuzzed_events_are_rejected_cleanly(world: Any, fuzzed: Any) -> None:
    before = scan(world.store)
    world.log.reset()
    out, exc = attempt(lambda: world.app.handler(fuzzed, None))
    world.cont.pop_all()
    event("accepted" if exc is None else f"rejected: {type(exc).__name__}")
    if exc is not None:
        rejected_cleanly(exc, world.log, before, world.store)
        return
    body = fuzzed["jobstate"]
    if "start" in body:
        # Accepted: a start request for a registered type with a storable input.
        req = body["start"]
        assert out["outcome"] == "started", out
        assert req.get("job_id") is None or valid_id(req["job_id"]), req
        job = world.store.get(out["job_id"])
        assert job.job_type == req["job_type"] and is_json(req.get("input")), req
        assert job.input == plain(req.get("input"))
        forget(world.store, job.job_id)
    else:
        # A step event for a job an earlier example started: it ran or no-op'd.
        assert valid_id(body["job_id"]), body
        assert world.store.get(body["job_id"]).step >= 0
        assert isinstance(out["outcome"], str)


@active()
@given(job_type=mostly(st.just("t"), bad_types), input=mostly(jsonish, values),
       job_id=mostly(st.none(), some_ids),
       cursor=mostly(st.none(), st.one_of(st.dictionaries(any_text, jsonish, max_size=3),
                                          values)))
def test_fuzzed_start_arguments(world: Any, job_type: Any, input: Any, job_id: Any,
                                cursor: Any) -> None:
    before = scan(world.store)
    world.log.reset()
    jid, exc = attempt(lambda: world.app.start(job_type, input, job_id=job_id, cursor=cursor))
    world.cont.pop_all()
    event("accepted" if exc is None else f"rejected: {type(exc).__name__}")
    if exc is not None:
        if isinstance(exc, jobstate.JobConflict):  # a valid id fuzzed twice, other input
            assert world.log.writes == 1 and scan(world.store) == before
            return
        rejected_cleanly(exc, world.log, before, world.store)
        return
    assert job_type == "t" and is_json(input), (job_type, input)
    assert job_id is None or valid_id(job_id), job_id
    assert cursor is None or (isinstance(cursor, dict) and is_json(cursor)), cursor
    job = world.store.get(jid)
    assert job.input == plain(input)
    assert job.cursor == plain(cursor or {})
    forget(world.store, jid)


@active()
@given(cursor=st.one_of(st.none(), values), tokens=st.one_of(st.none(), values))
def test_fuzzed_step_state_is_committed_or_never_written(world: Any, cursor: Any,
                                                         tokens: Any) -> None:
    world.cont.pop_all()
    jid = world.app.start("state", {"k": 1}, job_id=f"state-{next(ids)}")
    world.box.clear()
    if cursor is not None:
        world.box["cursor"] = cursor
    if tokens is not None:
        world.box["tokens"] = tokens
    events = world.cont.pop_all()
    out, exc = attempt(lambda: world.app.handler(events[0], None))
    event("accepted" if exc is None else f"rejected: {type(exc).__name__}")
    job = world.store.get(jid, secrets=True)
    good_cursor = cursor is None or (isinstance(cursor, dict) and is_json(cursor))
    good_tokens = tokens is None or (isinstance(tokens, dict) and is_json(tokens))
    size = sum(len(json.dumps(v, ensure_ascii=False).encode()) for v in (cursor, tokens)
               if v is not None and is_json(v))
    if good_cursor and good_tokens and size < STATE_BUDGET_BYTES - 4096:
        assert exc is None, exc
        assert out["outcome"] == "committed", out
        assert job.step == 1 and job.cursor == plain(cursor or {})
        assert job.tokens == plain(tokens or {})
        return
    if good_cursor and good_tokens and size <= STATE_BUDGET_BYTES and exc is None:
        assert out["outcome"] == "committed", out  # near the budget either way is fine
        return
    assert exc is not None, f"bad state was not rejected: {out}"
    assert isinstance(exc, jobstate.StateNotSerializable | jobstate.StateTooLarge), (
        f"{type(exc).__name__}: {exc}")
    assert str(exc).strip()
    # The bad state never reached the table: the job failed at step 0 with its old state.
    assert job.status is JobStatus.FAILED, (job.status, out)
    assert job.step == 0 and job.cursor == {} and job.tokens == {}, job
    assert job.error and job.error.strip()


@active()
@given(key=effect_keys)
def test_fuzzed_effect_keys(world: Any, key: Any) -> None:
    world.cont.pop_all()
    jid = world.app.start("fx", None, job_id=f"fx-{next(ids)}")
    world.box.update(key=key, calls=0)
    events = world.cont.pop_all()
    out, exc = attempt(lambda: world.app.handler(events[0], None))
    assert exc is None, f"{type(exc).__name__}: {exc}"
    event(f"step {out['outcome']}")
    effects = jobstate.list_effects(world.store, jid)
    job = world.store.get(jid)
    valid = isinstance(key, str) and key != "" and len(key) <= 512 and _utf8(key) and (
        len(key.encode()) <= 1000 and key.isprintable())
    if valid:
        assert out["outcome"] == "completed", out
        assert [(e["key"], e["state"]) for e in effects] == [(key, "DONE")]
        assert job.result == "ran"
        return
    assert out["outcome"] == "failed" and "effect key" in out["detail"], out
    assert effects == [], effects  # nothing recorded for a rejected key
    assert job.status is JobStatus.FAILED and "effect key" in (job.error or "")


@active()
@given(job_id=some_ids, job_type=mostly(st.sampled_from(["t", "new-type"]), bad_types))
def test_fuzzed_ids_and_types_in_store_and_app_calls(world: Any, job_id: Any,
                                                     job_type: Any) -> None:
    store, app = world.store, world.app
    # (name, call, may it write?) Read-only calls must not even send a write request.
    calls: list[tuple[str, Callable[[], Any], bool]] = [
        ("get", lambda: store.get(job_id), False),
        ("history", lambda: store.history(job_id), False),
        ("list_effects", lambda: jobstate.list_effects(store, job_id), False),
        ("list", lambda: store.list(job_type=job_type), False),
        ("register", lambda: app.job(job_type)(lambda ctx: None), False),
        ("cancel", lambda: store.cancel(job_id), True),
        ("resume", lambda: store.resume(job_id), True),
        ("mark_effect", lambda: jobstate.mark_effect(store, job_id, "k", done=True), True),
        ("set_paused", lambda: store.set_paused(job_type, True), True),
        ("create", lambda: store.create(job_type, None, job_id), True),
    ]
    for name, call, writes in calls:
        before = scan(store) if writes else []
        world.log.reset()
        out, exc = attempt(call)
        if not writes:
            assert world.log.writes == 0, (name, world.log.ops)
        if exc is None:
            # Accepted only when the id/type is well-formed.
            if name == "list":
                assert job_type is None or valid_type(job_type), (name, job_type)
            elif name in ("set_paused", "register"):
                assert valid_type(job_type), (name, job_type)
                if name == "set_paused":
                    store.set_paused(job_type, False)
            elif name == "create":
                assert valid_type(job_type) and (job_id is None or valid_id(job_id)), (
                    name, job_type, job_id)
                forget(store, out[0].job_id)
            else:
                assert valid_id(job_id), (name, job_id)
            continue
        if isinstance(exc, jobstate.JobConflict):
            continue
        assert isinstance(exc, JobStateError), f"{name}: {type(exc).__name__}: {exc}"
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        if writes and world.log.writes:
            # mark_effect on an existing job tries its conditional write, then says why not.
            assert name == "mark_effect" and scan(store) == before, (name, world.log.ops)
        if isinstance(exc, jobstate.JobNotFound | jobstate.JobFinished):
            assert valid_id(job_id), (name, job_id)  # only well-formed ids get this far
