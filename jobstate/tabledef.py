"""The job table as infrastructure code: SAM/CloudFormation, CDK (Python) and Terraform.

All three are rendered from `table_definition()`, which reads the PynamoDB models of
schema.py (the same declaration `JobStore.create_table` uses), so a stack defined with
any of them gets exactly the table the library expects. `jobstate table-definition
--format sam|cdk|terraform|json` prints them; tests/test_tabledef.py checks that
docs/embedding.md and template.yaml show what this module renders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from . import schema

FORMATS = ("sam", "cdk", "terraform", "json")
LOGICAL_ID = "JobTable"  # the SAM/CDK construct id


@dataclass(frozen=True)
class Index:
    name: str
    hash_key: str
    range_key: str | None
    projection: str  # ALL, KEYS_ONLY or INCLUDE
    non_key_attributes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableDefinition:
    """What the table must have; names and types only, no deployment choices."""

    attributes: tuple[tuple[str, str], ...]  # (name, "S" | "N" | "B") of every key attribute
    hash_key: str
    range_key: str | None
    indexes: tuple[Index, ...]
    ttl_attribute: str | None
    billing_mode: str = "PAY_PER_REQUEST"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["attributes"] = dict(self.attributes)
        return out

    def attribute_type(self, name: str) -> str:
        return dict(self.attributes)[name]


def table_definition() -> TableDefinition:
    """The table `JobStore.create_table` creates, read from the PynamoDB models."""
    job = schema.build_models("jobstate", None, "us-east-1").job
    spec = job._get_schema()
    keys = {k["KeyType"]: k["AttributeName"] for k in spec["key_schema"]}
    indexes = []
    for gsi in spec["global_secondary_indexes"]:
        gkeys = {k["KeyType"]: k["AttributeName"] for k in gsi["key_schema"]}
        projection = gsi["projection"]
        indexes.append(Index(gsi["index_name"], gkeys["HASH"], gkeys.get("RANGE"),
                             projection["ProjectionType"],
                             tuple(projection.get("NonKeyAttributes", ()))))
    ttl = [a.attr_name for a in job.get_attributes().values()
           if type(a).__name__ == "TTLAttribute"]
    return TableDefinition(
        attributes=tuple((a["AttributeName"], a["AttributeType"])
                         for a in spec["attribute_definitions"]),
        hash_key=keys["HASH"], range_key=keys.get("RANGE"), indexes=tuple(indexes),
        ttl_attribute=ttl[0] if ttl else None)


def render(fmt: str, definition: TableDefinition | None = None, *,
           table_name: str = "jobstate") -> str:
    """The table in one of FORMATS (`table_name` is used where the format needs a name)."""
    d = definition or table_definition()
    if fmt == "sam":
        return sam(d)
    if fmt == "cdk":
        return cdk(d)
    if fmt == "terraform":
        return terraform(d, table_name)
    if fmt == "json":
        return json.dumps(d.to_dict(), indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


# -- SAM / CloudFormation ---------------------------------------------------------------------


def cloudformation_properties(d: TableDefinition) -> dict[str, Any]:
    """The schema part of an AWS::DynamoDB::Table's Properties (what tests compare)."""
    props: dict[str, Any] = {
        "BillingMode": d.billing_mode,
        "AttributeDefinitions": [{"AttributeName": n, "AttributeType": t}
                                 for n, t in d.attributes],
        "KeySchema": _cfn_keys(d.hash_key, d.range_key),
        "GlobalSecondaryIndexes": [
            {"IndexName": i.name, "KeySchema": _cfn_keys(i.hash_key, i.range_key),
             "Projection": {"ProjectionType": i.projection,
                            **({"NonKeyAttributes": list(i.non_key_attributes)}
                               if i.non_key_attributes else {})}}
            for i in d.indexes],
    }
    if d.ttl_attribute:
        props["TimeToLiveSpecification"] = {"AttributeName": d.ttl_attribute, "Enabled": True}
    return props


def _cfn_keys(hash_key: str, range_key: str | None) -> list[dict[str, str]]:
    keys = [{"AttributeName": hash_key, "KeyType": "HASH"}]
    if range_key:
        keys.append({"AttributeName": range_key, "KeyType": "RANGE"})
    return keys


def sam(d: TableDefinition) -> str:
    """A `Resources:` entry for a SAM or CloudFormation template (two-space indented)."""
    out = [f"  {LOGICAL_ID}:",
           "    Type: AWS::DynamoDB::Table",
           "    DeletionPolicy: Retain",
           "    UpdateReplacePolicy: Retain",
           "    Properties:",
           f"      BillingMode: {d.billing_mode}",
           "      AttributeDefinitions:"]
    out += [f"        - {{AttributeName: {n}, AttributeType: {t}}}" for n, t in d.attributes]
    out.append("      KeySchema:")
    out += _sam_keys(d.hash_key, d.range_key, "        ")
    out.append("      GlobalSecondaryIndexes:")
    for i in d.indexes:
        out += [f"        - IndexName: {i.name}", "          KeySchema:"]
        out += _sam_keys(i.hash_key, i.range_key, "            ")
        out += ["          Projection:", f"            ProjectionType: {i.projection}"]
        if i.non_key_attributes:
            out.append(f"            NonKeyAttributes: [{', '.join(i.non_key_attributes)}]")
    if d.ttl_attribute:
        out += ["      TimeToLiveSpecification:",
                f"        AttributeName: {d.ttl_attribute}",
                "        Enabled: true"]
    out += ["      PointInTimeRecoverySpecification:",
            "        PointInTimeRecoveryEnabled: true"]
    return "\n".join(out) + "\n"


