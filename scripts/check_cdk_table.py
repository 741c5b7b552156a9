"""Synthesise `jobstate table-definition --format cdk` with the real aws-cdk-lib and check
the CloudFormation it makes is the schema's table (keys, indexes, projections, TTL).

tests/test_tabledef.py checks what the CDK snippet says with a stand-in for aws_cdk; this
checks that the real library accepts it (construct names, arguments). Run by .ci/run in
the deploy-tools venv: python scripts/check_cdk_table.py (needs aws-cdk-lib and node).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobstate import tabledef

SCHEMA_KEYS = ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes",
               "TimeToLiveSpecification")


def synth(code: str) -> dict[str, Any]:
    import aws_cdk as cdk

    class JobStack(cdk.Stack):
        def __init__(self, scope: Any, cid: str) -> None:
            super().__init__(scope, cid)
            exec(compile(code, "<table-definition --format cdk>", "exec"), {"self": self})

    with tempfile.TemporaryDirectory() as out:
        app = cdk.App(outdir=out)
        JobStack(app, "Jobs")
        template: dict[str, Any] = app.synth().get_stack_by_name("Jobs").template
    (table,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::DynamoDB::Table"]
    return table


def main() -> int:
    table = synth(tabledef.render("cdk"))
    want = tabledef.cloudformation_properties(tabledef.table_definition())
    got = {k: table["Properties"].get(k) for k in SCHEMA_KEYS}
    if got != want:
        print(f"CDK made a different table:\n got {got}\nwant {want}", file=sys.stderr)
        return 1
    print(f"cdk: the synthesised table is the schema's ({len(want['GlobalSecondaryIndexes'])} "
          f"GSIs, TTL on {want['TimeToLiveSpecification']['AttributeName']}); "
          f"DeletionPolicy {table.get('DeletionPolicy')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
