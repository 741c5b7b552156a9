"""jobstate benchmarks: cost and speed per step, side by side with the alternatives.

    python -m benchmarks [--quick] [--engine dynamodb-local|moto-server] [--out FILE]

Five figures, all against the same DynamoDB engine in one run (DynamoDB Local by
default; moto server as a labelled fallback):

1. `requests`    — DynamoDB requests and capacity per step (back-to-back, 60 s apart,
                   4 KB input) / effect / batched effect / child join: jobstate vs
                   Powertools idempotency vs naive recursion;
2. `latency`     — per-step bookkeeping latency and bytes, jobstate vs Powertools vs a
                   two-write floor (plain boto3), interleaved;
3. `utilisation` — share of the timeout spent on useful batches, adaptive `has_time()`
                   vs a fixed margin (deterministic simulation);
4. `scale`       — a fan-out of N chains and a job of N items, at several N;
5. `cost`        — dollars per million steps: a cost model (J jobs stepping for a
                   simulated hour with the sweeper every minute, every request metered,
                   `costmodel.py`) and the per-step units of figure 1.

Every figure prints a table; the run ends with summary lines `name: value (target ...)`
followed by `ok` or `MISS`, and writes a JSON result. Targets are reported, never
enforced: the exit code is 0 whether they are met or not. See docs/performance.md.
"""
