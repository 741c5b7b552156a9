"""`python -m benchmarks [--quick] [--engine ...] [--out FILE] [--markdown] [--only FIG ...]`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from jobstate.history import RING

from . import cost, costmodel, latency, machine, requests, scale, utilisation
from .engine import ENGINES, start_engine
from .report import Summary, at_least, at_most, equal, info, table

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"


REQUEST_BYTES_BEFORE = 3074  # issue 17: what the two requests of a step sent
REQUEST_BYTES_CUT = 0.35  # target: at least 35% less
LATENCY_VS_POWERTOOLS = 1.1


def _request_bytes(f2: dict[str, Any]) -> Summary:
    sent = f2["jobstate"]["bytes_sent_per_step"]
    cut = 1 - sent / REQUEST_BYTES_BEFORE
    return at_most("step.request_bytes", sent, REQUEST_BYTES_BEFORE * (1 - REQUEST_BYTES_CUT),
                   f"{-cut:+.1%} vs {REQUEST_BYTES_BEFORE:,} B (target: at least "
                   f"{REQUEST_BYTES_CUT:.0%} less); request bodies of figure 2's step; "
                   f"received {f2['jobstate']['bytes_received_per_step']:,.0f} B",
                   fmt="{:,.0f}")


def history_summaries(js: dict[str, Any]) -> list[Summary]:
    """What the default history ("steps") adds to a step (issue 20): measured over a chain
    long enough to move its step records to history items, against the plain step (history
    "recent", whose records ride on the step's own writes)."""
    hist = js.get("step_with_history")
    if hist is None:
        return []
    if hist["billed_wru"] is None or js["step_short"]["billed_wru"] is None:
        return [info("history.writes_per_step", hist["writes"] - js["step_short"]["writes"],
                     "write requests history adds per step (engine reports no capacity)",
                     fmt="{:.4f}")]
    added = hist["billed_wru"] - js["step_short"]["billed_wru"]
    return [info("history.wru_per_step", added,
                 f"WRU history adds per step, steps 1..{3 * RING} of a chain: one history "
                 f"item per {RING} steps (step total {hist['billed_wru']:.4g} WRU, "
                 f"{hist['writes']:.4g} writes)", fmt="{:.4f}")]


def _decide_writes(pol: dict[str, Any]) -> Summary:
    """Issue 19: what deciding a completion policy costs over an ordinary counted join."""
    counted, decided = pol["counted_join"], pol["deciding_join"]
    after, resume = pol["join_after_decision"], pol["parent_resume"]
    return at_most(
        "fanout.decide_writes", decided["writes"] - counted["writes"], 1,
        f"write requests the join that decides CompletionPolicy(min_successful="
        f"{pol['min_successful']}) costs over a counted join (a refused transaction, then "
        f"`decide`, {pol['deciding_items_written']:g} items besides the child's own); a join "
        f"after the decision: {after['writes'] - counted['writes']:+g} write, "
        f"{after['reads'] - counted['reads']:+g} read (a link only); the parent's resume: "
        f"{resume['writes']:.3g} writes, {resume['reads']:.3g} reads", fmt="{:g}")


def _wru(u: dict[str, Any], pt: dict[str, Any]) -> str:
    if u["billed_wru"] is None:
        return "engine reports no capacity"
    return (f"table + every GSI, AWS billing rules; {u['gsi_wcu']:g} of them GSI writes; "
            f"Powertools {pt['billed_wru']:g}")


def step_summaries(results: dict[str, Any]) -> list[Summary]:
    """Issue 17's per-step figures: capacity, reads, bytes, latency ratios."""
    f1, f2 = results["requests"], results["latency"]
    js, pt = f1["jobstate"], f1["powertools"]["step"]
    short, long, big = js["step_short"], js["step_long"], js["step_big_input"]
    reg = f1["regimes"]
    return [
        at_most("step.writes", short["writes"], 2, "write requests per back-to-back step"),
        equal("step.reads", short["reads"], 0,
              f"read requests per back-to-back step ({reg['short_step_s']:g} s each); "
              f"steps {reg['long_step_s']:g} s apart: see step.rru_long"),
        equal("step.reads_back_to_back", short["reads"], 0, "same regime as step.reads"),
        info("step.reads_long", long["reads"],
             f"read requests per step, steps {reg['long_step_s']:g} s apart"),
        at_most("step.wru", short["billed_wru"], 2,
                f"back-to-back, history \"recent\" (the default adds history.wru_per_step); "
                f"{_wru(short, pt)}"),
        at_most("step.wru_long", long["billed_wru"], 2.2,
                f"steps {reg['long_step_s']:g} s apart; {_wru(long, pt)}"),
        at_most("step.rru_long", long["billed_rru"], 0.1,
                f"steps {reg['long_step_s']:g} s apart; read requests per step: "
                f"{long['reads']:g}" if long["billed_rru"] is not None
                else "engine reports no capacity"),
        at_most("step.wru_big_input", big["billed_wru"], 2,
                f"{reg['big_input_bytes']:,} B input, {reg['big_cursor_bytes']} B cursor, "
                f"back-to-back on a warm container; {big['reads']:g} reads, "
                f"{big['billed_rru']:g} RRU per step" if big["billed_wru"] is not None
                else "engine reports no capacity"),
        _request_bytes(f2),
        *latency_summaries(f2),
    ]


def latency_summaries(f2: dict[str, Any]) -> list[Summary]:
    """Figure 2's lines: the step's latency against Powertools and the two floors."""
    return [
        at_most("step.latency_ratio_vs_powertools", f2["ratio_median"],
                LATENCY_VS_POWERTOOLS,
                f"median {f2['jobstate']['median_ms']:.2f} ms vs "
                f"{f2['powertools']['median_ms']:.2f} ms; p99 ratio {f2['ratio_p99']:.2f}",
                fmt="{:.2f}"),
        info("step.latency_ratio_vs_floor", f2["ratio_floor_median"],
             f"median {f2['jobstate']['median_ms']:.2f} ms vs {f2['floor']['median_ms']:.2f} "
             f"ms for a conditional put + a conditional update of a "
             f"{f2['item_bytes']:,} B item (plain boto3); p99 ratio "
             f"{f2['ratio_floor_p99']:.2f}", fmt="{:.2f}"),
        info("step.latency_ratio_vs_indexed_floor", f2["ratio_indexed_floor_median"],
             f"the same floor on a table with jobstate's two GSIs (no key moved): "
             f"{f2['floor_indexed']['median_ms']:.2f} ms, {f2['index_overhead']:.2f}x the "
             "floor without them: the engine's charge for the indexes alone",
             fmt="{:.2f}"),
    ]


def cost_summaries(results: dict[str, Any]) -> list[Summary]:
    """Dollars per million steps from the cost model, the sweeper's share separately."""
    f5, model = results["cost"], results["cost_model"]
    opts = f5["steps"]
    durable = next(r for r in opts if r["option"].startswith("Lambda durable"))
    sfn = next(r for r in opts if r["option"].startswith("Step Functions"))
    pt = next(r for r in opts if r["option"].startswith("Powertools"))
    out = []
    for name, key, limit in (("back-to-back", "cost.usd_per_million_steps", 1.5),
                             ("long", "cost.usd_per_million_long_steps", 1.6)):
        m = model[name]
        t = m["total"]
        out.append(at_most(
            key, m["usd_per_million"], limit,
            f"{m['detail']}; per step {t['wru']:.3g} WRU + {t['rru']:.3g} RRU + "
            f"{t['lambda_requests']:.4g} Lambda requests, sweeper included; {m['basis']}; "
            f"Powertools ${pt['usd_per_million']:.2f}, durable functions "
            f"${durable['usd_per_million']:.2f}, Step Functions "
            f"${sfn['usd_per_million']:.2f}", fmt="{:.2f}"))
    for name, key in (("back-to-back, default history",
                       "cost.usd_per_million_steps_default_history"),
                      ("long, default history", "cost.usd_per_million_long_steps_default_history")):
        if name not in model:  # a result document from before the history modes
            continue
        m = model[name]
        t = m["total"]
        out.append(info(
            key, m["usd_per_million"],
            f"{m['detail']}: every step kept (one history item per 16 steps); per step "
            f"{t['wru']:.3g} WRU + {t['rru']:.3g} RRU + {t['lambda_requests']:.4g} Lambda "
            "requests, sweeper included", fmt="{:.3f}"))
    for name, key in (("back-to-back", "cost.sweeper_usd_per_million_steps"),
                      ("long", "cost.sweeper_usd_per_million_long_steps")):
        m = model[name]
        sw, tot = m["sweeper"], m["totals"]
        out.append(info(
            key, m["usd_per_million_sweeper"],
            f"the sweeper's share of the {name} figure: {sw['wru']:.3g} WRU + "
            f"{sw['rru']:.3g} RRU + {sw['lambda_requests']:.3g} invocations per step "
            f"({tot['sweeps']} sweeps, {tot['scanned']} jobs looked at, "
            f"{tot['redispatched']} re-sent)", fmt="{:.4f}"))
    return out


def summaries(results: dict[str, Any]) -> list[Summary]:
    """The headline lines, from a result document (pure: tested without an engine)."""
    f1, f3, f4 = results["requests"], results["utilisation"], results["scale"]
    js = f1["jobstate"]
    batch = js["batched_effect"]
    join = js["join"]
    out = [
        *step_summaries(results),
        at_most("effect.writes", js["effect"]["writes"], 2, "put STARTED + update DONE"),
        *history_summaries(js),
        at_most("batched_effect.round_trips", batch["requests"], 0.2,
                f"per effect, batches of {f1['batch']}", fmt="{:.3f}"),
        info("batched_effect.wru", batch["billed_wru"],
             "per effect: transactions bill 2 units per item (ctx.once: "
             f"{js['effect']['billed_wru']:g})" if batch["billed_wru"] is not None
             else "engine reports no capacity"),
        at_least("invocation.utilisation", f3["headline"]["utilisation"], 0.95,
                 f"{f3['headline']['timeout_s']:g} s timeout, batches lognormal "
                 f"{f3['headline']['batch_mean_s']:g}+-{f3['headline']['batch_sd_s']:g} s; "
                 f"fixed 12 s margin: {f3['fixed']['utilisation']:.1%}; the best margin "
                 f"with no timeout, chosen in hindsight: "
                 f"{f3['hindsight']['utilisation']:.1%}", fmt="{:.1%}"),
        equal("invocation.timeouts", f3["headline"]["timeouts"], 0,
              f"of {f3['headline']['invocations']} invocations; fixed margin: "
              f"{f3['fixed']['timeouts']}"),
        at_most("fanout.writes_per_join", join["items_written"], 2,
                f"items (CHILD link + parent count) inside the child's final transaction: "
                f"+{join['writes']:g} requests, +{join['reads']:g} read"),
        _decide_writes(js["policy"]),
    ]
    answer = js.get("callback_answer")
    if answer is not None:  # issue 18 (runs before it have no such unit)
        out.append(at_most("callback.requests", answer["requests"], 3,
                           f"DynamoDB requests per App.complete_callback: {answer['writes']:g} "
                           f"writes (the answer, the job's wake, its history note), "
                           f"{answer['reads']:g} reads, + {answer['invokes']:g} "
                           "Lambda invoke; a waiting job costs none"))
    loc = results.get("utilisation_local") or {}
    if loc.get("rows"):
        a, b = loc["rows"][0], loc["rows"][1]
        out.append(info("invocation.utilisation_local_runtime", a["utilisation"],
                        f"{a['invocations']} real invocations, {a['timeouts']} killed; fixed "
                        f"margin {b['utilisation']:.1%}, {b['timeouts']} killed", fmt="{:.1%}"))
    big = max((r for r in f4["fanout"] if not r["duplicates"]), key=lambda r: r["chains"])
    items = max(f4["items"], key=lambda r: r["total"])
    dup = [r for r in f4["fanout"] if r["duplicates"]]
    out += [
        info("fanout.requests_per_chain", big["requests"] / big["chains"],
             f"{big['chains']} chains of 2 steps, {big['wall_s']:.1f} s wall"),
        equal("fanout.condition_failures", big["condition_failures"], 0,
              "no chaos" + (f"; with 10% duplicate deliveries: "
                            f"{dup[0]['condition_failures']} (one per duplicate)" if dup
                            else "")),
        Summary("scale.linear", "yes" if f4["fanout_linear"]["linear"]
                and f4["items_linear"]["linear"] else "no", "yes",
                bool(f4["fanout_linear"]["linear"] and f4["items_linear"]["linear"]),
                f"R^2 fan-out {f4['fanout_linear']['r2']:.4f}, items "
                f"{f4['items_linear']['r2']:.4f}"),
        equal("items.timeouts", items["timeouts"], 0,
              f"{items['total']:,} items in {items['steps']} steps"),
    ]
    f4c = results.get("scale_local") or {}
    if f4c.get("rows"):
        r = max(f4c["rows"], key=lambda r: r["chains"])
        it = f4c["items"]
        out.append(equal("scale.local_runtime_timeouts", r["kills_at_timeout"]
                         + it["kills_at_timeout"], 0,
                         f"{r['chains']} chains on worker processes: {r['invocations']} "
                         f"invocations in {r['wall_s']:.1f} s; {it['total']:,} items in "
                         f"{it['invocations']} invocations of 2 s"))
    out += cost_summaries(results)
    return out


def print_tables(results: dict[str, Any], *, markdown: bool) -> None:
    def show(title: str, headers: list[str], rows: list[list[Any]]) -> None:
        print(f"\n== {title}")
        print(table(headers, rows, markdown=markdown))

    f1 = results["requests"]
    show(f"1. requests and capacity per unit of work ({results['meta']['engine']['name']}; "
         f"WCU/RCU engine = reported by the engine, WRU/RRU billed = AWS rules)",
         requests.HEADERS, requests.table_rows(f1))
    show("2. latency per step: jobstate (claim+commit+dispatch) vs Powertools "
         "(put+update) vs the floor (cond. put + cond. update), interleaved",
         latency.HEADERS, latency.table_rows(results["latency"]))
    f3 = results["utilisation"]
    show(f"3. time utilisation ({f3['mode']}; reserve {f3['reserve_ms']} ms)",
         utilisation.HEADERS, utilisation.table_rows(f3))
    loc = results.get("utilisation_local") or {}
    if loc.get("rows"):
        show(f"3b. cross-check ({loc['mode']})", ["policy", "invocations", "utilisation",
                                                  "timeouts", "left at stop s (unscaled)"],
             [[r["policy"], r["invocations"], f"{100 * r['utilisation']:.1f}%",
               r["timeouts"], r["mean_left_s"]] for r in loc["rows"]])
    elif loc:
        print(f"\n== 3b. local-runtime cross-check skipped: {loc.get('skipped')}")
    f4 = results["scale"]
    show(f"4a. fan-out of N chains ({f4['mode']})", scale.FANOUT_HEADERS,
         scale.fanout_rows(f4))
    show("4b. one job over N items", scale.ITEMS_HEADERS, scale.items_rows(f4))
    f4c = results.get("scale_local") or {}
    if f4c.get("rows"):
        show(f"4c. fan-out on the local runtime ({f4c['mode']})", scale.LOCAL_HEADERS,
             scale.local_rows(f4c))
    show("5a. cost model: J jobs stepping on warm containers, the sweeper every S seconds, "
         "every request metered (units per step; see benchmarks/costmodel.py)",
         costmodel.HEADERS, costmodel.table_rows(results["cost_model"]))
    f5 = results["cost"]
    show(f"5. cost per million steps ({f5['basis']})", cost.HEADERS, cost.table_rows(f5))
    show("5b. cost per million effects", [*cost.HEADERS[:-1], "$ / M effects"],
         cost.table_rows(f5, "effects"))


ONLY = ("requests", "latency")  # figures that stand alone (the others feed the cost model)


def only(args: argparse.Namespace, argv: list[str] | None) -> int:
    """`--only`: the chosen figures, each with its own table and summary lines."""
    logging.getLogger("jobstate").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="aws_lambda_powertools")
    engine = start_engine(args.engine)
    results: dict[str, Any] = {"meta": {"command": "python -m benchmarks " + " ".join(
        sys.argv[1:] if argv is None else argv), "quick": args.quick,
        "machine": machine.describe(), "engine": {"name": engine.name, "note": engine.note}}}
    print(f"jobstate benchmarks, only {', '.join(args.only)} "
          f"({'quick' if args.quick else 'full'}) on {engine.note}")
    try:
        for name in args.only:
            print(f"-- running {name} (load {os.getloadavg()[0]:.2f}) ...", flush=True)
            results[name] = (requests.run if name == "requests" else latency.run)(
                engine, quick=args.quick)
    finally:
        engine.stop()
    if "requests" in results:
        print("\n== 1. requests and capacity per unit of work")
        print(table(requests.HEADERS, requests.table_rows(results["requests"]),
                    markdown=args.markdown))
    if "latency" in results:
        f2 = results["latency"]
        print("\n== 2. latency per step, interleaved")
        print(table(latency.HEADERS, latency.table_rows(f2), markdown=args.markdown))
        for s in (_request_bytes(f2), *latency_summaries(f2)):
            print(s.line())
    if args.out != DEFAULT_OUT:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"result written to {args.out}")
    return 0


