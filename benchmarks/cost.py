"""Figure 5: dollars per million steps, from measured units and published prices.

The headline rows come from the cost model (`costmodel.py`: 50 jobs stepping for a
simulated hour with the sweeper running every minute, everything metered); the per-step
rows below them are figure 1's single chains, without the sweeper.

Prices (us-east-1, on-demand, /work/shared/facts.md): DynamoDB $0.625 per million write
request units and $0.125 per million read request units; Lambda $0.20 per million
requests (each step is one async invoke of the function); Step Functions Standard $25
per million state transitions; Lambda durable functions $8 per million durable
operations. Lambda compute (GB-seconds) is the same work under every option and is left
out; so are Step Functions' and durable functions' own data charges.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

WRU_USD_PER_M = 0.625
RRU_USD_PER_M = 0.125
LAMBDA_REQUEST_USD_PER_M = 0.20
SFN_TRANSITION_USD_PER_M = 25.0
DURABLE_OP_USD_PER_M = 8.0


@dataclass(frozen=True)
class PerStep:
    """Billable units one step consumes."""

    wru: float = 0.0
    rru: float = 0.0
    lambda_requests: float = 1.0
    transitions: float = 0.0
    durable_ops: float = 0.0

    def usd_per_million(self) -> float:
        return (self.wru * WRU_USD_PER_M + self.rru * RRU_USD_PER_M
                + self.lambda_requests * LAMBDA_REQUEST_USD_PER_M
                + self.transitions * SFN_TRANSITION_USD_PER_M
                + self.durable_ops * DURABLE_OP_USD_PER_M)


def row(name: str, units: PerStep, basis: str) -> dict[str, Any]:
    return {"option": name, **asdict(units), "usd_per_million": units.usd_per_million(),
            "basis": basis}


def run(fig1: dict[str, Any], model: dict[str, Any] | None = None, *,
        capacity: bool) -> dict[str, Any]:
    """Cost rows from figure 1's measured units (capacity when the engine reports it) and
    from the cost model's runs (`costmodel.run`: steps and sweeper together)."""
    js, pt = fig1["jobstate"], fig1["powertools"]

    def units(u: dict[str, Any], invokes: float = 1.0) -> PerStep:
        if capacity and u["billed_wru"] is not None:
            return PerStep(u["billed_wru"], u["billed_rru"] or 0.0, invokes)
        return PerStep(float(u["writes"]), float(u["reads"]), invokes)

    basis = ("measured capacity, AWS billing rules" if capacity
             else "request counts, 1 unit per request (engine reports no capacity)")
    modelled = []
    for name, m in (model or {}).items():
        t = m["total"]
        modelled.append(row(f"jobstate, cost model {name} ({m['detail']}): steps + sweeper",
                            PerStep(t["wru"], t["rru"], t["lambda_requests"]), m["basis"]))
    rows = [
        *modelled,
        row("jobstate, back-to-back steps", units(js["step_short"]), basis),
        row("jobstate, steps 60 s apart", units(js["step_long"]), basis),
        row("jobstate, requests only (1 unit each, no GSI)",
            PerStep(js["step_long"]["writes"], js["step_long"]["reads"], 1.0),
            "request counts"),
        row("Powertools @idempotent", units(pt["step"]), basis),
        row("naive recursion (no state)", PerStep(), "1 invoke per step"),
        row("Step Functions Standard (1 transition/step + Lambda task)",
            PerStep(transitions=1.0), "price list, lower bound"),
        row("Lambda durable functions (1 operation/step)", PerStep(durable_ops=1.0),
            "price list, lower bound"),
    ]
    effects = [
        row("jobstate ctx.once", units(js["effect"], 0.0), basis),
        row("jobstate ctx.once_batch (25)", units(js["batched_effect"], 0.0), basis),
        row("Powertools @idempotent_function", units(pt["effect"], 0.0), basis),
    ]
    return {"basis": basis, "steps": rows, "effects": effects,
            "prices": {"wru_per_m": WRU_USD_PER_M, "rru_per_m": RRU_USD_PER_M,
                       "lambda_request_per_m": LAMBDA_REQUEST_USD_PER_M,
                       "sfn_transition_per_m": SFN_TRANSITION_USD_PER_M,
                       "durable_op_per_m": DURABLE_OP_USD_PER_M}}


HEADERS = ["option", "WRU", "RRU", "Lambda req", "transitions", "durable ops", "$ / M steps"]


def table_rows(fig: dict[str, Any], key: str = "steps") -> list[list[Any]]:
    return [[r["option"], r["wru"], r["rru"], r["lambda_requests"], r["transitions"],
             r["durable_ops"], f"${r['usd_per_million']:.2f}"] for r in fig[key]]
