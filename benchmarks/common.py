"""Fresh tables on the run's engine: jobstate stores and a Powertools idempotency table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import jobstate
from jobstate.clock import Clock
from jobstate.local.engines import dynamodb_client

from .engine import REGION, Engine, Meter


def new_store(engine: Engine, meter: Meter | None, clock: Clock | None = None,
              prefix: str = "bench") -> jobstate.JobStore:
    store = jobstate.JobStore(f"{prefix}-{uuid.uuid4().hex[:8]}", endpoint_url=engine.endpoint_url,
                              region=REGION, clock=clock)
    store.create_table()
    if meter is not None:
        meter.attach(store.client)
    return store


@dataclass
class LambdaContext:
    """What Powertools and jobstate read from a Lambda context."""

    remaining: Any  # () -> int
    function_name: str = "bench"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:bench"
    aws_request_id: str = ""

    def __post_init__(self) -> None:
        self.aws_request_id = self.aws_request_id or str(uuid.uuid4())

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining())


def powertools_layer(engine: Engine, meter: Meter | None) -> tuple[Any, Any]:
    """A fresh Powertools idempotency table on the same engine.

    Returns (layer factory, boto3 client). A persistence layer keeps the first config it
    is given, so each decorated function needs its own (same table, same client).
    """
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    client = dynamodb_client(engine.endpoint_url)
    name = f"powertools-{uuid.uuid4().hex[:8]}"
    client.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
    )
    client.get_waiter("table_exists").wait(TableName=name,
                                           WaiterConfig={"Delay": 0.1, "MaxAttempts": 100})
    if meter is not None:
        meter.attach(client)

    def layer() -> Any:
        return DynamoDBPersistenceLayer(table_name=name, boto3_client=client)

    return layer, client
