"""The benchmarks' pure parts: cost arithmetic, summary lines, the utilisation simulation.

Nothing here measures or asserts a time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import cost, report, scale, utilisation  # noqa: E402
from benchmarks.__main__ import summaries  # noqa: E402
from benchmarks.latency import percentile  # noqa: E402

REFERENCE = ROOT / "benchmarks" / "results" / "reference.json"
REQUIRED = ("step.writes", "step.reads", "effect.writes", "batched_effect.round_trips",
            "step.latency_ratio_vs_powertools", "invocation.utilisation",
            "invocation.timeouts", "fanout.writes_per_join", "cost.usd_per_million_steps")


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


def test_cost_rows_from_capacity_or_request_counts() -> None:
    with_cap = cost.run(_fig1(True), capacity=True)
    assert with_cap["steps"][0]["usd_per_million"] == pytest.approx(4.075)
    assert with_cap["steps"][0]["usd_per_million"] == pytest.approx(
        cost.PerStep(6, 1).usd_per_million())
    pt = next(r for r in with_cap["steps"] if r["option"].startswith("Powertools"))
    assert pt["usd_per_million"] == pytest.approx(1.45)
    # moto reports no capacity: fall back to one unit per request, and say so
    no_cap = cost.run(_fig1(False), capacity=False)
    assert no_cap["steps"][0]["usd_per_million"] == pytest.approx(2 * 0.625 + 0.125 + 0.2)
    assert "request counts" in no_cap["basis"]


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


def test_reference_run_has_every_required_summary_line() -> None:
    doc = json.loads(REFERENCE.read_text(encoding="utf-8"))
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
