"""JobStore: table creation, configuration, listing through the sharded GSI, expiry."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import drain

import jobstate
from jobstate import JobStatus

pytestmark = pytest.mark.integration


def test_create_table_is_idempotent(store):
    assert store.create_table() is False
    desc = store.call("describe_table")["Table"]
    assert {g["IndexName"] for g in desc["GlobalSecondaryIndexes"]} == {"by-type", "due"}
    assert desc.get("BillingModeSummary", {}).get("BillingMode", "PAY_PER_REQUEST") == (
        "PAY_PER_REQUEST")
    ttl = store.call("describe_time_to_live")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == jobstate.schema.J.EXPIRES


def test_configuration_from_environment(monkeypatch):
    monkeypatch.setenv("JOBSTATE_TABLE", "from-env")
    monkeypatch.setenv("JOBSTATE_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    store = jobstate.JobStore()
    assert (store.table_name, store.endpoint_url, store.region) == (
        "from-env", "http://127.0.0.1:9", "eu-west-1")
    explicit = jobstate.JobStore("t", endpoint_url="http://x:1", region="ap-south-1")
    assert (explicit.table_name, explicit.endpoint_url, explicit.region) == (
        "t", "http://x:1", "ap-south-1")


def test_missing_table_is_a_clear_error(make_store):
    store = make_store()
    missing = jobstate.JobStore("no-such-table", endpoint_url=store.endpoint_url,
                                region="us-east-1")
    with pytest.raises(jobstate.TableNotFound) as err:
        missing.get("j1")
    assert "jobstate create-table" in str(err.value)


@pytest.mark.parametrize("operation", ["create_table", "get"])
def test_missing_credentials_are_a_clear_error_not_a_traceback(monkeypatch, tmp_path,
                                                               operation):
    # Signing fails before anything is sent: no engine is needed, nothing is written.
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = jobstate.JobStore("t", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    call = store.create_table if operation == "create_table" else lambda: store.get("j1")
    with pytest.raises(jobstate.StoreUnavailable) as err:
        call()
    assert "no AWS credentials" in str(err.value) and "AWS_ACCESS_KEY_ID" in str(err.value)


def test_list_paginates_every_job_once_by_type_and_status(app, cont, store, clock):
    @app.job("quick")
    def quick(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.input)

    @app.job("other")
    def other(ctx: jobstate.StepContext) -> Any:
        return None

    done_ids = set()
    for i in range(12):
        clock.advance(1)
        done_ids.add(app.start("quick", {"i": i}))
    drain(app, cont)
    pending_ids = {app.start("other", {"i": i}) for i in range(9)}
    seen: list[str] = []
    token = None
    while True:
        page = store.list("quick", JobStatus.SUCCEEDED, limit=5, next_token=token)
        assert len(page.jobs) <= 5
        seen.extend(j.job_id for j in page.jobs)
        token = page.next_token
        if token is None:
            break
    assert sorted(seen) == sorted(done_ids) and len(seen) == len(set(seen))
    finished = [j.updated_at for j in store.list("quick", JobStatus.SUCCEEDED, limit=50).jobs]
    assert finished == sorted(finished, reverse=True)  # newest first across shards
    assert {j.job_id for j in store.iter_jobs("other", JobStatus.PENDING)} == pending_ids
    assert {j.job_id for j in store.iter_jobs("other")} == pending_ids
    everything = {j.job_id for j in store.iter_jobs()}
    assert everything == done_ids | pending_ids
    assert list(store.iter_jobs("quick", JobStatus.RUNNING)) == []
    with pytest.raises(jobstate.InvalidInput):
        store.list("quick", next_token="not-a-token")
    with pytest.raises(ValueError):
        store.list("quick", "NOT_A_STATUS")


def test_expired_jobs_read_as_absent(app, cont, store, clock):
    @app.job("short")
    def short(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(1)

    jid = app.start("short", None)
    drain(app, cont)
    assert store.get(jid).expires_at is not None
    clock.advance(store.retention_s + 10)  # TTL deletion is late: the item is still there
    with pytest.raises(jobstate.JobNotFound):
        store.get(jid)


def test_history_is_written_for_every_step_when_enabled(app, cont, store):
    @app.job("audited", history=True)
    def audited(ctx: jobstate.StepContext) -> Any:
        return ctx.complete("ok") if ctx.step == 2 else None

    jid = app.start("audited", None)
    drain(app, cont)
    assert [(h.step, h.event) for h in store.history(jid)] == [(0, "committed"),
                                                               (1, "committed"),
                                                               (2, "succeeded")]
    assert store.get(jid).status is JobStatus.SUCCEEDED


def test_a_bad_cancel_reason_is_refused_before_anything_is_written(app, cont, store):
    @app.job("c")
    def c(ctx: jobstate.StepContext) -> Any:
        return None

    app.start("c", None, job_id="cr")
    for bad in (42, "", "   ", "x" * 1001, None):
        with pytest.raises(jobstate.InvalidInput, match="reason"):
            store.cancel("cr", bad)  # type: ignore[arg-type]
    assert store.get("cr").status is JobStatus.PENDING
    assert [j.job_id for j in store.list("c")] == ["cr"]  # still readable, still listed


def test_an_expired_job_id_names_a_new_job_and_its_old_effects_are_gone(app, cont, store,
                                                                        clock):
    sent: list[int] = []

    @app.job("monthly", deadline=None)
    def monthly(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.once("mail", lambda: sent.append(1) or len(sent)))

    app.start("monthly", {"m": 1}, job_id="report")
    drain(app, cont)
    assert store.get("report").result == 1
    clock.advance(store.retention_s + 60)  # expired; TTL has not deleted it yet
    with pytest.raises(jobstate.JobNotFound):
        store.get("report")
    app.start("monthly", {"m": 2}, job_id="report")  # a different input: no conflict
    drain(app, cont)
    job = store.get("report")
    assert (job.status, job.input, job.result) == (JobStatus.SUCCEEDED, {"m": 2}, 2)
    assert sent == [1, 1]  # the old DONE record did not answer for the new job


def test_a_transaction_conflict_is_retried_and_the_join_counts_once(app, cont, store):
    """DynamoDB cancels a transaction that meets another one on the same item (siblings
    joining one parent at once) with reason TransactionConflict; nothing was written and
    botocore does not retry it. The store retries it; it is never read as a condition."""
    from conftest import ClientFault

    def conflict(kw: dict[str, Any]) -> dict[str, Any]:
        n = len(kw["TransactItems"])
        return {"Error": {"Code": "TransactionCanceledException"},
                "CancellationReasons": [{"Code": "None"}] * (n - 1)
                + [{"Code": "TransactionConflict"}]}

    fault = ClientFault(store, "transact_write_items", times=2, error=conflict)

    @app.job("parent")
    def parent(ctx: jobstate.StepContext) -> Any:
        if not ctx.cursor.get("spawned"):
            ctx.cursor["spawned"] = True
            ctx.spawn("kid", [1, 2])
            return None
        return ctx.complete(sorted(c.result for c in ctx.children()))

    @app.job("kid")
    def kid(ctx: jobstate.StepContext) -> Any:
        return ctx.complete(ctx.input * 10)

    app.start("parent", None, job_id="conflicted")
    with fault:
        drain(app, cont)
    assert fault.fired == 2
    job = store.get("conflicted")
    assert job.status is JobStatus.SUCCEEDED and job.result == [10, 20]
