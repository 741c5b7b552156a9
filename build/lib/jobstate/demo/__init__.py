"""`jobstate demo`: the seeds' three scenarios on the local runtime, with chaos on.

(a) a 20,000-line file processed in batches across many 2-second invocations with a
cursor; (b) an external ETL started once, its run id kept in `ctx.tokens`, polled across
invocations, notified once; (c) 2,000 users mailed by 8 worker chains with a join and a
summary. Every side effect lands in an independent sqlite "outside world" that the demo
reads back to compare effects executed with effects expected.

The job code is in `jobstate.demo.scenarios`; the app the runtime imports is
`jobstate.demo.app:app`.
"""

from __future__ import annotations

from .runner import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
