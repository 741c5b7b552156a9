"""jobstate.kms: tokens and effect results encrypted with the AWS Encryption SDK, bound to
their job and table; KMS through moto's KMS mock, a local AES key otherwise (issue 21:
tokens were plaintext at rest unless the user wrote a Cipher).

Integration tier: the store-level tests run on moto and on DynamoDB Local.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import drain

import jobstate
from jobstate import items as items_
from jobstate import kms
from jobstate.schema import J
from jobstate.testing import FakeLambdaContext

pytestmark = pytest.mark.integration

KEY = bytes(range(32))
SECRET = "sk-live-kms-7e1d0b-never-in-the-table"
TICKET = "tkt-9c2f-also-secret"


def scan(store: jobstate.JobStore) -> list[dict[str, Any]]:
    return store.call("scan", ConsistentRead=True)["Items"]


def vault_app(store: jobstate.JobStore, cont: jobstate.InMemoryContinuation,
              steps: int = 2) -> jobstate.App:
    """A job that keeps an API key in its tokens and an effect result, across steps."""
    app = jobstate.App(store, cont)

    @app.job("vault")
    def vault(ctx: jobstate.StepContext) -> Any:
        ticket = ctx.once("issue", lambda: {"ticket": TICKET})["ticket"]
        if ctx.step == 0:
            ctx.tokens["api_key"] = SECRET
        if ctx.step < steps:
            return None
        return ctx.complete({"key_seen": ctx.tokens.get("api_key") == SECRET,
                             "ticket_seen": ticket == TICKET})

    return app


def test_tokens_and_effect_results_are_encrypted_and_round_trip(make_store: Any,
                                                                cont: Any) -> None:
    store = make_store(cipher=kms.local_cipher(KEY))
    app = vault_app(store, cont)
    app.start("vault", job_id="v-1")
    drain(app, cont)
    job = store.get("v-1")
    assert job.status is jobstate.JobStatus.SUCCEEDED, job.error
    assert job.result == {"key_seen": True, "ticket_seen": True}
    items = scan(store)
    stored = json.dumps(items)
    assert SECRET not in stored and TICKET not in stored
    [job] = [items_.job_item(i) for i in items if i["sk"]["S"] == "JOB"]
    [effect] = [items_.effect_item(i) for i in items if i["sk"]["S"] == "FX#issue"]
    assert (job.tokens or "").startswith("enc:" + kms.FORMAT)
    assert (effect.result or "").startswith("enc:" + kms.FORMAT)
    assert store.get("v-1", secrets=True).tokens == {"api_key": SECRET}
    assert jobstate.list_effects(store, "v-1", secrets=True)[0]["result"] == {"ticket": TICKET}


def test_a_ciphertext_moved_to_another_job_or_table_does_not_decrypt(make_store: Any,
                                                                     cont: Any) -> None:
    """Bound to its job: tokens copied onto another job's item (by someone who can write
    the table but has no key) are refused, and the step that claims that job parks it
    instead of running with another job's secrets; copied into another table, too."""
    cipher = kms.local_cipher(KEY)
    store = make_store(cipher=cipher)
    app = vault_app(store, cont, steps=5)
    app.start("vault", job_id="owner")
    app.start("vault", job_id="victim")
    [owner_start, victim_start] = cont.pop_all()
    app.handler(owner_start, None)  # owner's tokens are written (encrypted)
    stolen = items_.job_item(store.get_raw("owner") or {}).tokens or ""
    store.call("update_item", Key={"pk": {"S": "JOB#victim"}, "sk": {"S": "JOB"}},
               UpdateExpression="SET #t = :t", ExpressionAttributeNames={"#t": J.TOKENS},
               ExpressionAttributeValues={":t": {"S": stolen}})
    with pytest.raises(jobstate.TokensUnreadable, match="written for this job and table"):
        store.get("victim", secrets=True)
    report = app.handler(victim_start, None)
    assert report["outcome"] == "finished"
    victim = store.get("victim")
    assert victim.status is jobstate.JobStatus.FAILED
    assert victim.error_type == "TokensUnreadable" and SECRET not in (victim.error or "")

    other = make_store(cipher=cipher)  # another table, the same key
    item = dict(store.get_raw("owner"))  # type: ignore[arg-type]
    other.call("put_item", Item=item)
    with pytest.raises(jobstate.TokensUnreadable):
        other.get("owner", secrets=True)
    assert store.get("owner", secrets=True).tokens == {"api_key": SECRET}  # still its own


def test_another_key_cannot_read_them(make_store: Any, cont: Any) -> None:
    store = make_store(cipher=kms.local_cipher(KEY))
    app = vault_app(store, cont)
    app.start("vault", job_id="v-key")
    drain(app, cont)
    wrong = jobstate.JobStore(store.table_name, store.endpoint_url, "us-east-1",
                              client=store.client, clock=store.clock,
                              cipher=kms.local_cipher(bytes(32)))
    with pytest.raises(jobstate.TokensUnreadable, match="could not decrypt"):
        wrong.get("v-key", secrets=True)
    assert wrong.get("v-key").tokens == {"encrypted": jobstate.codec.REDACTED}


# -- the KMS path, on moto's KMS mock -------------------------------------------------------------


