"""A full jobstate step with only the core installed, on AWS's DynamoDB Local.

Run by scripts/check-core inside a venv holding nothing but `pip install .`: imports
jobstate, checks no extra came with it, creates the table, starts a job and delivers its
continuations (claim, a ctx.once effect, commit, next step) until it succeeds, then
re-delivers a finished step (a duplicate: nothing runs twice). No AWS settings needed
beyond dummy keys: a local endpoint takes any region.
"""

from __future__ import annotations

import importlib.util
import os
import sys

extras = [m for m in ("click", "rich", "moto", "pytest", "flask") if importlib.util.find_spec(m)]
if extras:
    sys.exit(f"the core install brought {extras}: they belong in extras")

import jobstate  # noqa: E402
from jobstate.local.engines import DynamoDBLocal  # noqa: E402 - core: boto3 only

for key in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
    os.environ.pop(key, None)  # prove the local endpoint needs no region
os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")

with DynamoDBLocal() as ddb:
    store = jobstate.JobStore("core-check", endpoint_url=ddb.endpoint_url)
    store.create_table()
    cont = jobstate.InMemoryContinuation()  # Lambda's async invoke, delivered by hand below
    app = jobstate.App(store, cont)
    sent: list[int] = []

    @app.job("count", max_steps=10)
    def count(ctx: jobstate.StepContext) -> jobstate.Completed | None:
        n = ctx.cursor.get("n", 0)
        ctx.once(f"send-{n}", sent.append, n)  # the side effect, recorded, never redone
        ctx.cursor["n"] = n + 1  # committed before the next step is sent
        return ctx.complete({"n": n + 1}) if n + 1 == 3 else None

    job_id = app.start("count", {}, job_id="core-1")
    delivered = []
    while events := cont.pop_all():
        for event in events:
            delivered.append(event)
            report = app.handler(event)
    duplicate = app.handler(delivered[0])  # Lambda delivers an event twice: a no-op
    job = store.get(job_id)
    assert job.status is jobstate.JobStatus.SUCCEEDED, job
    assert job.result == {"n": 3} and sent == [0, 1, 2], (job.result, sent)
    assert duplicate["outcome"] != "committed", duplicate
    print(f"core-only step ok: jobstate {jobstate.__version__} on DynamoDB Local "
          f"{ddb.version} ({store.region}, no AWS settings): {len(delivered)} steps "
          f"delivered, effects {sent}, duplicate -> {duplicate['outcome']}")
