"""tests/iam_static.py on small programs: what it must find, and what it must refuse.

The analysis is what keeps template.yaml's roles right (tests/test_template.py); these
tests pin its rules on code written for the purpose, so a rule that stops working fails
here rather than letting a permission gap through.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import iam_static

STORE = '''
from typing import Any

LIST_INDEX = "by-x"


class Store:
    def __init__(self, client: Any) -> None:
        self.client = client

    def call(self, operation: str, **kwargs: Any) -> Any:
        return getattr(self.client, operation)(**kwargs)

    def listing(self) -> Any:
        kw = {"IndexName": LIST_INDEX, "KeyConditionExpression": "lk = :lk"}
        return self.call("query", **kw)

    def own(self) -> Any:
        return self.call("query", KeyConditionExpression="pk = :pk")

    def never_called(self) -> Any:
        return self.call("delete_item", Key={})
'''

ENTRY = '''
from typing import Any, Protocol

from pkg.store import Store


class Sender(Protocol):
    def send(self, store: Store) -> None: ...


class Real:
    def send(self, store: Store) -> None:
        store.listing()


class Unused:
    def send(self, store: Store) -> None:
        store.call("scan")


def later(store: Store) -> None:
    store.call("update_item", Key={})


def withdraw(store: Store) -> None:
    check = {"ConditionCheck": {"Key": {}}}
    store.call("transact_write_items", TransactItems=[check])


def run(store: Store, sender: Sender, hooks: list[Any]) -> None:
    hooks.append(later)  # a callback: reachable although nothing here calls it
    sender.send(store)
    withdraw(store)
    store.own()


def handler(event: Any, context: Any = None) -> None:
    run(Store(None), Real(), [])
'''


def program(tmp_path: Path, **files: str) -> iam_static.Program:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in {"store": STORE, "entry": ENTRY, **files}.items():
        (pkg / f"{name}.py").write_text(textwrap.dedent(text))
    return iam_static.Program(tmp_path, ("pkg",))


def test_needs_are_derived_from_what_the_entry_point_reaches(tmp_path: Path) -> None:
    needs = set(program(tmp_path).needs("pkg.entry.handler"))
    assert needs == {
        ("dynamodb:Query", "index/by-x"),  # via the Protocol, on the only live class
        ("dynamodb:Query", "table"),  # no IndexName
        ("dynamodb:UpdateItem", "table"),  # a function passed as a value
        ("dynamodb:ConditionCheckItem", "table"),  # a transaction action kind
    }  # never: DeleteItem (no caller), Scan (Unused is never instantiated)


def test_a_call_site_is_located_and_explained(tmp_path: Path) -> None:
    prog = program(tmp_path)
    [site] = [s for s in prog.sites() if s.op == "transact_write_items"]
    assert site.unit == "pkg.entry.withdraw" and site.path.endswith("entry.py")
    assert prog.why("pkg.entry.handler", site) == (
        "pkg.entry.withdraw <- pkg.entry.run <- pkg.entry.handler")


def test_an_operation_it_cannot_read_is_an_error(tmp_path: Path) -> None:
    bad = '''
    from pkg.store import Store

    def handler(event: object, op: str) -> None:
        Store(None).call(op)
    '''
    with pytest.raises(iam_static.AnalysisError, match="not a string literal"):
        program(tmp_path, bad=bad)


def test_a_request_primitive_passed_around_is_an_error(tmp_path: Path) -> None:
    bad = '''
    from pkg.store import Store

    def handler(event: object) -> None:
        run = Store(None).call
        run("get_item")
    '''
    with pytest.raises(iam_static.AnalysisError, match="used as a value"):
        program(tmp_path, bad=bad)


def test_a_direct_client_call_on_an_untyped_receiver_is_a_site(tmp_path: Path) -> None:
    direct = '''
    from typing import Any

    def handler(event: Any, client: Any) -> None:
        client.put_item(TableName="t", Item={})
        client.invoke(FunctionName="f", Payload=b"{}")
    '''
    needs = set(program(tmp_path, direct=direct).needs("pkg.direct.handler"))
    assert needs == {("dynamodb:PutItem", "table"), ("lambda:InvokeFunction", "*")}
