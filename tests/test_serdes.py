"""Custom serialisation (issue 19): `@app.job(..., serdes=...)` and `ctx.once(...,
serdes=...)` store effect results and job results (as their parent sees them) with a
serdes; JSON stays the default; errors name the value and the key."""

from __future__ import annotations

import datetime as dt
import json
import pickle
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from conftest import drain

import jobstate
from jobstate import JobStatus, serdes
from jobstate.testing import Driver

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Price:
    amount: Decimal
    at: dt.date


class PriceSerdes:
    """An object with dumps/loads: Price, Decimal and dates as tagged JSON."""

    def dumps(self, value: Any) -> str:
        def enc(v: Any) -> Any:
            if isinstance(v, Price):
                return {"$price": [str(v.amount), v.at.isoformat()]}
            if isinstance(v, Decimal):
                return {"$dec": str(v)}
            if isinstance(v, list):
                return [enc(x) for x in v]
            if v is None or isinstance(v, str | int | float | bool):
                return v
            raise TypeError(f"cannot encode {type(v).__name__}")
        return json.dumps(enc(value))

    def loads(self, text: str) -> Any:
        def dec(v: Any) -> Any:
            if isinstance(v, dict) and "$price" in v:
                return Price(Decimal(v["$price"][0]), dt.date.fromisoformat(v["$price"][1]))
            if isinstance(v, dict) and "$dec" in v:
                return Decimal(v["$dec"])
            if isinstance(v, list):
                return [dec(x) for x in v]
            return v
        return dec(json.loads(text))


PICKLE = (lambda v: pickle.dumps(v).hex(), lambda t: pickle.loads(bytes.fromhex(t)))


def raw_effect(store: jobstate.JobStore, job_id: str, key: str) -> Any:
    item = store.call("get_item", Key=jobstate.schema.effect_key(job_id, key),
                      ConsistentRead=True)["Item"]
    return json.loads(item[jobstate.schema.FX.RESULT]["S"])


def test_a_job_types_serdes_round_trips_effect_results_across_a_retry(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation) -> None:
    app = jobstate.App(store, cont)
    calls: list[str] = []
    got: list[Any] = []

    def quote() -> Price:
        calls.append("quote")
        return Price(Decimal("12.30"), dt.date(2026, 12, 6))

    @app.job("priced", serdes=PriceSerdes(), max_attempts=2)
    def priced(ctx: jobstate.StepContext) -> Any:
        got.append(ctx.once("quote", quote))
        got.append(ctx.once("blob", lambda: {1, 2}, serdes=PICKLE))  # per call: a set
        got.append(ctx.once("plain", lambda: {"n": 1}, serdes=serdes.JSON))
        if ctx.attempt == 1:
            raise ConnectionError("after the effects")  # the retry replays them
        return ctx.complete(None)

    app.start("priced", None, job_id="p")
    drain(app, cont)
    assert store.get("p").status is JobStatus.SUCCEEDED
    assert calls == ["quote"]  # ran once, read back twice
    price = Price(Decimal("12.30"), dt.date(2026, 12, 6))
    assert got == [price, {1, 2}, {"n": 1}] * 2
    assert isinstance(got[3].amount, Decimal)
    # Stored: a custom serdes' text as a JSON string; the default as plain JSON.
    assert raw_effect(store, "p", "quote") == '{"$price": ["12.30", "2026-12-06"]}'
    assert raw_effect(store, "p", "plain") == {"n": 1}


