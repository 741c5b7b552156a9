"""Do the template's IAM policies allow every AWS call each handler really makes?

moto checks no permissions, so a handler can pass every test and still be denied in
AWS. `covers("StatusApiFunction")` is a module fixture for a handler's test file: while
its tests run, every botocore call made *by handler code* (a frame in `handlers/`, or
`App.handler`/`App.run_step`, which the drivers call for the workers) is recorded as the
IAM action and resource AWS would authorise; at the end of the module each one must be
allowed by that function's role in the transformed template.

IAM facts encoded here: a transaction is authorised item by item (there is no
`dynamodb:TransactWriteItems` action); a Query/Scan on an index needs the index ARN;
`GetObject`/`HeadObject` with a `VersionId` need `s3:GetObjectVersion`; without
`s3:ListBucket` a missing key answers 403, not 404, so a handler that tells a deleted
object by `NoSuchKey` needs it on the bucket.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import template_check
from botocore.client import BaseClient

HANDLERS_DIR = str(Path(__file__).resolve().parents[1] / "handlers")
ACCOUNT, REGION, PARTITION, STACK = "123456789012", "us-east-1", "aws", "stack"
TABLE_ARN = f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/jobs"
BUCKET = "uploads"  # the bucket of tests/test_handlers_s3.py, as the SourceBucket

Need = tuple[str, str]  # (IAM action, resource ARN)

_TRANSACT = {"Put": "dynamodb:PutItem", "Update": "dynamodb:UpdateItem",
             "Delete": "dynamodb:DeleteItem", "ConditionCheck": "dynamodb:ConditionCheckItem"}
_UNAUTHORISED = {"DescribeTable", "CreateTable", "UpdateTimeToLive", "DescribeTimeToLive"}


def needs_of(service: str, operation: str, params: dict[str, Any]) -> list[Need]:
    """The (action, resource) pairs IAM checks for one API call."""
    if service == "dynamodb":
        if operation == "TransactWriteItems":
            return [(_TRANSACT[kind], TABLE_ARN) for item in params["TransactItems"]
                    for kind in item]
        if operation in _UNAUTHORISED:
            return []  # table management: the tests' setup, never the handlers'
        arn = TABLE_ARN + (f"/index/{params['IndexName']}" if params.get("IndexName") else "")
        return [(f"dynamodb:{operation}", arn)]
    if service == "s3":
        obj = f"arn:{PARTITION}:s3:::{params.get('Bucket')}/{params.get('Key', '')}"
        bucket = f"arn:{PARTITION}:s3:::{params.get('Bucket')}"
        if operation in ("GetObject", "HeadObject"):
            action = "s3:GetObjectVersion" if params.get("VersionId") else "s3:GetObject"
            return [(action, obj)]
        if operation == "PutObject":
            return [("s3:PutObject", obj)]
        if operation in ("ListObjects", "ListObjectsV2", "ListObjectVersions"):
            return [("s3:ListBucket", bucket)]
        return [(f"s3:{operation}", obj)]
    if service == "lambda" and operation == "Invoke":
        name = params["FunctionName"]
        arn = name if name.startswith("arn:") else (
            f"arn:{PARTITION}:lambda:{REGION}:{ACCOUNT}:function:{name}")
        return [("lambda:InvokeFunction", arn)]
    if service in ("ses", "sesv2") and operation in ("SendEmail", "SendRawEmail"):
        return [(f"ses:{operation}", params.get("FromEmailAddressIdentityArn") or "*")]
    return [(f"{service}:{operation}", "*")]


def _render(value: Any) -> str:
    """A policy Resource of the transformed template as a concrete ARN pattern."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        target = value["Fn::GetAtt"]
        if list(target) == ["Table", "Arn"]:
            return TABLE_ARN
        return f"<{'.'.join(target)}>"
    if isinstance(value, dict) and "Fn::Sub" in value:
        text = value["Fn::Sub"]
        text = text if isinstance(text, str) else text[0]
        for k, v in {"${Table.Arn}": TABLE_ARN, "${AWS::Partition}": PARTITION,
                     "${AWS::Region}": REGION, "${AWS::AccountId}": ACCOUNT,
                     "${AWS::StackName}": STACK, "${SourceBucket}": BUCKET}.items():
            text = text.replace(k, v)
        return text
    if isinstance(value, dict) and "Ref" in value:
        return "*" if value["Ref"] == "SenderIdentityArn" else f"<{value['Ref']}>"
    return json.dumps(value)


def denied(cfn: dict[str, Any], function_id: str, needs: set[Need]) -> list[str]:
    """The needs that no Allow statement of the function's role grants."""
    grants = []
    for st in template_check.role_statements(cfn, function_id):
        if st.get("Effect") != "Allow":
            continue
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        res = st.get("Resource", [])
        res = res if isinstance(res, list) else [res]
        grants.append((actions, [_render(r) for r in res]))
    out = []
    for action, arn in sorted(needs):
        if not any(any(fnmatch.fnmatchcase(action, a) for a in actions)
                   and any(fnmatch.fnmatchcase(arn, r) for r in resources)
                   for actions, resources in grants):
            out.append(f"{action} on {arn}")
    return out


def _handler_frame() -> bool:
    frame = sys._getframe(2)
    for _ in range(80):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_filename.startswith(HANDLERS_DIR) or (
            code.co_filename.endswith("jobstate/app.py")
            and code.co_name in ("handler", "run_step")
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class Recorder:
    """Records the IAM needs of every botocore call made from handler code."""

    def __init__(self) -> None:
        self.needs: set[Need] = set()
        self.calls = 0

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real: Callable[..., Any] = BaseClient._make_api_call

        def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
            if _handler_frame():
                self.calls += 1
                self.needs.update(needs_of(client.meta.service_model.service_name,
                                           operation, params))
            return real(client, operation, params)

        monkeypatch.setattr(BaseClient, "_make_api_call", recording)


def covers(function_id: str, *, also: tuple[Need, ...] = ()) -> Callable[..., Any]:
    """A module-scoped autouse fixture asserting the function's role allows its calls.

    `also`: needs the tests cannot show (e.g. s3:ListBucket, which only changes what AWS
    answers for a missing key).
    """

    @pytest.fixture(scope="module", autouse=True)
    def _iam_coverage() -> Iterator[Recorder]:
        recorder = Recorder()
        with pytest.MonkeyPatch.context() as mp:
            recorder.install(mp)
            yield recorder
        assert recorder.calls > 0, "no handler call was recorded: is the fixture wired?"
        missing = denied(template_check.transform(), function_id,
                         recorder.needs | set(also))
        assert not missing, (f"template.yaml does not let {function_id} do what its "
                             f"handler does: {missing}")

    return _iam_coverage
