"""Two fixes to moto's DynamoDB backend for the embedded server (installed on start).

1. moto's `transact_write_items` deep-copies the whole table once per action to be able
   to roll back, so a 50-item transaction on a table of a few thousand items takes
   seconds and grows with the table. DynamoDB forbids two actions on one item, so every
   condition can be checked against the current state first; then the actions are
   applied with only the touched items backed up. Same results, O(actions).
2. The threaded server runs requests concurrently and moto has no lock: a conditional
   write's check and its write could interleave with another request's. One lock around
   the backend's operations makes each request atomic, as DynamoDB's are.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

_LOCK = threading.RLock()
_LOCKED = ("get_item", "put_item", "update_item", "delete_item", "query", "scan",
           "batch_get_item", "batch_write_item", "transact_write_items", "transact_get_items")


class _Fallback(Exception):
    """Something the fast path does not handle: use moto's own implementation."""


def install() -> None:
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend, "jobstate_fixed", False):
        return
    original = DynamoDBBackend.transact_write_items

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        try:
            plan = _check(self, transact_items)
        except _Fallback:
            original(self, transact_items)
            return
        _apply(self, plan)

    setattr(DynamoDBBackend, "transact_write_items", transact_write_items)  # noqa: B010
    for name in _LOCKED:
        fn = getattr(DynamoDBBackend, name, None)
        if fn is not None:
            setattr(DynamoDBBackend, name, _locked(fn))
    setattr(DynamoDBBackend, "jobstate_fixed", True)  # noqa: B010


def _locked(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return fn(*args, **kwargs)

    return wrapper


def _check(backend: Any, items: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any],
                                                                      dict[str, Any], Any]]:
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(items) > 100:
        raise TooManyTransactionsException()
    seen: set[tuple[str, str]] = set()
    plan = []
    errors: list[Any] = []
    for item in items:
        if len(item) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(item.items()))
        if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
            raise _Fallback
        try:
            table = backend.get_table(op["TableName"])
            if op_type == "Put":
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
        except Exception:
            raise _Fallback from None
        uniq = (str(op["TableName"]), str(dict(sorted(key.items()))))
        if uniq in seen:
            raise MultipleTransactionsException()
        seen.add(uniq)
        current = backend.get_item(op["TableName"], key)
        cond = op.get("ConditionExpression")
        if cond is not None:
            try:
                ok = get_filter_expression(cond, op.get("ExpressionAttributeNames") or {},
                                           op.get("ExpressionAttributeValues")).expr(current)
            except Exception:
                raise _Fallback from None
            if not ok:
                old = (current.to_json()["Attributes"] if current is not None and
                       op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" else None)
                errors.append(("ConditionalCheckFailed", "The conditional request failed", old))
                continue
        errors.append((None, None, None))
        plan.append((op_type, op, key, current))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)
    return plan


def _apply(backend: Any, plan: list[tuple[str, dict[str, Any], dict[str, Any], Any]]) -> None:
    backups = [(op["TableName"], key, copy.deepcopy(cur)) for _, op, key, cur in plan]
    try:
        for op_type, op, key, _ in plan:
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                backend.put_item(op["TableName"], op["Item"])
            elif op_type == "Delete":
                backend.delete_item(op["TableName"], key)
            elif op_type == "Update":
                backend.update_item(op["TableName"], key, update_expression=op["UpdateExpression"],
                                    expression_attribute_names=names or {},
                                    expression_attribute_values=values or {})
    except Exception:
        for table_name, key, old in backups:
            if old is None:
                backend.delete_item(table_name, key)
            else:
                backend.put_item(table_name, old.to_json()["Attributes"])
        raise