def test_children_results_are_read_with_the_child_types_serdes(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
        clock: jobstate.ManualClock) -> None:
    app = jobstate.App(store, cont)
    seen: list[Any] = []

    @app.job("parent")
    def parent(ctx: jobstate.StepContext) -> Any:
        if ctx.step == 0:
            ctx.spawn("pricer", ["1.5", "2.25"])
        seen.extend(c.result for c in ctx.children())
        return ctx.complete(str(sum(p.amount for p in seen)))

    @app.job("pricer", serdes=PriceSerdes())
    def pricer(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(Price(Decimal(ctx.input), dt.date(2026, 1, 1)))

    app.start("parent", None, job_id="pp")
    d = Driver(app, cont, clock, seed=3, duplicates=0.3, crashes=0.1, lost=0.05)
    d.run_until_done(["pp"], calm_after=20)
    assert store.get("pp").result == "3.75"
    assert all(isinstance(p, Price) for p in seen)
    # The child's own view stays readable (the serdes text, as a string).
    assert "$price" in store.get("pp.s0.0").result


def test_errors_name_the_value_and_the_key(store: jobstate.JobStore,
                                           cont: jobstate.InMemoryContinuation) -> None:
    app = jobstate.App(store, cont)

    @app.job("odd", serdes=PriceSerdes(), max_attempts=1)
    def odd(ctx: jobstate.StepContext) -> Any:
        ctx.once("when", lambda: dt.datetime(2026, 1, 1, 12, 0))  # PriceSerdes refuses it

    @app.job("json", max_attempts=1)
    def plain(ctx: jobstate.StepContext) -> Any:
        ctx.once("amount", lambda: Decimal("1.0"))

    for job_type, key, words in (("odd", "when", ("datetime value", "PriceSerdes")),
                                 ("json", "amount", ("Decimal",))):
        app.start(job_type, None, job_id=job_type)
        with pytest.raises(jobstate.StateNotSerializable) as err:
            drain(app, cont)  # a programming error surfaces; the job is FAILED with it
        job = store.get(job_type)
        assert job.status is JobStatus.FAILED and str(err.value) in (job.error or "")
        assert f"effect {key!r} of job {job_type!r}" in str(err.value)
        assert all(w in str(err.value) for w in words), str(err.value)


def test_a_serdes_that_is_neither_an_object_nor_a_pair_is_refused(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation) -> None:
    app = jobstate.App(store, cont)
    with pytest.raises(jobstate.InvalidInput, match="dumps\\(value\\) -> str and loads"):
        app.job("bad", serdes="json")  # type: ignore[arg-type]
    with pytest.raises(jobstate.InvalidInput, match="must be an object"):
        app.job("worse", serdes=(json.dumps,))  # type: ignore[arg-type]


def test_for_job_picks_the_call_then_the_job_type_then_json() -> None:
    class Spec:
        serdes = PriceSerdes()

    specs = {"t": Spec()}
    assert serdes.for_job(specs, "t") is Spec.serdes
    assert isinstance(serdes.for_job(specs, "t", call=PICKLE), serdes.Pair)
    assert serdes.for_job(specs, "other") is serdes.JSON
    assert serdes.for_job({}, None) is serdes.JSON
    value = Price(Decimal("0.1"), dt.date(2026, 2, 3))
    assert serdes.decode(Spec.serdes, serdes.encode(Spec.serdes, value, "x"), "x") == value


def test_a_callback_result_is_sent_and_read_with_the_job_types_serdes(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation) -> None:
    app = jobstate.App(store, cont)
    tokens: list[str] = []
    got: list[Any] = []

    @app.job("quoted", serdes=PriceSerdes())
    def quoted(ctx: jobstate.StepContext) -> Any:
        got.append(ctx.wait_for_callback("quote", tokens.append, timeout_s=600))
        return ctx.complete(None)

    app.start("quoted", None, job_id="q")
    drain(app, cont)
    price = Price(Decimal("9.99"), dt.date(2026, 12, 6))
    app.complete_callback(tokens[0], price)  # encoded with the waiting job type's serdes
    drain(app, cont)
    assert got == [price] and isinstance(got[0].amount, Decimal)
    assert store.get("q").status is JobStatus.SUCCEEDED
    # A value the serdes cannot encode is refused before anything is written.
    app.start("quoted", None, job_id="q2")
    drain(app, cont)
    with pytest.raises(jobstate.StateNotSerializable, match="callback result"):
        app.complete_callback(tokens[1], {1, 2})
    assert store.get("q2").status is JobStatus.WAITING


def test_a_json_answer_from_outside_the_app_reaches_a_serdes_job_as_json(
        store: jobstate.JobStore, cont: jobstate.InMemoryContinuation) -> None:
    # JobStore, the CLI and the status API know no job types: they send JSON. The step of a
    # type with a serdes of its own reads that JSON as JSON (a string too, which its
    # serdes' loads could not read), not through its serdes.
    app = jobstate.App(store, cont)
    tokens: list[str] = []
    got: list[Any] = []

    @app.job("pickled", serdes=PICKLE)
    def pickled(ctx: jobstate.StepContext) -> Any:
        got.append(ctx.wait_for_callback("ok", tokens.append, timeout_s=600))
        return ctx.complete(None)

    for i, answer in enumerate(["approved", {"by": "ops", "n": 2}]):
        app.start("pickled", None, job_id=f"p{i}")
        drain(app, cont)
        store.complete_callback(tokens[i], answer)
        jobstate.sweep(store, cont)
        drain(app, cont)
        assert got[i] == answer and store.get(f"p{i}").status is JobStatus.SUCCEEDED
