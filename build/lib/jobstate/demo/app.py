"""The demo's jobstate app: `jobstate.demo.app:app` (what the local runtime imports).

Built without connecting: the local runtime sets JOBSTATE_ENDPOINT_URL/JOBSTATE_TABLE
before the import and swaps in its continuation. The short dispatch timeout and lease
grace suit a 2-second function timeout: lost events are re-sent within seconds.
"""

from __future__ import annotations

from ..app import App
from ..store import JobStore
from . import scenarios

app = App(store=JobStore(dispatch_timeout_s=2.0), lease_grace_s=0.5, reserve_ms=400)
scenarios.register(app)
handler = app.handler
