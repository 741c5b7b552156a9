"""DynamoDB primitives: attribute values, error codes, expressions, refusals, paging.

A refused conditional write is a value here, not a botocore error to pick apart: `Refused`
carries the item the condition saw (ReturnValuesOnConditionCheckFailure=ALL_OLD), and
`TransactionRefused` says which actions of a transaction were refused, with their items.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

CONDITION_FAILED = "ConditionalCheckFailedException"
TRANSACTION_CANCELLED = "TransactionCanceledException"
CANCELLED_BY_CONDITION = "ConditionalCheckFailed"  # a cancellation reason's code
TRANSACTION_CONFLICT = "TransactionConflict"
NOT_FOUND = "ResourceNotFoundException"
THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)

Item = dict[str, Any]  # a raw DynamoDB item: attribute name -> attribute value


def av(value: Any) -> dict[str, Any]:
    """A Python value as a DynamoDB attribute value (the few shapes jobstate stores)."""
    kind = type(value)  # the common exact types first: every request converts a dozen
    if kind is str:
        return {"S": value}
    if kind is int:
        return {"N": str(value)}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(int(value)) if float(value).is_integer() else repr(value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, tuple):  # a tuple, not a list: Update.v memoises by value
        return {"L": [av(v) for v in value]}
    raise TypeError(f"jobstate stores only str, int, bool and tuple attributes, got "
                    f"{type(value)}")


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


def is_transient(exc: BaseException) -> bool:
    code = error_code(exc)
    if code in THROTTLE_CODES or code in {"InternalServerError", "ServiceUnavailable"}:
        return True
    return isinstance(exc, BotoCoreError)


def is_conflict(exc: ClientError) -> bool:
    """A transaction cancelled because another one was using an item (not a condition)."""
    if error_code(exc) != TRANSACTION_CANCELLED:
        return False
    reasons = exc.response.get("CancellationReasons") or []
    return any(r.get("Code") == TRANSACTION_CONFLICT for r in reasons)


class Refused(Exception):
    """A conditional write was refused; `old` is the item its condition saw (None when
    the item does not exist, or an engine that does not return it)."""

    def __init__(self, old: Item | None) -> None:
        super().__init__("the condition of a write was not met")
        self.old = old


class TransactionRefused(Exception):
    """A transaction was refused by the conditions of some of its actions: `parts` maps
    each refused action's index to the item its condition saw (None when absent)."""

    def __init__(self, parts: dict[int, Item | None]) -> None:
        super().__init__(f"transaction refused by actions {sorted(parts)}")
        self.parts = parts


def refused(exc: ClientError) -> Refused | None:
    """The refusal in a failed conditional write, or None if it failed otherwise."""
    if error_code(exc) != CONDITION_FAILED:
        return None
    item: Any = exc.response.get("Item")  # present with ALL_OLD, absent from the stubs
    return Refused(dict(item) if item else None)


def transaction_refused(exc: ClientError) -> TransactionRefused | None:
    """Which actions' conditions refused a transaction, or None if it failed otherwise
    (or the engine did not say which)."""
    if error_code(exc) != TRANSACTION_CANCELLED:
        return None
    reasons = exc.response.get("CancellationReasons") or []
    parts: dict[int, Item | None] = {}
    for i, reason in enumerate(reasons):
        code = reason.get("Code")
        if code in (CANCELLED_BY_CONDITION, CONDITION_FAILED):
            item = reason.get("Item")
            parts[i] = dict(item) if item else None
        elif code not in ("None", None):
            return None  # a conflict, a validation error...: not a refusal
    return TransactionRefused(parts) if parts else None


def pages(fetch: Callable[[Item | None], Mapping[str, Any]]) -> Iterator[Item]:
    """Every item of a paged Query/Scan: `fetch(start_key)` returns one page."""
    start: Item | None = None
    while True:
        resp = fetch(start)
        for item in resp.get("Items", []):
            yield dict(item)
        start = resp.get("LastEvaluatedKey")
        if not start:
            return


def start_at(start: Item | None) -> dict[str, Any]:
    """The `ExclusiveStartKey` keyword of a page fetch (none on the first page)."""
    return {"ExclusiveStartKey": start} if start else {}


@dataclass(frozen=True)
class Slot:
    """A value left open in an update built once and sent many times (`Update.bind`)."""

    name: str


