"""The scenarios of `jobstate demo` as jobstate job types.

Each is written the way a user would write it for Lambda; the comments point at the
pattern it shows. Every side effect goes through `ctx.once`/`ctx.once_batch` with a
`reconcile` that asks the outside world whether it already happened, so a container
killed in the middle of an effect never repeats it and never parks the job.
"""

from __future__ import annotations

import time
from typing import Any

from ..app import App
from ..context import StepContext
from .sink import FakeEtl, Outbox


def register(app: App) -> None:
    app.job("demo-file", max_steps=500)(process_file)
    app.job("demo-etl", max_steps=500)(run_etl)
    app.job("demo-mail", max_steps=50)(mail_users)
    app.job("demo-mail-chain", max_steps=500)(mail_chain)
    app.job("demo-approval", max_steps=50)(approve)


# (a) a large file in batches, across many short invocations, with a cursor -------------

def process_file(ctx: StepContext) -> Any:
    path, total, size = ctx.input["path"], ctx.input["lines"], ctx.input["batch"]
    outbox = Outbox(ctx.input["sink"])
    cur = ctx.cursor
    cur.setdefault("offset", 0)
    cur.setdefault("line", 0)
    cur.setdefault("sum", 0)
    with open(path, "rb") as f:
        f.seek(cur["offset"])
        while cur["line"] < total and ctx.has_time():  # one batch per has_time() call
            batch_no = cur["line"] // size
            rows = [f.readline() for _ in range(min(size, total - cur["line"]))]
            batch_sum = sum(int(r.split(b",")[1]) for r in rows)
            time.sleep(ctx.input.get("work_s", 0.0))  # the batch's "real" work
            ctx.once(f"batch-{batch_no:05d}", outbox.send, "file-batch", f"{batch_no}",
                     {"lines": len(rows), "sum": batch_sum}, reconcile=outbox.find)
            cur.update(offset=f.tell(), line=cur["line"] + len(rows),
                       sum=cur["sum"] + batch_sum)
            ctx.progress(cur["line"], total, "lines")
            if batch_no % 5 == 4:
                ctx.checkpoint()  # a kill now resumes from here, not from the step's start
    if cur["line"] < total:
        return None  # commit the cursor; the next invocation continues
    ctx.once("summary", outbox.send, "file-summary", ctx.job_id,
             {"lines": cur["line"], "sum": cur["sum"]}, reconcile=outbox.find)
    return ctx.complete({"lines": cur["line"], "sum": cur["sum"]})


# (b) an external ETL: started once, its id kept in tokens, polled, notified once --------

def run_etl(ctx: StepContext) -> Any:
    etl, outbox = FakeEtl(ctx.input["sink"]), Outbox(ctx.input["sink"])
    if "run_id" not in ctx.tokens:
        ctx.tokens["run_id"] = ctx.once("start-etl", etl.start, ctx.job_id,
                                        ctx.input["seconds"], ctx.input["rows"],
                                        reconcile=etl.find)
        ctx.checkpoint()  # the token survives this invocation, whatever happens next

    def check() -> dict[str, Any]:
        status = etl.status(ctx.tokens["run_id"])
        ctx.progress(status["percent"], 100, "%")
        return status

    # Short waits are served in this invocation; longer ones end the step WAITING and
    # the sweeper resumes the job when the wait is over.
    status = ctx.poll(check, until=lambda s: s["state"] == "SUCCEEDED", name="etl",
                      interval_s=0.4, max_interval_s=2.0, timeout_s=300)
    ctx.once("notify", outbox.send, "etl-notify", ctx.job_id, {"rows": status["rows"]},
             reconcile=outbox.find)
    return ctx.complete({"rows": status["rows"]})


# (c) N users mailed by K worker chains, a join, and a summary ----------------------------

def mail_users(ctx: StepContext) -> Any:
    users, chains = ctx.input["users"], ctx.input["chains"]
    if not ctx.cursor.get("spawned"):
        ctx.cursor["spawned"] = True
        ctx.spawn_chains("demo-mail-chain", total=users, chains=chains,
                         extra={"sink": ctx.input["sink"], "batch": ctx.input["batch"],
                                "latency_s": ctx.input.get("latency_s", 0.0)})
    # Every chain has finished (joined): summarise once.
    kids = ctx.children()
    sent = sum(int((c.result or {}).get("sent", 0)) for c in kids)
    outbox = Outbox(ctx.input["sink"])
    ctx.once("summary", outbox.send, "mail-summary", ctx.job_id,
             {"sent": sent, "chains": len(kids)}, reconcile=outbox.find)
    return ctx.complete({"sent": sent, "chains": len(kids)})


def mail_chain(ctx: StepContext) -> Any:
    start, end, size = ctx.input["start"], ctx.input["end"], ctx.input["batch"]
    outbox = Outbox(ctx.input["sink"])
    latency = float(ctx.input.get("latency_s", 0.0))

    def send(user: int) -> dict[str, Any]:
        time.sleep(latency)
        return outbox.send("mail", f"user-{user}", {"to": f"user{user}@example.com"})

    def sent_already(user: int) -> Any:
        return outbox.find("mail", f"user-{user}")

    nxt = ctx.cursor.get("next", start)
    while nxt < end and ctx.has_time():
        batch = range(nxt, min(nxt + size, end))
        ctx.once_batch({f"mail-{u}": (u,) for u in batch}, send, reconcile=sent_already)
        nxt = batch.stop
        ctx.cursor["next"] = nxt
        ctx.progress(nxt - start, end - start, "mails")
    if nxt < end:
        return None
    return ctx.complete({"sent": end - start})


# (d) a human approval: the job waits on a callback, no invocation while it waits --------

def approve(ctx: StepContext) -> Any:
    outbox = Outbox(ctx.input["sink"])

    def ask(token: str) -> dict[str, Any]:  # the approver gets the token (a credential)
        return outbox.send("approval-request", ctx.job_id, {"token": token})

    def asked(token: str) -> Any:
        return outbox.find("approval-request", ctx.job_id)

    # The step ends WAITING here until the approver answers (or the timeout): the
    # sweeper runs it again then, and this call returns the answer at once.
    decision = ctx.wait_for_callback("approval", ask, timeout_s=ctx.input["timeout_s"],
                                     reconcile=asked)
    ctx.once("announce", outbox.send, "approval-done", ctx.job_id, decision,
             reconcile=outbox.find)
    return ctx.complete(decision)