@pytest.fixture
def kms_key(store: jobstate.JobStore) -> Iterator[str]:
    """A KMS key in moto's KMS mock (the table stays on the selected backend)."""
    import boto3
    from moto import mock_aws

    if store.endpoint_url is not None:  # a real HTTP engine: let its requests through
        mock = mock_aws(config={"core": {"passthrough": {"urls": [
            store.endpoint_url.rstrip("/") + ".*"]}}})
    else:
        mock = None  # the moto backend's mock is already active
    if mock is not None:
        mock.start()
    try:
        yield boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["Arn"]
    finally:
        if mock is not None:
            mock.stop()


class KmsRequests:
    """Counts the KMS requests made through botocore while it is installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from botocore.client import BaseClient

        self.ops: list[str] = []
        real = BaseClient._make_api_call

        def counting(client: Any, operation: str, params: dict[str, Any]) -> Any:
            if client.meta.service_model.service_name == "kms":
                self.ops.append(operation)
            return real(client, operation, params)

        monkeypatch.setattr(BaseClient, "_make_api_call", counting)

    def count(self, op: str) -> int:
        return self.ops.count(op)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_kms_requests_per_step_with_and_without_the_data_key_cache(
        make_store: Any, cont: Any, kms_key: str, monkeypatch: pytest.MonkeyPatch,
        cached: bool) -> None:
    """Without the cache every encryption is a GenerateDataKey and every decryption a
    Decrypt (a step claims, so opens its tokens, and commits, so seals them); with it, one
    of each per kind of data in this container, whatever the number of steps."""
    steps = 6
    cipher = kms.kms_cipher(kms_key, cache_max_age_s=300.0 if cached else 0)
    store = make_store(cipher=cipher)
    app = vault_app(store, cont, steps=steps)
    requests = KmsRequests(monkeypatch)
    app.start("vault", job_id="v-kms")
    drain(app, cont)
    job = store.get("v-kms")
    assert job.status is jobstate.JobStatus.SUCCEEDED and job.result == {
        "key_seen": True, "ticket_seen": True}
    if cached:
        assert requests.count("GenerateDataKey") == 2  # tokens, effect results
        assert requests.count("Decrypt") <= 2
    else:
        assert requests.count("GenerateDataKey") >= steps + 1  # each commit, the effect
        assert requests.count("Decrypt") >= steps  # each claim opens the tokens


def test_the_store_builds_the_kms_cipher_from_the_environment(
        make_store: Any, cont: Any, kms_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(kms.KEY_ENV, kms_key)
    store = make_store()
    assert store.cipher is not None and store.cipher.context
    app = vault_app(store, cont)
    app.start("vault", job_id="v-env")
    drain(app, cont)
    assert store.get("v-env").result == {"key_seen": True, "ticket_seen": True}
    assert SECRET not in json.dumps(scan(store))
    monkeypatch.setenv(kms.KEY_ENV, "")
    assert make_store().cipher is None  # empty: the template's default
    monkeypatch.setenv(kms.KEY_ENV, "alias/not-an-arn")
    with pytest.raises(jobstate.InvalidInput, match="KMS key ARN"):
        make_store()


@pytest.mark.parametrize("with_key", [True, False], ids=["KmsKeyArn", "no-KmsKeyArn"])
def test_a_worker_under_the_template_role_may_use_the_key_only_when_granted(
        make_store: Any, cont: Any, clock: Any, kms_key: str, with_key: bool) -> None:
    """The template grants kms:GenerateDataKey and kms:Decrypt (for this table's
    encryption context) only when the stack has a KmsKeyArn; enforced as AWS does."""
    import template_check
    from iam_coverage import KEY_ARN, enforcing

    stack = template_check.resolve_conditions(
        template_check.transform(), {"KmsKeyArn": KEY_ARN if with_key else ""})
    store = make_store(cipher=kms.kms_cipher(kms_key))
    app = vault_app(store, cont)
    app.start("vault", job_id="v-role")
    with enforcing("EtlPollerFunction", stack) as refused:
        drain(app, cont, FakeLambdaContext(clock))
    job = store.get("v-role")
    if with_key:
        assert job.status is jobstate.JobStatus.SUCCEEDED and refused == []
    else:
        assert job.status is jobstate.JobStatus.FAILED
        assert refused and all(r.startswith("kms:") for r in refused)


# -- packaging -----------------------------------------------------------------------------------


def test_import_jobstate_never_imports_the_encryption_sdk() -> None:
    code = ("import sys, jobstate, jobstate.store, jobstate.app, handlers.status_api; "
            "assert 'aws_encryption_sdk' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


def test_a_missing_extra_is_a_one_line_error_naming_the_extra(
        make_store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aws_encryption_sdk", None)  # not installed
    with pytest.raises(jobstate.MissingExtra) as err:
        kms.local_cipher(KEY)
    assert str(err.value).count("\n") == 0 and "pip install 'jobstate[kms]'" in str(err.value)
    monkeypatch.setenv(kms.KEY_ENV, "arn:aws:kms:us-east-1:123456789012:key/abc")
    with pytest.raises(jobstate.MissingExtra, match=r"jobstate\[kms\]"):
        make_store()