def local_cross_check(endpoint_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Figure 3 on the local runtime; never fails the run (it reports why it was skipped)."""
    try:
        return utilisation.run_local(endpoint_url, invocations=3 if args.quick else 12,
                                     seed=args.seed)
    except Exception as exc:
        return {"skipped": f"{type(exc).__name__}: {str(exc)[:300]}", "rows": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="fewer iterations and smaller N (CI; < 2 minutes)")
    parser.add_argument("--engine", choices=ENGINES, default="dynamodb-local",
                        help="DynamoDB engine for every figure (default dynamodb-local, "
                             "falling back to moto-server when it is not installed)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"JSON result file (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--markdown", action="store_true", help="print tables as markdown")
    parser.add_argument("--only", nargs="+", choices=ONLY, metavar="FIG",
                        help=f"run only these figures ({', '.join(ONLY)}): their tables and "
                             "lines, no summary of the rest, written to --out only if given "
                             "(e.g. `--only latency`: figure 2 in about a minute)")
    args = parser.parse_args(argv)
    if args.only:
        return only(args, argv)

    logging.getLogger("jobstate").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="aws_lambda_powertools")
    began = time.monotonic()
    meta: dict[str, Any] = {"command": "python -m benchmarks " + " ".join(
        sys.argv[1:] if argv is None else argv), "quick": args.quick, "seed": args.seed,
        "machine": machine.describe()}
    engine = start_engine(args.engine)
    meta["engine"] = {"name": engine.name, "note": engine.note,
                      "capacity_reported": engine.capacity}
    print(f"jobstate benchmarks ({'quick' if args.quick else 'full'}) on {engine.note}")
    m = meta["machine"]
    print(f"machine: {m['nproc']} CPU ({m['cpu']}), {m['memory_gib']} GiB, "
          f"Python {m['python']}; load {m['load_average_at_start']}; {m['date_utc']}")
    results: dict[str, Any] = {"meta": meta}
    timings: dict[str, float] = {}
    try:
        for name, fn in (
            ("requests", lambda: requests.run(engine, quick=args.quick)),
            ("latency", lambda: latency.run(engine, quick=args.quick)),
            ("utilisation", lambda: utilisation.run(quick=args.quick, seed=args.seed)),
            ("utilisation_local", lambda: local_cross_check(engine.endpoint_url, args)),
            ("scale", lambda: scale.run(engine, quick=args.quick, seed=args.seed)),
            ("scale_local", lambda: scale.run_local(engine.endpoint_url)),
            ("cost_model", lambda: costmodel.run(engine, quick=args.quick)),
        ):
            t0 = time.monotonic()
            # The 1-minute load before each figure (this run's own engine and client
            # count too): latency ratios are only worth reading from a quiet machine.
            load = round(os.getloadavg()[0], 2)
            meta.setdefault("load_before", {})[name] = load
            print(f"-- running {name} (load {load}) ...", flush=True)
            results[name] = fn()
            timings[name] = time.monotonic() - t0
    finally:
        engine.stop()
    results["cost"] = cost.run(results["requests"], results["cost_model"],
                               capacity=engine.capacity)
    meta["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    meta["duration_s"] = round(time.monotonic() - began, 1)

    print_tables(results, markdown=args.markdown)
    lines = summaries(results)
    results["summary"] = [s.to_dict() for s in lines]
    missed = [s.name for s in lines if s.ok is False]
    print(f"\n== summary ({engine.name}; {meta['duration_s']} s; times are not asserted)")
    for s in lines:
        print(s.line())
    print(f"targets missed: {len(missed)}" + (f" ({', '.join(missed)})" if missed else ""))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"result written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
