"""handlers.sweeper: re-dispatch by type, drain pages while time is left, never self-invoke."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aws_sinks import LambdaSink
from iam_coverage import covers

import jobstate
from handlers import sweeper
from jobstate.testing import FakeLambdaContext

# The template must allow every AWS call this handler makes (tests/iam_coverage.py).
iam = covers("SweeperFunction")

ROUTES = {"file-processor": "stack-file-processor", "etl-poller": "stack-etl-poller",
          "batch-mailer": "stack-batch-mailer", "batch-mailer-chain": "stack-batch-mailer"}


@pytest.fixture
def app(jobstate_store: jobstate.JobStore,
        jobstate_continuation: jobstate.InMemoryContinuation) -> jobstate.App:
    app = jobstate.App(jobstate_store, jobstate_continuation)
    for name in ("file-processor", "etl-poller", "batch-mailer-chain", "mystery"):
        app.job(name)(lambda ctx: ctx.complete())
    return app


def lose_starts(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                n: int, job_type: str = "etl-poller") -> list[str]:
    ids = [app.start(job_type, {"i": i}, job_id=f"{job_type}-{i}") for i in range(n)]
    cont.pop_all()  # every step-0 continuation is lost
    return ids


def stale_starts(app: jobstate.App, cont: jobstate.InMemoryContinuation,
                 clock: jobstate.ManualClock, n: int) -> list[str]:
    """`n` jobs whose first continuation was lost, past the dispatch timeout: stale."""
    ids = lose_starts(app, cont, n)
    clock.advance(app.store.dispatch_timeout_ms / 1000 + 1)
    return ids


def test_lost_continuations_are_redispatched_with_in_memory_continuation(
    app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    ids = lose_starts(app, jobstate_continuation, 3)
    assert sweeper.run(app.store, jobstate_continuation)["dispatched"] == 0  # not due yet
    jobstate_clock.advance(app.store.dispatch_timeout_ms / 1000 + 1)
    counts = sweeper.run(app.store, jobstate_continuation)
    assert counts["dispatched"] == 3 and counts["not_started"] == 3 and counts["complete"]
    events = jobstate_continuation.pop_all()
    assert sorted(e["jobstate"]["job_id"] for e in events) == ids
    # A second run right away finds nothing: due_at moved forward when dispatched.
    assert sweeper.run(app.store, jobstate_continuation)["dispatched"] == 0
    for e in events:
        app.handler(e, FakeLambdaContext(jobstate_clock))
    assert all(app.store.get(i).status is jobstate.JobStatus.SUCCEEDED for i in ids)


def test_routes_by_job_type_and_never_to_itself(
    app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    lose_starts(app, jobstate_continuation, 1, "etl-poller")
    lose_starts(app, jobstate_continuation, 1, "file-processor")
    lose_starts(app, jobstate_continuation, 1, "batch-mailer-chain")
    lose_starts(app, jobstate_continuation, 1, "mystery")
    jobstate_clock.advance(app.store.dispatch_timeout_ms / 1000 + 1)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "stack-sweeper")
    stub = LambdaSink()  # a botocore client: the IAM coverage check sees each invoke
    cont = sweeper.RoutedContinuation(ROUTES, client=stub.client)  # no default function
    counts = sweeper.run(app.store, cont, FakeLambdaContext(jobstate_clock))
    targets = sorted((name, e["jobstate"]["job_type"]) for name, e in stub.invokes)
    assert targets == [("stack-batch-mailer", "batch-mailer-chain"),
                       ("stack-etl-poller", "etl-poller"),
                       ("stack-file-processor", "file-processor")]
    assert counts["dispatched"] == 3 and counts["dispatch_errors"] == 1  # "mystery" stays due
    assert "no function for job type 'mystery'" in counts["first_dispatch_error"]
    # With a default, the unmapped type goes there (never to the sweeper itself).
    jobstate_clock.advance(app.store.dispatch_timeout_ms / 1000 + 1)
    cont = sweeper.RoutedContinuation(ROUTES, "stack-file-processor", client=stub.client)
    stub.clear()
    sweeper.run(app.store, cont)
    assert ("stack-file-processor", "mystery") in [
        (n, e["jobstate"]["job_type"]) for n, e in stub.invokes]
    assert all(n != "stack-sweeper" for n, _ in stub.invokes)


def test_drains_pages_while_time_is_left(
    app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    stale_starts(app, jobstate_continuation, jobstate_clock, 7)
    counts = sweeper.run(app.store, jobstate_continuation, FakeLambdaContext(jobstate_clock),
                         limit=2)
    assert counts["dispatched"] == 7 and counts["pages"] >= 4 and counts["complete"]


def test_stops_early_and_leaves_the_rest_to_the_next_run(
    app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    stale_starts(app, jobstate_continuation, jobstate_clock, 7)
    short = FakeLambdaContext(jobstate_clock, timeout_ms=5_000)  # < the 10 s reserve
    first = sweeper.run(app.store, jobstate_continuation, short, limit=2)
    assert first["pages"] == 1 and not first["complete"] and first["dispatched"] == 2
    second = sweeper.run(app.store, jobstate_continuation, short, limit=5)
    assert second["dispatched"] == 5  # the next run starts where the first stopped
    assert len(jobstate_continuation.pop_all()) == 7


def test_a_run_that_finishes_lets_the_next_start_at_the_beginning(
    app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock,
) -> None:
    stale_starts(app, jobstate_continuation, jobstate_clock, 4)
    short = FakeLambdaContext(jobstate_clock, timeout_ms=5_000)
    assert sweeper.run(app.store, jobstate_continuation, short, limit=3)["dispatched"] == 3
    rest = sweeper.run(app.store, jobstate_continuation, short, limit=3)
    assert rest["dispatched"] == 1 and rest["complete"]
    sent = [next(iter(e.values()))["job_id"] for e in jobstate_continuation.pop_all()]
    # Nobody claimed them: after the backoff they are sent again, from the first.
    jobstate_clock.advance(2 * app.store.dispatch_timeout_ms / 1000 + 1)
    again = sweeper.run(app.store, jobstate_continuation, short, limit=3)
    assert again["dispatched"] == 3 and not again["complete"]
    resent = [next(iter(e.values()))["job_id"] for e in jobstate_continuation.pop_all()]
    assert resent == sent[:3]


def test_handler_reads_env_and_returns_counts(
    app: jobstate.App, jobstate_continuation: jobstate.InMemoryContinuation,
    jobstate_clock: jobstate.ManualClock, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stale_starts(app, jobstate_continuation, jobstate_clock, 2)
    stub = LambdaSink()
    monkeypatch.setenv("JOBSTATE_FUNCTIONS", json.dumps(ROUTES))
    monkeypatch.setenv("JOBSTATE_EMF", "1")
    monkeypatch.setattr(sweeper, "_store", lambda: app.store)
    monkeypatch.setattr(sweeper, "_continuation",
                        lambda: sweeper.RoutedContinuation.from_env(client=stub.client))
    counts = sweeper.handler({"source": "aws.events"}, FakeLambdaContext(jobstate_clock))
    assert counts["dispatched"] == 2
    assert {n for n, _ in stub.invokes} == {"stack-etl-poller"}
    emf = [json.loads(ln) for ln in capsys.readouterr().out.splitlines() if '"_aws"' in ln]
    assert len(emf) == 1 and emf[0]["SweepDispatched"] == 2 and emf[0]["JobsFailed"] == 0
    assert emf[0]["SweepDispatchErrors"] == 0
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]


def test_bad_routes_env_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTATE_FUNCTIONS", "not json")
    with pytest.raises(jobstate.InvalidInput, match="JOBSTATE_FUNCTIONS"):
        sweeper.RoutedContinuation.from_env()
    monkeypatch.setenv("JOBSTATE_FUNCTIONS", '{"a": 1}')
    with pytest.raises(jobstate.InvalidInput, match="function names"):
        sweeper.RoutedContinuation.from_env()


def test_template_routes_every_handler_job_type() -> None:
    """Every job type the handlers register is routed by the template's sweeper."""
    from handlers import batch_mailer, etl_poller, s3_file_processor

    text = (Path(__file__).resolve().parents[1] / "template.yaml").read_text()
    block = text[text.index("JOBSTATE_FUNCTIONS: !Sub >-"):].split("Events:")[0]
    routes = json.loads(" ".join(block.split("\n")[1:]).replace("${AWS::StackName}", "s"))
    types = {t for a in (batch_mailer.app, etl_poller.app, s3_file_processor.app)
             for t in a.specs}
    assert set(routes) == types
    assert routes["batch-mailer-chain"] == routes["batch-mailer"]


