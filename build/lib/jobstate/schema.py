"""The single-table layout, declared once as PynamoDB models.

Item kinds share one table (`pk`, `sk`); the key prefixes are the contract:

- job          pk=JOB#<job_id>      sk=JOB
- step history pk=JOB#<job_id>      sk=STEP#<step:09d>#<time>#<owner>
- effect       pk=JOB#<job_id>      sk=FX#<key>
- child link   pk=JOB#<parent_id>   sk=CHILD#<child_id>
- control      pk=TYPE#<job_type>   sk=CONTROL

Two sharded GSIs: `by-type` (keys only; written on status changes only, so a running
step does not pay for it) and the sparse `due` index the sweeper queries.
Models are built per store (`build_models`), so one process can talk to several tables.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
)
from pynamodb.indexes import GlobalSecondaryIndex, IncludeProjection, KeysOnlyProjection
from pynamodb.models import Model

JOB_SK = "JOB"
CONTROL_SK = "CONTROL"
LIST_INDEX = "by-type"
DUE_INDEX = "due"
LIST_SHARDS = 8
DUE_SHARDS = 8
DUE_INCLUDED = ["job_type", "status", "step", "lease_expires_at", "deadline_at", "pending",
                "parent_type", "ancestors", "wait_reason"]


def job_pk(job_id: str) -> str:
    return f"JOB#{job_id}"


def type_pk(job_type: str) -> str:
    return f"TYPE#{job_type}"


def shard_of(job_id: str, shards: int) -> int:
    return zlib.crc32(job_id.encode("utf-8")) % shards


def list_hash(job_id: str) -> str:
    return f"L#{shard_of(job_id, LIST_SHARDS)}"


def list_range(job_type: str, status: str, at_ms: int) -> str:
    return f"{job_type}#{status}#{at_ms:013d}"


def due_hash(job_id: str) -> str:
    return f"D#{shard_of(job_id, DUE_SHARDS)}"


def step_sk(step: int) -> str:
    return f"STEP#{step:09d}"


def effect_sk(key: str) -> str:
    return f"FX#{key}"


def child_sk(child_id: str) -> str:
    return f"CHILD#{child_id}"


@dataclass(frozen=True)
class Models:
    """The PynamoDB model classes bound to one table."""

    job: type[Any]
    history: type[Any]
    effect: type[Any]
    child: type[Any]
    control: type[Any]


def build_models(table_name: str, host: str | None, region: str) -> Models:
    """Declare the table's item kinds as PynamoDB models bound to `table_name`."""

    class _Meta:
        pass

    def meta() -> type:
        return type(
            "Meta",
            (_Meta,),
            {"table_name": table_name, "host": host, "region": region,
             "billing_mode": "PAY_PER_REQUEST"},
        )

    class ByTypeIndex(GlobalSecondaryIndex[Any]):  # type: ignore[no-untyped-call]
        class Meta:
            index_name = LIST_INDEX
            projection = KeysOnlyProjection()

        lk = UnicodeAttribute(hash_key=True)
        ls = UnicodeAttribute(range_key=True)

    class DueIndex(GlobalSecondaryIndex[Any]):  # type: ignore[no-untyped-call]
        class Meta:
            index_name = DUE_INDEX
            projection = IncludeProjection(DUE_INCLUDED)

        dk = UnicodeAttribute(hash_key=True)
        due_at = NumberAttribute(range_key=True)

    class JobModel(Model):
        Meta = meta()  # type: ignore[assignment]
        pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)
        job_id = UnicodeAttribute()
        job_type = UnicodeAttribute()
        status = UnicodeAttribute()
        step = NumberAttribute()
        input = UnicodeAttribute(null=True)
        input_hash = UnicodeAttribute(null=True)
        cursor = UnicodeAttribute(null=True)
        tokens = UnicodeAttribute(null=True)
        progress = UnicodeAttribute(null=True)
        lease_owner = UnicodeAttribute(null=True)
        lease_expires_at = NumberAttribute(null=True)
        prev_owner = UnicodeAttribute(null=True)
        attempt = NumberAttribute(null=True)
        max_attempts = NumberAttribute(null=True)
        max_steps = NumberAttribute(null=True)
        deadline_at = NumberAttribute(null=True)
        not_before = NumberAttribute(null=True)
        pending = NumberAttribute(null=True)
        children_total = NumberAttribute(null=True)
        max_concurrency = NumberAttribute(null=True)
        started_children = NumberAttribute(null=True)
        parent_id = UnicodeAttribute(null=True)
        child_index = NumberAttribute(null=True)
        release_id = UnicodeAttribute(null=True)
        parent_type = UnicodeAttribute(null=True)
        ancestors = UnicodeAttribute(null=True)  # JSON list of ancestor job types, root first
        spawn_step = NumberAttribute(null=True)
        child_type = UnicodeAttribute(null=True)
        child_policy = UnicodeAttribute(null=True)
        child_ids = UnicodeAttribute(null=True)
        result = UnicodeAttribute(null=True)
        error = UnicodeAttribute(null=True)
        error_type = UnicodeAttribute(null=True)  # the exception's class name, for code
        wait_reason = UnicodeAttribute(null=True)
        created_at = NumberAttribute(null=True)
        updated_at = NumberAttribute(null=True)
        status_at = NumberAttribute(null=True)
        version = NumberAttribute(null=True)
        invocations = NumberAttribute(null=True)
        takeovers = NumberAttribute(null=True)
        retries = NumberAttribute(null=True)
        run_ms = NumberAttribute(null=True)
        sweeps = NumberAttribute(null=True)
        history_on = BooleanAttribute(null=True)
        due_at = NumberAttribute(null=True)
        dk = UnicodeAttribute(null=True)
        lk = UnicodeAttribute(null=True)
        ls = UnicodeAttribute(null=True)
        expires_at = TTLAttribute(null=True)
        by_type = ByTypeIndex()
        due = DueIndex()

    class HistoryModel(Model):
        Meta = meta()  # type: ignore[assignment]
        pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)
        step = NumberAttribute()
        event = UnicodeAttribute()
        owner = UnicodeAttribute(null=True)
        request_id = UnicodeAttribute(null=True)
        started_at = NumberAttribute(null=True)
        ended_at = NumberAttribute(null=True)
        duration_ms = NumberAttribute(null=True)
        attempt = NumberAttribute(null=True)
        detail = UnicodeAttribute(null=True)
        work = UnicodeAttribute(null=True)
        expires_at = NumberAttribute(null=True)

    class EffectModel(Model):
        Meta = meta()  # type: ignore[assignment]
        pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)
        state = UnicodeAttribute()
        owner = UnicodeAttribute(null=True)
        step = NumberAttribute(null=True)
        result = UnicodeAttribute(null=True)
        started_at = NumberAttribute(null=True)
        done_at = NumberAttribute(null=True)
        semantics = UnicodeAttribute(null=True)
        runs = NumberAttribute(null=True)
        expires_at = NumberAttribute(null=True)

    class ChildModel(Model):
        Meta = meta()  # type: ignore[assignment]
        pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)
        child_id = UnicodeAttribute()
        index = NumberAttribute(null=True)
        status = UnicodeAttribute(null=True)
        result = UnicodeAttribute(null=True)
        error = UnicodeAttribute(null=True)
        joined_at = NumberAttribute(null=True)
        expires_at = NumberAttribute(null=True)

    class ControlModel(Model):
        Meta = meta()  # type: ignore[assignment]
        pk = UnicodeAttribute(hash_key=True)
        sk = UnicodeAttribute(range_key=True)
        paused = BooleanAttribute(null=True)
        reason = UnicodeAttribute(null=True)
        updated_at = NumberAttribute(null=True)

    return Models(JobModel, HistoryModel, EffectModel, ChildModel, ControlModel)
