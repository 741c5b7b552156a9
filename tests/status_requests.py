"""Function URL requests (payload format 2.0) for handlers.status_api, as Lambda builds
them for an IAM-authenticated caller: the identity is in requestContext.authorizer.iam."""

from __future__ import annotations

import base64
import json
from typing import Any

ACCOUNT = "111122223333"
OPERATOR = f"arn:aws:sts::{ACCOUNT}:assumed-role/jobstate-operators/alice"
# Everything, for OPERATOR: the tests of what the API does (not of who may do it).
OPERATOR_GRANTS = json.dumps([{"principal": f"arn:aws:sts::{ACCOUNT}:assumed-role/"
                                            "jobstate-operators/*",
                               "read": ["*"], "list": ["*"], "cancel": ["*"]}])


def url_event(method: str, path: str, *, caller: str | None = OPERATOR,
              query: dict[str, str] | None = None, body: Any = None, b64: bool = False,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {"http": {"method": method, "path": path}}
    if caller is not None:
        ctx["authorizer"] = {"iam": {"accessKey": "ASIAEXAMPLE", "accountId": ACCOUNT,
                                     "callerId": "AROAEXAMPLE:alice", "userArn": caller,
                                     "userId": "AROAEXAMPLE:alice"}}
    event: dict[str, Any] = {"version": "2.0", "rawPath": path, "rawQueryString": "",
                             "headers": headers or {}, "requestContext": ctx}
    if query is not None:
        event["queryStringParameters"] = query
    if body is not None:
        raw = body if isinstance(body, str) else json.dumps(body)
        event["body"] = base64.b64encode(raw.encode()).decode() if b64 else raw
        event["isBase64Encoded"] = b64
    return event
