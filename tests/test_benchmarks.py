"""The benchmarks' pure parts: cost arithmetic, summary lines, the utilisation simulation.

Nothing here measures or asserts a time.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any, cast

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cost, costmodel, report, scale, utilisation  # noqa: E402
from benchmarks.__main__ import summaries  # noqa: E402
from benchmarks.engine import Engine  # noqa: E402
from benchmarks.latency import percentile  # noqa: E402

REFERENCE = ROOT / "benchmarks" / "results" / "reference.json"
# Issue 17's figures (names are a contract) and the ones kept from before.
ISSUE_17 = ("step.wru", "step.wru_long", "step.reads", "step.rru_long", "step.wru_big_input",
            "step.latency_ratio_vs_powertools", "step.latency_ratio_vs_floor",
            "step.latency_ratio_vs_indexed_floor",
            "step.request_bytes", "cost.usd_per_million_steps",
            "cost.usd_per_million_long_steps", "cost.sweeper_usd_per_million_steps",
            "cost.sweeper_usd_per_million_long_steps", "fanout.writes_per_join")
REQUIRED = (*ISSUE_17, "step.writes", "effect.writes", "batched_effect.round_trips",
            "invocation.utilisation", "invocation.timeouts",
            "fanout.decide_writes")  # issue 19: what deciding a completion policy writes


# -- cost -----------------------------------------------------------------------------------


def test_cost_per_million_steps_uses_facts_prices() -> None:
    assert cost.PerStep(wru=2, rru=0).usd_per_million() == pytest.approx(1.25 + 0.20)
    assert cost.PerStep(wru=6, rru=1).usd_per_million() == pytest.approx(3.75 + 0.125 + 0.20)
    assert cost.PerStep().usd_per_million() == pytest.approx(0.20)  # naive: the invoke only
    assert cost.PerStep(transitions=1).usd_per_million() == pytest.approx(25.20)
    assert cost.PerStep(durable_ops=1).usd_per_million() == pytest.approx(8.20)
    assert cost.PerStep(lambda_requests=0, wru=4, rru=1).usd_per_million() == pytest.approx(
        2.625)


def _unit(writes: float, reads: float, wru: float | None, rru: float | None) -> dict[str, object]:
    return {"requests": writes + reads, "writes": writes, "reads": reads, "billed_wru": wru,
            "billed_rru": rru}


def _fig1(capacity: bool) -> dict[str, object]:
    def u(w: float, r: float, wru: float, rru: float) -> dict[str, object]:
        return _unit(w, r, wru if capacity else None, rru if capacity else None)

    return {
        "jobstate": {"step_long": u(2, 1, 6, 1), "step_short": u(2, 0, 6, 0),
                     "effect": u(2, 0, 2, 0), "batched_effect": u(0.08, 0.04, 4, 1)},
        "powertools": {"step": u(2, 0, 2, 0), "effect": u(2, 0, 2, 0)},
    }


def _option(fig: dict[str, object], prefix: str) -> dict[str, object]:
    return next(r for r in fig["steps"] if r["option"].startswith(prefix))  # type: ignore[attr-defined]


def test_cost_rows_from_capacity_or_request_counts() -> None:
    with_cap = cost.run(_fig1(True), capacity=True)
    long = _option(with_cap, "jobstate, steps 60 s apart")
    assert long["usd_per_million"] == pytest.approx(4.075)
    assert long["usd_per_million"] == pytest.approx(cost.PerStep(6, 1).usd_per_million())
    assert _option(with_cap, "jobstate, back-to-back")["usd_per_million"] == pytest.approx(3.95)
    assert _option(with_cap, "Powertools")["usd_per_million"] == pytest.approx(1.45)
    # moto reports no capacity: fall back to one unit per request, and say so
    no_cap = cost.run(_fig1(False), capacity=False)
    assert _option(no_cap, "jobstate, steps 60 s apart")["usd_per_million"] == pytest.approx(
        2 * 0.625 + 0.125 + 0.2)
    assert "request counts" in no_cap["basis"]


# -- the cost model ---------------------------------------------------------------------------


def _totals(steps: int = 3000, *, wru: float | None = 6000.0, rru: float | None = 0.0,
            sweeps: int = 60, sweep_wru: float = 0.0,
            sweep_rru: float | None = 240.0) -> costmodel.Totals:
    return costmodel.Totals(
        steps=steps, deliveries=steps, sweeps=sweeps, redispatched=0, scanned=0,
        steps_usage={"requests": 2.0 * steps, "writes": 2.0 * steps, "reads": 0.0,
                     "wru": wru, "rru": rru},
        sweeper_usage={"requests": 8.0 * sweeps, "writes": 0.0, "reads": 8.0 * sweeps,
                       "wru": sweep_wru if sweep_rru is not None else None,
                       "rru": sweep_rru})


def test_cost_model_amortises_the_sweeper_over_the_steps() -> None:
    model = costmodel.Model("long", 60.0, window_s=3600.0)
    r = costmodel.per_step(_totals(), model)
    # the floor (2 WRU + the invoke) plus the sweeper: 240 RRU and 60 invocations / 3000
    assert r["steps"]["wru"] == 2.0 and r["steps"]["lambda_requests"] == 1.0
    assert r["sweeper"]["rru"] == pytest.approx(0.08)
    assert r["sweeper"]["lambda_requests"] == pytest.approx(0.02)
    assert r["usd_per_million_sweeper"] == pytest.approx(0.08 * 0.125 + 0.02 * 0.20)
    assert r["usd_per_million"] == pytest.approx(1.45 + r["usd_per_million_sweeper"])
    assert r["usd_per_million_steps_only"] == pytest.approx(1.45)
    assert "50 jobs" in r["detail"] and "60 s" in r["detail"]
    # a sweeper that writes every running job every minute shows up in the figure
    costly = costmodel.per_step(_totals(sweep_wru=60 * 50 * 1.0), model)
    assert costly["sweeper"]["wru"] == 1.0
    assert costly["usd_per_million"] > 1.6 > r["usd_per_million"]


def test_cost_model_falls_back_to_request_counts_without_capacity() -> None:
    r = costmodel.per_step(_totals(wru=None, rru=None, sweep_rru=None),
                           costmodel.Model("back-to-back", 10.0))
    assert r["steps"]["wru"] == 2.0 and r["sweeper"]["rru"] == pytest.approx(8 * 60 / 3000)
    assert "request counts" in r["basis"]


def test_cost_rows_lead_with_the_cost_model() -> None:
    model = costmodel.Model("back-to-back", 10.0)
    fig = cost.run(_fig1(True), {"back-to-back": costmodel.per_step(_totals(), model)},
                   capacity=True)
    first = fig["steps"][0]
    assert first["option"].startswith("jobstate, cost model back-to-back")
    assert first["usd_per_million"] == pytest.approx(
        costmodel.per_step(_totals(), model)["usd_per_million"])


# -- summary lines ----------------------------------------------------------------------------


def test_summary_line_format_and_verdicts() -> None:
    lines = [
        report.at_most("step.writes", 2, 2, "claim + commit"),
        report.equal("step.reads", 1, 0),
        report.at_least("invocation.utilisation", 0.925, 0.95, fmt="{:.1%}"),
        report.at_most("step.latency_ratio_vs_powertools", None, 1.0),
        report.info("fanout.requests_per_chain", 5.44),
    ]
    text = [s.line() for s in lines]
    assert text[0] == "step.writes: 2 (target <= 2) ok -- claim + commit"
    assert text[1] == "step.reads: 1 (target = 0) MISS"
    assert text[2] == "invocation.utilisation: 92.5% (target >= 95%) MISS"
    assert text[3] == "step.latency_ratio_vs_powertools: n/a (target <= 1)"
    assert text[4] == "fanout.requests_per_chain: 5.44 (target none)"
    for line in text:
        m = report.SUMMARY_RE.match(line)
        assert m, line
    assert report.SUMMARY_RE.match(text[1])["verdict"] == "MISS"  # type: ignore[index]


def _reference() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(REFERENCE.read_text(encoding="utf-8")))


def _lines(doc: dict[str, Any]) -> dict[str, report.Summary]:
    return {s.name: s for s in summaries(doc)}


def test_reference_run_has_every_required_summary_line() -> None:
    doc = _reference()
    lines = summaries(doc)
    names = [s.name for s in lines]
    assert len(names) == len(set(names))
    for name in REQUIRED:
        assert name in names, name
    for s in lines:
        assert report.SUMMARY_RE.match(s.line()), s.line()
    # the committed lines are what summaries() derives from the committed data
    assert [s["line"] for s in doc["summary"]] == [s.line() for s in lines]
    assert doc["meta"]["engine"]["name"] in ("dynamodb-local", "moto-server")


def test_callback_requests_is_judged_when_the_run_measured_an_answer() -> None:
    doc = _reference()
    unit = {"requests": 3.0, "writes": 3.0, "reads": 0.0, "invokes": 1.0}
    doc["requests"]["jobstate"]["callback_answer"] = unit
    got = _lines(doc)["callback.requests"]
    assert (got.value, got.ok, got.target) == (3.0, True, "<= 3")
    doc["requests"]["jobstate"]["callback_answer"] = {**unit, "requests": 4.0, "reads": 1.0}
    assert _lines(doc)["callback.requests"].ok is False
    del doc["requests"]["jobstate"]["callback_answer"]  # a run from before issue 18
    assert "callback.requests" not in _lines(doc)


def test_performance_doc_shows_the_reference_run_of_every_issue_17_figure() -> None:
    # docs/performance.md states today's figures: it must be the committed run's lines.
    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    lines = {s["name"]: s["line"] for s in _reference()["summary"]}
    for name in ISSUE_17:
        assert lines[name] in text, f"docs/performance.md lacks the reference line {name}"


def test_step_figures_read_the_right_regime_and_judge_against_issue_17() -> None:
    doc = _reference()
    js = doc["requests"]["jobstate"]
    js["step_short"].update(billed_wru=2.0, reads=0.0, writes=2.0, gsi_wcu=0.0)
    js["step_long"].update(billed_wru=2.5, billed_rru=0.05, reads=0.1)
    js["step_big_input"].update(billed_wru=2.0, billed_rru=0.0, reads=0.0)
    got = _lines(doc)
    assert (got["step.wru"].value, got["step.wru"].ok) == (2.0, True)
    assert (got["step.wru_long"].value, got["step.wru_long"].ok) == (2.5, False)
    assert got["step.wru_long"].target == "<= 2.2"
    assert (got["step.rru_long"].value, got["step.rru_long"].ok) == (0.05, True)
    assert (got["step.reads"].value, got["step.reads"].ok) == (0.0, True)
    assert got["step.reads_long"].value == 0.1
    assert (got["step.wru_big_input"].value, got["step.wru_big_input"].ok) == (2.0, True)
    js["step_short"]["billed_wru"] = 2.01
    js["step_big_input"]["billed_wru"] = 3.0
    js["step_long"]["billed_rru"] = 0.5
    got = _lines(doc)
    assert got["step.wru"].ok is False and got["step.wru_big_input"].ok is False
    assert got["step.rru_long"].ok is False


def test_request_bytes_is_judged_against_35_percent_below_3074() -> None:
    doc = _reference()
    sent = doc["latency"]["jobstate"]
    sent["bytes_sent_per_step"] = 1998.0
    line = _lines(doc)["step.request_bytes"]
    assert line.ok is True and "-35.0% vs 3,074 B" in line.note
    sent["bytes_sent_per_step"] = 2000.0
    assert _lines(doc)["step.request_bytes"].ok is False
    sent["bytes_sent_per_step"] = 3300.0
    line = _lines(doc)["step.request_bytes"]
    assert line.ok is False and "+7.4% vs 3,074 B" in line.note


def test_latency_ratios_vs_powertools_and_the_floor() -> None:
    doc = _reference()
    f2 = doc["latency"]
    f2.update(ratio_median=1.1, ratio_floor_median=1.3)
    got = _lines(doc)
    assert got["step.latency_ratio_vs_powertools"].ok is True
    assert got["step.latency_ratio_vs_powertools"].target == "<= 1.1"
    assert got["step.latency_ratio_vs_floor"].value == 1.3
    assert f"{f2['item_bytes']:,} B item" in got["step.latency_ratio_vs_floor"].note
    f2["ratio_median"] = 1.11
    assert _lines(doc)["step.latency_ratio_vs_powertools"].ok is False
    f2.update(ratio_indexed_floor_median=1.2, index_overhead=1.15)
    line = _lines(doc)["step.latency_ratio_vs_indexed_floor"]
    assert line.value == 1.2 and "1.15x the floor without them" in line.note


def test_cost_figures_come_from_the_cost_model_with_the_sweeper() -> None:
    doc = _reference()
    cheap = costmodel.per_step(_totals(), costmodel.Model("back-to-back", 10.0))
    long = costmodel.per_step(_totals(steps=500, sweep_wru=500.0),
                              costmodel.Model("long", 60.0))
    doc["cost_model"] = {"back-to-back": cheap, "long": long}
    got = _lines(doc)
    steps, long_steps = got["cost.usd_per_million_steps"], got["cost.usd_per_million_long_steps"]
    assert steps.value == pytest.approx(cheap["usd_per_million"]) and steps.ok is True
    assert steps.target == "<= 1.5" and long_steps.target == "<= 1.6"
    assert long_steps.value == pytest.approx(long["usd_per_million"]) and long_steps.ok is False
    assert got["cost.sweeper_usd_per_million_long_steps"].value == pytest.approx(
        long["usd_per_million_sweeper"])
    assert "sweeper included" in steps.note and "50 jobs" in steps.note


def test_figures_without_capacity_read_na_and_carry_no_verdict() -> None:
    doc = copy.deepcopy(_reference())
    for unit in doc["requests"]["jobstate"].values():
        if isinstance(unit, dict) and "billed_wru" in unit:
            unit.update(billed_wru=None, billed_rru=None, wcu=None, gsi_wcu=None)
    got = _lines(doc)
    for name in ("step.wru", "step.wru_long", "step.rru_long", "step.wru_big_input"):
        assert got[name].ok is None and got[name].value_text() == "n/a", name


def test_table_renders_numbers_and_missing_values() -> None:
    text = report.table(["a", "b"], [["x", 1.5], ["y", None]])
    assert text.splitlines()[2].split() == ["x", "1.50"]
    assert "n/a" in text
    md = report.table(["a", "b"], [["x", 2.0]], markdown=True)
    assert md.splitlines()[0] == "| a | b |" and md.splitlines()[2] == "| x | 2 |"


# -- utilisation simulation -------------------------------------------------------------------


def test_utilisation_simulation_is_deterministic() -> None:
    work = utilisation.Workload(invocations=60, seed=3)
    a = utilisation.simulate(utilisation.adaptive, work, name="a")
    b = utilisation.simulate(utilisation.adaptive, work, name="a")
    assert a == b
    other = utilisation.simulate(utilisation.adaptive,
                                 utilisation.Workload(invocations=60, seed=4), name="a")
    assert other.utilisation != a.utilisation


def test_utilisation_policies_compare_on_the_same_draws() -> None:
    work = utilisation.Workload(invocations=100, seed=8)
    adaptive = utilisation.simulate(utilisation.adaptive, work)
    fixed = utilisation.simulate(utilisation.fixed_margin(12.0), work)
    ceiling = utilisation.simulate(utilisation.oracle, work)
    assert fixed.mean_left_s >= 10.0  # it stops with 12 s left, minus one batch at most
    assert adaptive.utilisation > fixed.utilisation
    assert ceiling.utilisation >= adaptive.utilisation
    assert ceiling.timeouts == 0
    assert 0.0 < adaptive.utilisation < 1.0


def test_a_batch_past_the_deadline_is_a_timeout_with_no_useful_work() -> None:
    work = utilisation.Workload(timeout_s=10.0, mean_s=2.0, sd_s=0.5, invocations=20)
    never_stop = utilisation.simulate(lambda *_: True, work)
    assert never_stop.timeouts == 20 and never_stop.utilisation == 0.0


def test_lognormal_parameters_match_mean_and_sd() -> None:
    import math

    mu, sigma = utilisation.Workload(mean_s=2.0, sd_s=0.7).lognormal()
    mean = math.exp(mu + sigma**2 / 2)
    sd = math.sqrt((math.exp(sigma**2) - 1) * math.exp(2 * mu + sigma**2))
    assert mean == pytest.approx(2.0) and sd == pytest.approx(0.7)


# -- small helpers ----------------------------------------------------------------------------


def test_linear_fit_and_percentile() -> None:
    f = scale.fit([1, 2, 3], [12, 22, 32])
    assert f["slope"] == pytest.approx(10) and f["intercept"] == pytest.approx(2)
    assert f["linear"] is True
    assert scale.fit([1, 2, 3], [1, 10, 2])["linear"] is False
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([5.0], 99) == 5.0


# -- the meter's billing rules (fed botocore-shaped events, no engine) ------------------------


class _Model:
    def __init__(self, name: str, members: tuple[str, ...] = ("ReturnConsumedCapacity",)):
        self.name = name
        self.input_shape = type("Shape", (), {"members": dict.fromkeys(members)})()


def _call(meter: object, op: str, params: dict[str, object],
          parsed: dict[str, object]) -> None:
    model, context = _Model(op), {}
    meter._inject(params=params, model=model, context=context)  # type: ignore[attr-defined]
    meter._before_call(model=model)  # type: ignore[attr-defined]
    meter._after_call(parsed=parsed, model=model, context=context)  # type: ignore[attr-defined]


def test_meter_applies_aws_billing_rules_on_top_of_engine_capacity() -> None:
    from benchmarks.engine import Meter

    meter = Meter()
    params: dict[str, object] = {}
    _call(meter, "UpdateItem", params, {"ConsumedCapacity": {
        "CapacityUnits": 3.0, "Table": {"CapacityUnits": 1.0},
        "GlobalSecondaryIndexes": {"due": {"CapacityUnits": 2.0}}}})
    assert params["ReturnConsumedCapacity"] == "INDEXES"
    # 25 puts in a transaction: DynamoDB Local says 2, AWS bills 2 per item
    _call(meter, "TransactWriteItems", {"TransactItems": [{"Put": {}}] * 25},
          {"ConsumedCapacity": [{"CapacityUnits": 2.0, "Table": {"CapacityUnits": 2.0}}]})
    # a failed condition: nothing reported, 1 unit billed
    _call(meter, "PutItem", {}, {"Error": {"Code": "ConditionalCheckFailedException"}})
    # a batch get of 25 missing keys, strongly consistent: 25 units billed
    _call(meter, "BatchGetItem", {"RequestItems": {"t": {"Keys": [{}] * 25,
                                                         "ConsistentRead": True}}},
          {"ConsumedCapacity": [{"CapacityUnits": 0.0}]})
    t = meter.snapshot()
    assert (t.requests, t.writes, t.reads, t.condition_failures) == (4, 3, 1, 1)
    assert t.wcu == 5.0 and t.gsi_wcu == 2.0 and t.txn_items == 25
    assert t.billed_wru == 3.0 + 50.0 + 1.0
    assert t.rcu == 0.0 and t.billed_rru == 25.0
    assert (meter.snapshot() - t).requests == 0
    # reads that find nothing: an empty Query (eventually consistent) and a strongly
    # consistent GetItem of a missing key still cost a unit; a larger read keeps its own
    _call(meter, "Query", {}, {"ConsumedCapacity": {"CapacityUnits": 0.0}})
    _call(meter, "GetItem", {"ConsistentRead": True}, {"ConsumedCapacity": {}})
    _call(meter, "Query", {}, {"ConsumedCapacity": {"CapacityUnits": 2.5}})
    d = meter.snapshot() - t
    assert d.reads == 3 and d.rcu == 2.5 and d.billed_rru == 0.5 + 1.0 + 2.5


@pytest.mark.parametrize("module", sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py")))
def test_every_benchmark_module_imports(module: str) -> None:
    # `python -m benchmarks` imports them all; a broken import must fail here, not in CI's
    # benchmark step after the whole suite ran.
    import importlib

    importlib.import_module(f"benchmarks.{module}")


# -- the floor's item size and the cost model, on the test backend ---------------------------


def test_item_size_follows_aws_rules() -> None:
    from benchmarks.latency import item_size

    assert item_size({"id": {"S": "abc"}}) == 2 + 3
    assert item_size({"n": {"N": "123"}, "z": {"N": "1000"}}) == (1 + 3) + (1 + 2)
    flags = {"b": {"B": b"\x00\x01"}, "t": {"BOOL": True}, "u": {"NULL": True}}
    assert item_size(flags) == 3 + 2 + 2
    assert item_size({"m": {"M": {"a": {"S": "x"}}}, "l": {"L": [{"S": "é"}]}}) == (
        1 + 3 + (1 + 1 + 1)) + (1 + 3 + (1 + 2))
    assert item_size({"s": {"SS": ["ab", "c"]}}) == 1 + 3


@pytest.fixture
def bench_engine(engine: str | None) -> Any:
    """benchmarks.engine.Engine on the test backend (moto in-process: no capacity)."""
    from backends import selected_backend

    if engine is not None:
        yield Engine(selected_backend(), engine, "test backend",
                     selected_backend() == "dynamodb-local")
        return
    from moto import mock_aws

    with mock_aws():
        yield Engine("moto", cast(str, None), "moto in-process", False)


@pytest.mark.integration
def test_floor_item_matches_the_item_a_step_writes(bench_engine: Engine) -> None:
    import jobstate
    from benchmarks.common import new_store
    from benchmarks.latency import Floor, WrittenKeys, item_size, largest_written_item

    store = new_store(bench_engine, None)
    cont = jobstate.InMemoryContinuation()
    app = jobstate.App(store, cont)

    @app.job("sized")
    def sized(ctx: jobstate.StepContext) -> None:
        ctx.cursor["pad"] = "x" * 300

    app.start("sized", {})
    app.handler(cont.pop_all()[0])
    with WrittenKeys(store.client, store.table_name) as written:
        app.handler(cont.pop_all()[0])
    app.handler(cont.pop_all()[0])  # after the context: not recorded
    assert written.keys
    size = largest_written_item(store.client, store.table_name, written)
    assert size > 300  # the job item carries the cursor
    floor = Floor(bench_engine, size)
    floor.step()
    item = floor.client.get_item(TableName=floor.table, Key={"id": {"S": floor._id(1)}},
                                 ConsistentRead=True)["Item"]
    assert item_size(item) == size == floor.item_bytes and item["st"] == {"S": "END"}


@pytest.mark.integration
def test_cost_model_counts_steps_and_meters_the_sweeper_apart(bench_engine: Engine) -> None:
    model = costmodel.Model("back-to-back", 10.0, jobs=3, window_s=120.0)
    totals = costmodel.simulate(bench_engine, model)
    # 3 jobs, one step every 10 s each, 120 s window: 12 steps each; 2 sweeps
    assert (totals.steps, totals.deliveries, totals.sweeps) == (36, 36, 2)
    assert totals.redispatched == 0  # nothing was lost, so the sweeper re-sent nothing
    assert totals.steps_usage["writes"] >= totals.steps  # every step commits with a write
    assert totals.sweeper_usage["requests"] >= totals.sweeps  # its own meter, its own cost
    r = costmodel.per_step(totals, model)
    assert r["total"]["lambda_requests"] == pytest.approx((36 + 2) / 36)
    if bench_engine.capacity:
        assert r["steps"]["wru"] >= 1 and r["sweeper"]["rru"] > 0


def test_decide_writes_is_the_deciding_joins_extra_writes_judged_against_one() -> None:
    # Issue 19: what deciding a completion policy costs over an ordinary counted join.
    doc = _reference()
    pol = doc["requests"]["jobstate"]["policy"]
    assert _lines(doc)["fanout.decide_writes"].value == (
        pol["deciding_join"]["writes"] - pol["counted_join"]["writes"])
    pol["counted_join"]["writes"] = 2.0
    pol["deciding_join"]["writes"] = 3.0
    assert (_lines(doc)["fanout.decide_writes"].value, _lines(doc)["fanout.decide_writes"].ok) == (
        1.0, True)
    pol["deciding_join"]["writes"] = 4.0
    assert _lines(doc)["fanout.decide_writes"].ok is False
    del doc["requests"]["jobstate"]["policy"]
    with pytest.raises(KeyError):  # the figure cannot go missing without a failure
        summaries(doc)