@dataclass
class Update:
    """One UpdateExpression (or a bare condition) with placeholder names and values.

    Attribute names go through `n` (a placeholder, or the name itself when DynamoDB takes
    it as it is), values through `v`; conditions are written with them
    (`upd.where(f"{upd.n(A)} = {upd.v(x)}")`) or with the helpers (`eq`, `absent_or`,
    `in_`).
    """

    sets: list[str] = field(default_factory=list)
    removes: list[str] = field(default_factory=list)
    adds: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    # The values carry user state and tokens: never in a repr (tracebacks, debuggers).
    values: dict[str, Any] = field(default_factory=dict, repr=False)
    conditions: list[str] = field(default_factory=list)
    _name_of: dict[str, str] = field(default_factory=dict, repr=False)
    _value_of: dict[tuple[type, Any], str] = field(default_factory=dict, repr=False)

    def n(self, attr: str) -> str:
        """How the expressions name attribute `attr`: itself, or a placeholder."""
        ph = self._name_of.get(attr)
        if ph is None:
            ph = attr if plain_name(attr) else f"#{len(self.names)}"
            self._name_of[attr] = ph
            if ph != attr:
                self.names[ph] = attr
        return ph

    def v(self, value: Any) -> str:
        """A placeholder holding `value` (one per distinct value)."""
        memo = (type(value), value)
        ph = self._value_of.get(memo)
        if ph is None:
            ph = self._value_of[memo] = f":{len(self.values)}"
            self.values[ph] = value if isinstance(value, Slot) else av(value)
        return ph

    def bind(self, **slots: Any) -> Update:
        """A copy with each `Slot` value filled from `slots`: an update whose shape is
        fixed is built once, and each request only converts its own values."""
        values = {ph: av(slots[v.name]) if isinstance(v, Slot) else v
                  for ph, v in self.values.items()}
        return Update(list(self.sets), list(self.removes), list(self.adds), dict(self.names),
                      values, list(self.conditions), dict(self._name_of), dict(self._value_of))

    def set(self, attr: str, value: Any) -> Update:
        self.sets.append(f"{self.n(attr)} = {self.v(value)}")
        return self

    def set_all(self, pairs: Iterable[tuple[str, Any]]) -> Update:
        for attr, value in pairs:
            self.set(attr, value)
        return self

    def set_expr(self, attr: str, expr: str) -> Update:
        self.sets.append(f"{self.n(attr)} = {expr}")
        return self

    def set_opt(self, attr: str, value: Any | None) -> Update:
        """SET when value is not None, REMOVE otherwise."""
        return self.set(attr, value) if value is not None else self.remove(attr)

    def remove(self, *attrs: str) -> Update:
        self.removes.extend(self.n(a) for a in attrs)
        return self

    def add(self, attr: str, amount: int) -> Update:
        self.adds.append(f"{self.n(attr)} {self.v(amount)}")
        return self

    def where(self, *conditions: str) -> Update:
        self.conditions.extend(conditions)
        return self

    # -- condition helpers (each returns the condition's text) --------------------------

    def eq(self, attr: str, value: Any) -> str:
        return f"{self.n(attr)} = {self.v(value)}"

    def exists(self, attr: str) -> str:
        return f"attribute_exists({self.n(attr)})"

    def absent(self, attr: str) -> str:
        return f"attribute_not_exists({self.n(attr)})"

    def absent_or(self, attr: str, op: str, value: Any) -> str:
        """The attribute is absent, or compares to `value` with `op` (`<`, `<=`, ...)."""
        name = self.n(attr)
        return f"attribute_not_exists({name}) OR {name} {op} {self.v(value)}"

    def in_(self, attr: str, values: list[Any]) -> str:
        return f"{self.n(attr)} IN ({', '.join(self.v(x) for x in values)})"

    def kwargs(self) -> dict[str, Any]:
        """The request keywords: UpdateExpression (if any), ConditionExpression, maps."""
        parts = []
        if self.sets:
            parts.append("SET " + ", ".join(self.sets))
        if self.removes:
            parts.append("REMOVE " + ", ".join(self.removes))
        if self.adds:
            parts.append("ADD " + ", ".join(self.adds))
        out: dict[str, Any] = {}
        if parts:
            out["UpdateExpression"] = " ".join(parts)
        if self.conditions:
            # A part that holds an OR in parentheses when there are several (AND binds
            # tighter); none around the others, or a lone one (DynamoDB refuses redundant
            # parentheses, and parses every one it is sent).
            several = len(self.conditions) > 1
            out["ConditionExpression"] = " AND ".join(
                f"({c})" if several and " OR " in c else c for c in self.conditions)
        if self.names:
            out["ExpressionAttributeNames"] = dict(self.names)
        if self.values:
            out["ExpressionAttributeValues"] = dict(self.values)
        return out


# DynamoDB's reserved words of one or two letters (Amazon DynamoDB Developer Guide,
# "Reserved words in DynamoDB"; the list is not case-sensitive).
RESERVED_SHORT = frozenset({"AS", "AT", "BY", "DO", "GO", "IF", "IN", "IS", "NO", "OF", "ON",
                            "OR", "TO"})


@functools.cache  # a handful of names, asked for on every request
def plain_name(attr: str) -> bool:
    """Whether an expression may name attribute `attr` as it is: one or two ASCII letters
    or digits starting with a letter, and no reserved word. jobstate's own attributes are
    such names, so most requests need no ExpressionAttributeNames (bytes, and work for the
    service to substitute)."""
    return (len(attr) <= 2 and attr.isascii() and attr.isalnum() and attr[0].isalpha()
            and attr.upper() not in RESERVED_SHORT)


def condition(build: Callable[[Update], str]) -> dict[str, Any]:
    """The keywords of a bare condition (a put, a delete, a ConditionCheck)."""
    upd = Update()
    upd.where(build(upd))
    return upd.kwargs()


def request_token() -> str:
    """An idempotency token for a transaction resent by this process."""
    return uuid.uuid4().hex
