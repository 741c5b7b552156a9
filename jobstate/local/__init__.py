"""jobstate.local: run a jobstate app on this machine the way AWS Lambda would.

    from jobstate.local import LocalRuntime, Chaos

    with LocalRuntime("myjobs:app", timeout_ms=3_000, recursive_loop="Allow",
                      chaos=Chaos.default(seed=7)) as rt:
        view = rt.run("count-lines", {"path": "big.txt"}, timeout_s=60)
        print(view.status, rt.stats_dict()["total"])

What it emulates:

- each invocation runs in a worker **subprocess** (`python -m jobstate.local`)
  that imported `module:app` once and is reused like a warm container (module state and
  its own TMPDIR survive); the context has `function_name`, `aws_request_id` and
  `get_remaining_time_in_millis()` tied to a real deadline, at which the runtime
  **SIGKILLs** the worker (a lost container) and replaces it on the next delivery;
- an async event queue with at-least-once delivery, Lambda's retries after a function
  error, crash or timeout (`max_retry_attempts` 0..2, ~1 then ~2 minutes, times
  `time_scale`), `max_event_age_s`, and a concurrency limit (`concurrency` workers);
- recursive loop detection: every event carries its chain's hop count under a `_local`
  key (the X-Ray trace header of a real chain; stripped before the handler sees the
  event); with `recursive_loop="Terminate"` (Lambda's default) the 17th invocation of a
  chain is dropped with a message explaining `RecursiveLoop: Allow`;
- seeded chaos (`Chaos`): duplicate deliveries, a SIGKILL at a random named crash point
  of the step (`jobstate.faults.POINTS`), lost continuations, throttled invokes, and
  DynamoDB throttling (a botocore `before-send` handler on the store's client; boto's
  retry recovers);
- the sweeper on a timer (`sweep_interval_s`), dispatching into the same queue;
- DynamoDB at `endpoint_url` (e.g. DynamoDB Local) or, by default, an embedded moto
  server started in this process (memory only; dummy credentials). `DynamoDBLocal` and
  `MotoServer` (`jobstate.local.engines`) start either engine for tests of your own.

The app module must build its App without connecting at import, e.g.
`app = jobstate.App(store=jobstate.JobStore())`: the worker sets JOBSTATE_ENDPOINT_URL
(and JOBSTATE_TABLE when `table=` is given) before the import, then replaces
`app.continuation` with one that sends events back to the runtime's queue (a
`LambdaContinuation` whose Lambda client is the worker's socket), adds a hook on
`app.hooks` to count outcomes, and installs `jobstate.faults` for crash chaos.
Worker logs (the "CloudWatch" of a run) are under `runtime.work_dir`.
"""

from __future__ import annotations

from .chaos import Chaos
from .engines import DynamoDBLocal, MotoServer
from .process import LocalRuntimeError
from .runtime import RECURSION_LIMIT, LocalRuntime
from .stats import RuntimeStats, Stats
from .worker import LocalContext, load_app

__all__ = ["RECURSION_LIMIT", "Chaos", "DynamoDBLocal", "LocalContext", "LocalRuntime",
           "LocalRuntimeError", "MotoServer", "RuntimeStats", "Stats", "load_app"]
