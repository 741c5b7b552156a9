"""The table as infrastructure code cannot drift from the schema in the code.

`jobstate.tabledef.table_definition()` is read from the PynamoDB models that
`JobStore.create_table` uses. Each rendering (SAM, CDK, Terraform) is parsed back into a
definition and compared with it; docs/embedding.md must show exactly what the renderers
print, and template.yaml's table must have the same keys, indexes, projections and TTL.
Change the schema (say, what the `due` index projects) and these tests name every place
to regenerate with `jobstate table-definition --format ...`.
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobstate import tabledef
from jobstate.tabledef import Index, TableDefinition

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = tabledef.table_definition()
SCHEMA_KEYS = ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes",
               "TimeToLiveSpecification")


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, ...) as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_CfnLoader.add_multi_constructor("!", _any_tag)


def schema_part(properties: dict[str, Any]) -> dict[str, Any]:
    return {k: properties.get(k) for k in SCHEMA_KEYS}


def mutated() -> TableDefinition:
    """The definition after a plausible schema change: `due` projects one more attribute."""
    indexes = tuple(replace(i, non_key_attributes=(*i.non_key_attributes, "priority"))
                    if i.projection == "INCLUDE" else i for i in DEFINITION.indexes)
    return replace(DEFINITION, indexes=indexes)


# -- the definition is the table create_table makes ------------------------------------------


@pytest.mark.integration
def test_the_definition_is_the_table_create_table_makes(store: Any) -> None:
    desc = store.call("describe_table")["Table"]
    assert {(a["AttributeName"], a["AttributeType"]) for a in desc["AttributeDefinitions"]} == (
        set(DEFINITION.attributes))
    assert {k["KeyType"]: k["AttributeName"] for k in desc["KeySchema"]} == {
        "HASH": DEFINITION.hash_key, "RANGE": DEFINITION.range_key}
    made = {g["IndexName"]: g for g in desc["GlobalSecondaryIndexes"]}
    assert set(made) == {i.name for i in DEFINITION.indexes}
    for index in DEFINITION.indexes:
        g = made[index.name]
        assert {k["KeyType"]: k["AttributeName"] for k in g["KeySchema"]} == {
            "HASH": index.hash_key, "RANGE": index.range_key}
        assert g["Projection"]["ProjectionType"] == index.projection
        assert sorted(g["Projection"].get("NonKeyAttributes", [])) == sorted(
            index.non_key_attributes)
    ttl = store.call("describe_time_to_live")["TimeToLiveDescription"]
    assert ttl["AttributeName"] == DEFINITION.ttl_attribute


def test_the_definition_has_the_indexes_the_library_queries() -> None:
    from jobstate import schema

    assert {i.name for i in DEFINITION.indexes} == {schema.LIST_INDEX, schema.DUE_INDEX}
    due = next(i for i in DEFINITION.indexes if i.name == schema.DUE_INDEX)
    assert list(due.non_key_attributes) == schema.DUE_INCLUDED
    assert DEFINITION.ttl_attribute == schema.J.EXPIRES == "ex"


# -- each rendering parses back to the definition ----------------------------------------------


def from_sam(text: str) -> dict[str, Any]:
    resources = yaml.load("Resources:\n" + text, Loader=_CfnLoader)["Resources"]
    (resource,) = resources.values()
    assert resource["Type"] == "AWS::DynamoDB::Table"
    return dict(resource["Properties"])


class _Recorder:
    """Stands in for aws_cdk: records the Table and its indexes as CloudFormation props."""

    def __init__(self) -> None:
        self.props: dict[str, Any] = {}

    def module(self) -> tuple[types.ModuleType, types.ModuleType]:
        rec = self
        ddb = types.ModuleType("aws_cdk.aws_dynamodb")
        ns = types.SimpleNamespace
        ddb.AttributeType = ns(STRING="S", NUMBER="N", BINARY="B")  # type: ignore[attr-defined]
        ddb.BillingMode = ns(PAY_PER_REQUEST="PAY_PER_REQUEST")  # type: ignore[attr-defined]
        ddb.ProjectionType = ns(ALL="ALL", KEYS_ONLY="KEYS_ONLY",  # type: ignore[attr-defined]
                                INCLUDE="INCLUDE")
        ddb.Attribute = lambda name, type: (name, type)  # type: ignore[attr-defined]
        ddb.PointInTimeRecoverySpecification = dict  # type: ignore[attr-defined]

        def keys(pk: tuple[str, str], sk: tuple[str, str] | None) -> list[dict[str, str]]:
            return tabledef._cfn_keys(pk[0], sk[0] if sk else None)

        class Table:
            def __init__(self, scope: Any, cid: str, *, partition_key: Any,
                         sort_key: Any = None, billing_mode: str, removal_policy: Any,
                         time_to_live_attribute: str | None = None,
                         point_in_time_recovery_specification: Any = None) -> None:
                rec.attributes = dict([partition_key] + ([sort_key] if sort_key else []))
                rec.props = {"BillingMode": billing_mode,
                             "KeySchema": keys(partition_key, sort_key),
                             "GlobalSecondaryIndexes": []}
                if time_to_live_attribute:
                    rec.props["TimeToLiveSpecification"] = {
                        "AttributeName": time_to_live_attribute, "Enabled": True}

            def add_global_secondary_index(self, *, index_name: str, partition_key: Any,
                                           sort_key: Any = None, projection_type: str,
                                           non_key_attributes: list[str] | None = None) -> None:
                rec.attributes.update([partition_key] + ([sort_key] if sort_key else []))
                projection: dict[str, Any] = {"ProjectionType": projection_type}
                if non_key_attributes:
                    projection["NonKeyAttributes"] = list(non_key_attributes)
                rec.props["GlobalSecondaryIndexes"].append({
                    "IndexName": index_name, "KeySchema": keys(partition_key, sort_key),
                    "Projection": projection})

        ddb.Table = Table  # type: ignore[attr-defined]
        cdk = types.ModuleType("aws_cdk")
        cdk.RemovalPolicy = ns(RETAIN="RETAIN")  # type: ignore[attr-defined]
        cdk.aws_dynamodb = ddb  # type: ignore[attr-defined]
        return cdk, ddb


def from_cdk(code: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    rec = _Recorder()
    cdk, ddb = rec.module()
    monkeypatch.setitem(sys.modules, "aws_cdk", cdk)
    monkeypatch.setitem(sys.modules, "aws_cdk.aws_dynamodb", ddb)
    exec(compile(code, "<cdk>", "exec"), {"self": object()})
    # CloudFormation lists each key attribute once, in the order CDK met them
    rec.props["AttributeDefinitions"] = [{"AttributeName": n, "AttributeType": t}
                                         for n, t in rec.attributes.items()]
    return rec.props


def from_terraform(text: str) -> dict[str, Any]:
    import hcl2

    def unq(v: Any) -> Any:  # python-hcl2 keeps string literals' quotes
        return v.strip('"') if isinstance(v, str) else v

    (resource,) = hcl2.loads(text)["resource"]
    (kind, tables), = resource.items()
    assert unq(kind) == "aws_dynamodb_table"
    (table,) = tables.values()

    props: dict[str, Any] = {
        "BillingMode": unq(table["billing_mode"]),
        "AttributeDefinitions": [{"AttributeName": unq(a["name"]), "AttributeType": unq(a["type"])}
                                 for a in table["attribute"]],
        "KeySchema": tabledef._cfn_keys(unq(table["hash_key"]), unq(table.get("range_key"))),
        "GlobalSecondaryIndexes": [],
    }
    for g in table.get("global_secondary_index", []):
        projection: dict[str, Any] = {"ProjectionType": unq(g["projection_type"])}
        if g.get("non_key_attributes"):
            projection["NonKeyAttributes"] = [unq(n) for n in g["non_key_attributes"]]
        props["GlobalSecondaryIndexes"].append({
            "IndexName": unq(g["name"]),
            "KeySchema": tabledef._cfn_keys(unq(g["hash_key"]), unq(g.get("range_key"))),
            "Projection": projection})
    for ttl in table.get("ttl", []):
        props["TimeToLiveSpecification"] = {"AttributeName": unq(ttl["attribute_name"]),
                                            "Enabled": ttl["enabled"] in (True, "true")}
    return props


def parsed(fmt: str, definition: TableDefinition, monkeypatch: pytest.MonkeyPatch
           ) -> dict[str, Any]:
    text = tabledef.render(fmt, definition)
    if fmt == "sam":
        return schema_part(from_sam(text))
    if fmt == "cdk":
        return schema_part(from_cdk(text, monkeypatch))
    return schema_part(from_terraform(text))


@pytest.mark.parametrize("fmt", ["sam", "cdk", "terraform"])
def test_each_rendering_says_exactly_what_the_definition_says(
        fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    want = tabledef.cloudformation_properties(DEFINITION)
    assert parsed(fmt, DEFINITION, monkeypatch) == want
    # and the comparison sees a change in a projection (it can fail)
    assert parsed(fmt, mutated(), monkeypatch) != want
    assert parsed(fmt, mutated(), monkeypatch) == tabledef.cloudformation_properties(mutated())


def test_the_json_rendering_is_the_definition() -> None:
    import json

    data = json.loads(tabledef.render("json"))
    assert data["attributes"] == dict(DEFINITION.attributes)
    assert [i["name"] for i in data["indexes"]] == [i.name for i in DEFINITION.indexes]
    assert data == DEFINITION.to_dict() | {"indexes": [
        {**i, "non_key_attributes": list(i["non_key_attributes"])}
        for i in DEFINITION.to_dict()["indexes"]]}


def test_terraform_takes_the_table_name() -> None:
    text = tabledef.render("terraform", table_name="orders-jobs")
    assert '  name         = "orders-jobs"\n' in text


def test_an_index_without_sort_key_or_projection_list_renders_in_every_format(
        monkeypatch: pytest.MonkeyPatch) -> None:
    simple = replace(DEFINITION, attributes=(("pk", "S"), ("sk", "S"), ("lk", "S")),
                     indexes=(Index("all", "lk", None, "ALL"),))
    for fmt in ("sam", "cdk", "terraform"):
        assert parsed(fmt, simple, monkeypatch) == tabledef.cloudformation_properties(simple)


# -- docs/embedding.md and template.yaml show what the code renders ------------------------------

FENCE = re.compile(r"^```(\w+) table-definition=(\w+)\n(.*?)^```", re.M | re.S)


def test_the_embedding_guide_shows_exactly_what_the_renderers_print() -> None:
    text = (ROOT / "docs/embedding.md").read_text(encoding="utf-8")
    shown = {fmt: block for _, fmt, block in FENCE.findall(text)}
    assert set(shown) == {"sam", "cdk", "terraform"}
    for fmt, block in shown.items():
        assert block == tabledef.render(fmt), (
            f"docs/embedding.md's {fmt} table differs from the schema: replace the block with "
            f"the output of `jobstate table-definition --format {fmt}`")


def test_the_template_table_is_the_definition() -> None:
    tpl = yaml.load((ROOT / "template.yaml").read_text(), Loader=_CfnLoader)
    tables = [r for r in tpl["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    assert len(tables) == 1
    assert schema_part(tables[0]["Properties"]) == tabledef.cloudformation_properties(
        DEFINITION), ("template.yaml's Table differs from the schema: take its keys, indexes "
                      "and TTL from `jobstate table-definition --format sam`")


def test_the_cli_prints_each_format(capsys: pytest.CaptureFixture[str]) -> None:
    from jobstate.cli import main

    for fmt in tabledef.FORMATS:
        assert main(["table-definition", "--format", fmt]) == 0
        assert capsys.readouterr().out == tabledef.render(fmt)
