"""The single-table layout: item kinds, key shapes, attribute names, indexes.

Every attribute name and key shape is declared here once; the rest of the package refers
to them by these names. Item kinds share one table (`pk`, `sk`); the key prefixes are the
contract:

- job          pk=JOB#<job_id>      sk=JOB
- step history pk=JOB#<job_id>      sk=STEP#<step:09d>#<time>#<owner>#<event>
- effect       pk=JOB#<job_id>      sk=FX#<key>
- child link   pk=JOB#<parent_id>   sk=CHILD#<child_id>
- control      pk=TYPE#<job_type>   sk=CONTROL
- callback     pk=JOB#<job_id>      sk=CB#<name>
- type action  pk=TYPE#<job_type>   sk=OP#<time:013d>#<action>   (pause, resume: history)

Two sharded GSIs: `by-type` (keys only; written on status changes only, so a running
step does not pay for it) and the sparse `due` index the sweeper queries. The table is
declared as a PynamoDB model (`build_models`) for `create_table` and tabledef.py.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from pynamodb.attributes import NumberAttribute, TTLAttribute, UnicodeAttribute
from pynamodb.indexes import GlobalSecondaryIndex, IncludeProjection, KeysOnlyProjection
from pynamodb.models import Model

PK, SK = "pk", "sk"
JOB_SK = "JOB"
CONTROL_SK = "CONTROL"
JOB_PREFIX, TYPE_PREFIX = "JOB#", "TYPE#"
STEP_PREFIX, EFFECT_PREFIX, CHILD_PREFIX = "STEP#", "FX#", "CHILD#"
CALLBACK_PREFIX = "CB#"
OP_PREFIX = "OP#"
LIST_INDEX = "by-type"
DUE_INDEX = "due"
LIST_SHARDS = 8
DUE_SHARDS = 8


class J:
    """Attribute names of a job item.

    Short, since every step's two writes carry them (request bytes, item size: an
    UpdateItem bills the whole item in 1 KB units). `docs/concepts.md` has the legend.
    """

    JOB_ID, TYPE, STATUS, STEP = "id", "ty", "st", "sn"
    INPUT, INPUT_HASH = "in", "ih"
    CURSOR, TOKENS, PROGRESS = "cu", "tk", "pg"
    OWNER, LEASE, LAST_WRITER = "lo", "le", "lw"
    ATTEMPT, MAX_ATTEMPTS, MAX_STEPS, DEADLINE = "at", "ma", "ms", "dl"
    NOT_BEFORE, WAIT_REASON = "nb", "wr"
    PENDING, CHILDREN_TOTAL, MAX_CONCURRENCY = "pd", "ct", "mc"
    PARENT_ID, CHILD_INDEX, RELEASE_ID, PARENT_STEP = "pi", "ci", "ri", "ps"
    PARENT_TYPE, ANCESTORS = "pt", "an"
    SPAWN_STEP, CHILD_TYPE, CHILD_POLICY, CHILD_IDS = "ss", "cy", "cp", "cd"
    CHILDREN_OK, CHILDREN_FAILED, MIN_SUCCESSFUL, TOLERATED = "ko", "kf", "km", "kt"
    VERDICT, COUNTED = "kv", "kc"  # a policy's decision; on a child: what its join counts
    RESULT, ERROR, ERROR_TYPE = "rs", "er", "et"
    CREATED, UPDATED, STATUS_AT = "ca", "ua", "sa"
    INVOCATIONS, TAKEOVERS, RETRIES, RUN_MS = "iv", "tv", "rt", "rm"
    SWEEPS, REDISPATCHES, SWEPT_AT, HOP = "sw", "rd", "sp", "hp"
    HISTORY_ON, PAUSED_BY, RECENT = "ho", "pz", "hr"
    DUE, DUE_SHARD = "du", "dk"
    LIST_SHARD, LIST_KEY = "lk", "ls"
    EXPIRES = "ex"


class FX:
    """Attribute names of an effect record."""

    STATE, OWNER, STEP, RESULT = "s", "o", "n", "r"
    STARTED_AT, DONE_AT, SEMANTICS, RUNS = "sa", "da", "m", "ru"
    LEASE_UNTIL, LAST_ERROR, EXPIRES = "lu", "le", "ex"


class CH:
    """Attribute names of a child link (CHILD#<id> under its parent)."""

    CHILD_ID, INDEX, STATUS, RESULT, ERROR = "id", "ix", "st", "rs", "er"
    JOINED_AT, EXPIRES = "ja", "ex"


class H:
    """Attribute names of a step-history item."""

    STEP, EVENT, OWNER, REQUEST_ID = "step", "event", "owner", "request_id"
    STARTED_AT, ENDED_AT, DURATION_MS = "started_at", "ended_at", "duration_ms"
    ATTEMPT, DETAIL, WORK, EXPIRES = "attempt", "detail", "work", "ex"
    WHO, STEPS, CREATED, CURSOR, PROGRESS = "who", "steps", "created", "cursor", "progress"


class CTL:
    """Attribute names of a job type's control item."""

    PAUSED, REASON, UPDATED, WAKING = "paused", "reason", "updated_at", "waking"


class CB:
    """Attribute names of a callback record (`CB#<name>` under its job; issue 18)."""

    STATE, SECRET_HASH, RESULT, ERROR = "s", "th", "r", "e"
    TIMEOUT_AT, HEARTBEAT_S, HEARTBEAT_DUE = "to", "hb", "hd"
    JOB_TYPE, JOB_CREATED, CREATED, ANSWERED_AT, EXPIRES = "jt", "jc", "ca", "aa", "ex"
    PLAIN = "pj"  # the result is plain JSON (sent by a caller that knows no serdes)


class IN:
    """Attribute names of a job's input item (an input too big to carry in every write)."""

    INPUT, EXPIRES = "in", "ex"


# The due index holds only jobs asleep until a time (a sleep, a poll's backoff): what the
# sweeper needs to wake one without reading it; none of it changes while the job sleeps.
DUE_INCLUDED = [J.TYPE, J.STATUS, J.STEP, J.PARENT_TYPE, J.ANCESTORS, J.CREATED, J.DEADLINE,
                J.PAUSED_BY]
INPUT_SK = "INPUT"
INLINE_INPUT_BYTES = 256  # a bigger input lives in its own item, read once per container

# Buckets of the by-type index's sort key `ls` = <bucket>#<job type>#<time>: jobs in
# flight (the sweeper reads each of them every sweep), jobs asleep until a time (found
# through the due index instead), jobs held by a paused type (nothing looks at them until
# the resume), and finished jobs by final status.
ACTIVE, ASLEEP, PAUSED = "ACTIVE", "ASLEEP", "PAUSED"


# -- key shapes ------------------------------------------------------------------------------


def job_pk(job_id: str) -> str:
    return f"{JOB_PREFIX}{job_id}"


def job_id_of(pk: str) -> str:
    return pk.removeprefix(JOB_PREFIX)


def type_pk(job_type: str) -> str:
    return f"{TYPE_PREFIX}{job_type}"


def shard_of(job_id: str, shards: int) -> int:
    return zlib.crc32(job_id.encode("utf-8")) % shards


def list_hash(job_id: str) -> str:
    return f"L#{shard_of(job_id, LIST_SHARDS)}"


def list_shards() -> list[str]:
    return [f"L#{s}" for s in range(LIST_SHARDS)]


def list_range(job_type: str, bucket: str, at_ms: int) -> str:
    """The by-type index's sort key: the bucket (ACTIVE, ASLEEP, or a final status) first,
    so the sweeper reads every job in flight with one prefix per shard."""
    return f"{bucket}#{job_type}#{at_ms:013d}"


def list_prefix(bucket: str, job_type: str | None = None) -> str:
    return f"{bucket}#" + (f"{job_type}#" if job_type is not None else "")


def due_hash(job_id: str) -> str:
    return f"D#{shard_of(job_id, DUE_SHARDS)}"


def due_shard(shard: int) -> str:
    return f"D#{shard}"


def step_sk(step: int) -> str:
    return f"{STEP_PREFIX}{step:09d}"


def history_sk(step: int, at_ms: int, owner: str, event: str) -> str:
    return f"{step_sk(step)}#{at_ms:013d}#{owner[-12:]}#{event}"


def op_sk(at_ms: int, action: str) -> str:
    """A job type's operator action (pause, resume) under its TYPE# partition."""
    return f"{OP_PREFIX}{at_ms:013d}#{action}"


def effect_sk(key: str) -> str:
    return f"{EFFECT_PREFIX}{key}"


def child_sk(child_id: str) -> str:
    return f"{CHILD_PREFIX}{child_id}"


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def job_key(job_id: str) -> dict[str, Any]:
    return {PK: _s(job_pk(job_id)), SK: _s(JOB_SK)}


def control_key(job_type: str) -> dict[str, Any]:
    return {PK: _s(type_pk(job_type)), SK: _s(CONTROL_SK)}


def effect_key(job_id: str, key: str) -> dict[str, Any]:
    return {PK: _s(job_pk(job_id)), SK: _s(effect_sk(key))}


def callback_key(job_id: str, name: str) -> dict[str, Any]:
    return {PK: _s(job_pk(job_id)), SK: _s(f"{CALLBACK_PREFIX}{name}")}


def input_key(job_id: str) -> dict[str, Any]:
    return {PK: _s(job_pk(job_id)), SK: _s(INPUT_SK)}


def child_key(parent_id: str, child_id: str) -> dict[str, Any]:
    return {PK: _s(job_pk(parent_id)), SK: _s(child_sk(child_id))}


SWEEP_PK, SWEEP_SK = "SWEEP", "RESUME"
RESUME_AT = "rt"  # the sweep resume point item's one attribute: a sweep() next_token


def sweep_resume_key() -> dict[str, Any]:
    """Where an incomplete sweep leaves its next_token for the next run (`sweep(resume=)`)."""
    return {PK: _s(SWEEP_PK), SK: _s(SWEEP_SK)}


def key_of(item: dict[str, Any]) -> dict[str, Any]:
    """The primary key of a raw item."""
    return {PK: item[PK], SK: item[SK]}


# -- the table as a PynamoDB model (create_table, tabledef) -----------------------------------


@dataclass(frozen=True)
class Models:
    """The PynamoDB model bound to one table: its keys, indexes and TTL."""

    job: type[Any]


def build_models(table_name: str, host: str | None, region: str) -> Models:
    """Declare the table (keys, GSIs, TTL) as a PynamoDB model bound to `table_name`."""

    class ByTypeIndex(GlobalSecondaryIndex[Any]):  # type: ignore[no-untyped-call]
        class Meta:
            index_name = LIST_INDEX
            projection = KeysOnlyProjection()

        lk = UnicodeAttribute(hash_key=True, attr_name=J.LIST_SHARD)
        ls = UnicodeAttribute(range_key=True, attr_name=J.LIST_KEY)

    class DueIndex(GlobalSecondaryIndex[Any]):  # type: ignore[no-untyped-call]
        class Meta:
            index_name = DUE_INDEX
            projection = IncludeProjection(DUE_INCLUDED)

        dk = UnicodeAttribute(hash_key=True, attr_name=J.DUE_SHARD)
        due_at = NumberAttribute(range_key=True, attr_name=J.DUE)

    class TableModel(Model):
        Meta = type("Meta", (), {  # type: ignore[assignment]
            "table_name": table_name, "host": host, "region": region,
            "billing_mode": "PAY_PER_REQUEST"})
        pk = UnicodeAttribute(hash_key=True, attr_name=PK)
        sk = UnicodeAttribute(range_key=True, attr_name=SK)
        lk = UnicodeAttribute(null=True, attr_name=J.LIST_SHARD)
        ls = UnicodeAttribute(null=True, attr_name=J.LIST_KEY)
        dk = UnicodeAttribute(null=True, attr_name=J.DUE_SHARD)
        due_at = NumberAttribute(null=True, attr_name=J.DUE)
        expires_at = TTLAttribute(null=True, attr_name=J.EXPIRES)
        by_type = ByTypeIndex()
        due = DueIndex()

    return Models(TableModel)
