"""Self-tests of tests/backends.py: backend selection, and each HTTP engine end to end.

The engine tests run only when ``JOBSTATE_TEST_BACKEND`` names that engine, e.g.
``JOBSTATE_TEST_BACKEND=dynamodb-local pytest -m integration tests/test_backends_selftest.py``.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from backends import (
    BACKEND_ENV_VAR,
    BACKENDS,
    DYNAMODB_LOCAL_PACKAGE_DIR,
    DynamoDBLocal,
    MotoServer,
    dummy_aws_env,
    dynamodb_client,
    free_port,
    selected_backend,
)
from botocore.exceptions import ClientError

# ---------------------------------------------------------------- selection (no engine)


def test_default_backend_is_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV_VAR, raising=False)
    assert selected_backend() == "moto"


def test_empty_value_means_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV_VAR, "")
    assert selected_backend() == "moto"


@pytest.mark.parametrize("name", BACKENDS)
def test_each_backend_is_accepted(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(BACKEND_ENV_VAR, name)
    assert selected_backend() == name


@pytest.mark.parametrize("bad", ["localstack", "dynalite", "Moto", "dynamodb_local"])
def test_unknown_backend_is_rejected(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    monkeypatch.setenv(BACKEND_ENV_VAR, bad)
    with pytest.raises(ValueError) as info:
        selected_backend()
    message = str(info.value)
    assert repr(bad) in message
    for name in BACKENDS:
        assert name in message


def test_backends_tuple() -> None:
    assert BACKENDS == ("moto", "moto-server", "dynamodb-local")


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))


def test_dummy_aws_env() -> None:
    env = dummy_aws_env()
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert env[key] == "testing"
    assert env["AWS_DEFAULT_REGION"] == env["AWS_REGION"] == "us-east-1"


# ---------------------------------------------------------------- engines (integration)

ENGINES = ("dynamodb-local", "moto-server")


def _port_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    chosen = os.environ.get(BACKEND_ENV_VAR, "") or "moto"
    if chosen != name:
        pytest.skip(
            f"{name} engine test runs only with {BACKEND_ENV_VAR}={name} (it is {chosen!r})"
        )
    return name


def _response(error: ClientError) -> dict[str, Any]:
    """The parsed error response, untyped (it carries Item/CancellationReasons)."""
    return dict(error.response)


def _create_table(client: Any) -> str:
    table = f"selftest-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(
        TableName=table, WaiterConfig={"Delay": 0.2, "MaxAttempts": 50}
    )
    return table


def _exercise(client: Any) -> None:
    """Conditions with ALL_OLD, and transactions: what jobstate relies on."""
    table = _create_table(client)
    old = {"pk": {"S": "job-1"}, "owner": {"S": "alpha"}, "epoch": {"N": "1"}}
    client.put_item(TableName=table, Item=old)

    # Conditional put that fails returns the current item in the error response.
    with pytest.raises(ClientError) as info:
        client.put_item(
            TableName=table,
            Item={"pk": {"S": "job-1"}, "owner": {"S": "beta"}, "epoch": {"N": "2"}},
            ConditionExpression="attribute_not_exists(pk)",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert _response(info.value)["Error"]["Code"] == "ConditionalCheckFailedException"
    assert _response(info.value)["Item"] == old

    # Same for a conditional UpdateItem (the fenced claim).
    with pytest.raises(ClientError) as info:
        client.update_item(
            TableName=table,
            Key={"pk": {"S": "job-1"}},
            UpdateExpression="SET #o = :new, epoch = epoch + :one",
            ConditionExpression="epoch = :expected",
            ExpressionAttributeNames={"#o": "owner"},
            ExpressionAttributeValues={
                ":new": {"S": "beta"},
                ":one": {"N": "1"},
                ":expected": {"N": "7"},
            },
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    assert _response(info.value)["Error"]["Code"] == "ConditionalCheckFailedException"
    assert _response(info.value)["Item"] == old

    # A transaction that succeeds.
    client.transact_write_items(
        TransactItems=[
            {
                "Update": {
                    "TableName": table,
                    "Key": {"pk": {"S": "job-1"}},
                    "UpdateExpression": "SET epoch = epoch + :one",
                    "ConditionExpression": "epoch = :expected",
                    "ExpressionAttributeValues": {":one": {"N": "1"}, ":expected": {"N": "1"}},
                }
            },
            {
                "Put": {
                    "TableName": table,
                    "Item": {"pk": {"S": "job-1#step-1"}, "state": {"S": "done"}},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ]
    )
    current = client.get_item(TableName=table, Key={"pk": {"S": "job-1"}}, ConsistentRead=True)
    assert current["Item"]["epoch"] == {"N": "2"}
    step = client.get_item(TableName=table, Key={"pk": {"S": "job-1#step-1"}}, ConsistentRead=True)
    assert step["Item"]["state"] == {"S": "done"}

    # A transaction whose second action fails: nothing is written, and the
    # cancellation reasons carry the old item of the failed action.
    with pytest.raises(ClientError) as info:
        client.transact_write_items(
            TransactItems=[
                {
                    "Put": {
                        "TableName": table,
                        "Item": {"pk": {"S": "job-1#step-2"}, "state": {"S": "done"}},
                    }
                },
                {
                    "ConditionCheck": {
                        "TableName": table,
                        "Key": {"pk": {"S": "job-1"}},
                        "ConditionExpression": "epoch = :expected",
                        "ExpressionAttributeValues": {":expected": {"N": "1"}},
                        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                    }
                },
            ]
        )
    assert _response(info.value)["Error"]["Code"] == "TransactionCanceledException"
    reasons = _response(info.value)["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["None", "ConditionalCheckFailed"]
    assert reasons[1]["Item"]["epoch"] == {"N": "2"}
    missing = client.get_item(TableName=table, Key={"pk": {"S": "job-1#step-2"}})
    assert "Item" not in missing


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    for key, value in dummy_aws_env().items():
        monkeypatch.setenv(key, value)
    yield


@pytest.mark.integration
@pytest.mark.usefixtures("no_aws_env")
def test_engine_end_to_end(engine_name: str) -> None:
    if engine_name == "dynamodb-local":
        ddb = DynamoDBLocal(package_dir=DYNAMODB_LOCAL_PACKAGE_DIR)
        began = time.monotonic()
        with ddb:
            print(f"DynamoDB Local ready in {time.monotonic() - began:.2f} s")
            assert ddb.pid is not None
            pid, port = ddb.pid, ddb.port
            assert port is not None
            client = dynamodb_client(ddb.endpoint_url)
            _exercise(client)
            # -sharedDb: other credentials and another region see the same tables.
            other = dynamodb_client(ddb.endpoint_url)
            other_tables = other.list_tables()["TableNames"]
            stranger = boto3.client(
                "dynamodb",
                endpoint_url=ddb.endpoint_url,
                region_name="eu-west-1",
                aws_access_key_id="someoneelse",
                aws_secret_access_key="x",
            )
            assert stranger.list_tables()["TableNames"] == other_tables != []
        assert ddb.pid is None
        assert _pid_gone(pid), f"DynamoDB Local pid {pid} still alive after stop()"
        assert _port_closed(port)
    else:
        server = MotoServer()
        with server:
            url = server.endpoint_url
            port = int(url.rsplit(":", 1)[1])
            assert port != 0
            client = dynamodb_client(url)
            _exercise(client)
            assert client.list_tables()["TableNames"] != []
            server.reset()
            assert client.list_tables()["TableNames"] == []
        assert _port_closed(port)
