"""Low-level DynamoDB helpers: attribute values, error codes, update-expression building."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELLED = "TransactionCanceledException"
CANCELLED_BY_CONDITION = "ConditionalCheckFailed"  # a cancellation reason's code
NOT_FOUND = "ResourceNotFoundException"
THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)


def av(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (the few shapes jobstate stores)."""
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(int(value)) if float(value).is_integer() else repr(value)}
    if isinstance(value, str):
        return {"S": value}
    raise TypeError(f"jobstate stores only str, int and bool attributes, got {type(value)}")


def error_code(exc: BaseException) -> str | None:
    """The DynamoDB error code of a botocore/PynamoDB error, looking through causes."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        if isinstance(cur, ClientError):
            return str(cur.response.get("Error", {}).get("Code") or "") or None
        code = getattr(cur, "cause_response_code", None)
        if code:
            return str(code)
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


def old_item(exc: BaseException) -> dict[str, Any] | None:
    """The item returned by ReturnValuesOnConditionCheckFailure=ALL_OLD, if any."""
    if isinstance(exc, ClientError):
        item: Any = exc.response.get("Item")  # present with ALL_OLD, absent from the stubs
        return dict(item) if item else None
    return None


def cancellation_codes(exc: BaseException) -> list[str]:
    if isinstance(exc, ClientError):
        return [str(r.get("Code", "None")) for r in exc.response.get("CancellationReasons", [])]
    return []


def is_transient(exc: BaseException) -> bool:
    code = error_code(exc)
    if code in THROTTLE_CODES or code in {"InternalServerError", "ServiceUnavailable"}:
        return True
    return isinstance(exc, BotoCoreError)


@dataclass
class Update:
    """Builds one UpdateExpression with placeholder names and values."""

    sets: list[str] = field(default_factory=list)
    removes: list[str] = field(default_factory=list)
    adds: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    # The values carry user state and tokens: never in a repr (tracebacks, debuggers).
    values: dict[str, Any] = field(default_factory=dict, repr=False)
    conditions: list[str] = field(default_factory=list)

    def name(self, attr: str) -> str:
        ph = f"#{attr}"
        self.names[ph] = attr
        return ph

    def value(self, key: str, value: Any) -> str:
        ph = f":{key}"
        self.values[ph] = av(value)
        return ph

    def set(self, attr: str, value: Any) -> Update:
        self.sets.append(f"{self.name(attr)} = {self.value('v_' + attr, value)}")
        return self

    def set_expr(self, attr: str, expr: str) -> Update:
        self.sets.append(f"{self.name(attr)} = {expr}")
        return self

    def set_opt(self, attr: str, value: Any | None) -> Update:
        """SET when value is not None, REMOVE otherwise."""
        return self.set(attr, value) if value is not None else self.remove(attr)

    def remove(self, *attrs: str) -> Update:
        self.removes.extend(self.name(a) for a in attrs)
        return self

    def add(self, attr: str, amount: int) -> Update:
        self.adds.append(f"{self.name(attr)} {self.value('a_' + attr, amount)}")
        return self

    def where(self, condition: str) -> Update:
        self.conditions.append(condition)
        return self

    def kwargs(self) -> dict[str, Any]:
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        if self.adds:
            parts.append("ADD " + ", ".join(self.adds))
        out: dict[str, Any] = {"UpdateExpression": " ".join(parts)}
        if self.conditions:
            out["ConditionExpression"] = " AND ".join(f"({c})" for c in self.conditions)
        if self.names:
            out["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            out["ExpressionAttributeValues"] = dict(self.values)
        return out