def _sam_keys(hash_key: str, range_key: str | None, indent: str) -> list[str]:
    return [f"{indent}- {{AttributeName: {k['AttributeName']}, KeyType: {k['KeyType']}}}"
            for k in _cfn_keys(hash_key, range_key)]


# -- CDK (Python) -------------------------------------------------------------------------------

_CDK_TYPES = {"S": "STRING", "N": "NUMBER", "B": "BINARY"}


def cdk(d: TableDefinition) -> str:
    """Python for a CDK v2 `Stack.__init__` (`self` is the stack)."""

    def attr(name: str) -> str:
        return (f'dynamodb.Attribute(name="{name}", '
                f"type=dynamodb.AttributeType.{_CDK_TYPES[d.attribute_type(name)]})")

    out = ["from aws_cdk import RemovalPolicy",
           "from aws_cdk import aws_dynamodb as dynamodb",
           "",
           "job_table = dynamodb.Table(",
           f'    self, "{LOGICAL_ID}",',
           f"    partition_key={attr(d.hash_key)},"]
    if d.range_key:
        out.append(f"    sort_key={attr(d.range_key)},")
    out.append(f"    billing_mode=dynamodb.BillingMode.{d.billing_mode},")
    if d.ttl_attribute:
        out.append(f'    time_to_live_attribute="{d.ttl_attribute}",')
    out += ["    point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(",
            "        point_in_time_recovery_enabled=True),",
            "    removal_policy=RemovalPolicy.RETAIN,",
            ")"]
    for i in d.indexes:
        out += ["job_table.add_global_secondary_index(",
                f'    index_name="{i.name}",',
                f"    partition_key={attr(i.hash_key)},"]
        if i.range_key:
            out.append(f"    sort_key={attr(i.range_key)},")
        out.append(f"    projection_type=dynamodb.ProjectionType.{i.projection},")
        if i.non_key_attributes:
            out += ["    non_key_attributes=[", *_wrapped(i.non_key_attributes, "        "),
                    "    ],"]
        out.append(")")
    return "\n".join(out) + "\n"


# -- Terraform (AWS provider) ---------------------------------------------------------------------


def terraform(d: TableDefinition, table_name: str = "jobstate") -> str:
    """An `aws_dynamodb_table` resource (hashicorp/aws provider)."""
    top = [("name", json.dumps(table_name)), ("billing_mode", f'"{d.billing_mode}"'),
           ("hash_key", f'"{d.hash_key}"')]
    if d.range_key:
        top.append(("range_key", f'"{d.range_key}"'))
    out = ['resource "aws_dynamodb_table" "jobstate" {', *_hcl_args(top, "  "), ""]
    for name, kind in d.attributes:
        out += ["  attribute {", *_hcl_args([("name", f'"{name}"'), ("type", f'"{kind}"')],
                                             "    "), "  }"]
    for i in d.indexes:
        args = [("name", f'"{i.name}"'), ("hash_key", f'"{i.hash_key}"')]
        if i.range_key:
            args.append(("range_key", f'"{i.range_key}"'))
        args.append(("projection_type", f'"{i.projection}"'))
        if i.non_key_attributes:
            args.append(("non_key_attributes", "["))
        out += ["", "  global_secondary_index {", *_hcl_args(args, "    ")]
        if i.non_key_attributes:
            out += [*_wrapped(i.non_key_attributes, "      "), "    ]"]
        out.append("  }")
    if d.ttl_attribute:
        out += ["", "  ttl {", *_hcl_args([("attribute_name", f'"{d.ttl_attribute}"'),
                                          ("enabled", "true")], "    "), "  }"]
    out += ["", "  point_in_time_recovery {", "    enabled = true", "  }",
            "", "  lifecycle {", "    prevent_destroy = true", "  }", "}"]
    return "\n".join(out) + "\n"


def _hcl_args(args: list[tuple[str, str]], indent: str) -> list[str]:
    width = max(len(k) for k, _ in args)
    return [f"{indent}{k.ljust(width)} = {v}" for k, v in args]


def _wrapped(names: tuple[str, ...], indent: str, width: int = 88) -> list[str]:
    """Quoted, comma-separated names over as many lines as `width` needs."""
    lines, line = [], ""
    for item in (f'"{n}",' for n in names):
        if line and len(indent) + len(line) + 1 + len(item) > width:
            lines.append(indent + line)
            line = item
        else:
            line = f"{line} {item}" if line else item
    return [*lines, indent + line]
