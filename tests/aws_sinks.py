"""Real botocore clients whose requests never leave the process.

A `Sink("lambda", Invoke=lambda params: {...})` is a botocore client: each call goes
through `BaseClient._make_api_call` (so tests/iam_coverage.py records it with its IAM
action and resource, as it would be authorised in AWS) and is answered by the given
function instead of the network. `calls` keeps (operation, params) in order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import botocore.session
from botocore.awsrequest import AWSResponse

Answer = Callable[[dict[str, Any]], dict[str, Any]]


class Sink:
    def __init__(self, service: str, **answers: Answer) -> None:
        self.client: Any = botocore.session.get_session().create_client(
            service, region_name="us-east-1", aws_access_key_id="testing",
            aws_secret_access_key="testing")
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._answers = answers
        self._params: dict[str, Any] = {}
        events = self.client.meta.events
        events.register("before-parameter-build", self._keep)
        events.register("before-call", self._answer)

    def _keep(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self._params = dict(params)

    def _answer(self, model: Any, **_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        op = model.name
        if op not in self._answers:
            raise AssertionError(f"{op} was not expected by this sink")
        self.calls.append((op, self._params))
        parsed = self._answers[op](self._params)
        status = int(parsed.get("ResponseMetadata", {}).get("HTTPStatusCode", 200))
        return AWSResponse("https://sink.invalid/", status, {}, None), parsed


class LambdaSink(Sink):
    """Lambda that accepts every asynchronous Invoke; `invokes` is (function, event)."""

    def __init__(self) -> None:
        super().__init__("lambda", Invoke=lambda p: {
            "StatusCode": 202, "ResponseMetadata": {"HTTPStatusCode": 202}})

    @property
    def invokes(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for _, p in self.calls:
            assert p["InvocationType"] == "Event"
            payload = p["Payload"]
            out.append((p["FunctionName"], json.loads(payload if isinstance(payload, str | bytes)
                                                      else payload.read())))
        return out

    def clear(self) -> None:
        self.calls.clear()
