"""The SAM template's table matches the schema the library creates (no drift)."""

from __future__ import annotations

from pathlib import Path

import yaml

from jobstate import schema

ROOT = Path(__file__).resolve().parent.parent


class _Loader(yaml.SafeLoader):
    pass


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_Loader.add_multi_constructor("!", _any_tag)


def test_template_table_matches_schema() -> None:
    tpl = yaml.load((ROOT / "template.yaml").read_text(), Loader=_Loader)
    table = next(r for r in tpl["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table")
    props = table["Properties"]
    gsis = {g["IndexName"]: g for g in props["GlobalSecondaryIndexes"]}
    assert set(gsis) == {schema.LIST_INDEX, schema.DUE_INDEX}
    assert gsis[schema.LIST_INDEX]["Projection"]["ProjectionType"] == "KEYS_ONLY"
    due = gsis[schema.DUE_INDEX]["Projection"]
    assert due["ProjectionType"] == "INCLUDE"
    assert sorted(due["NonKeyAttributes"]) == sorted(schema.DUE_INCLUDED)
    keys = {(g["IndexName"], k["AttributeName"], k["KeyType"])
            for g in gsis.values() for k in g["KeySchema"]}
    assert keys == {(schema.LIST_INDEX, "lk", "HASH"), (schema.LIST_INDEX, "ls", "RANGE"),
                    (schema.DUE_INDEX, "dk", "HASH"), (schema.DUE_INDEX, "due_at", "RANGE")}
    assert props["TimeToLiveSpecification"]["AttributeName"] == "expires_at"
