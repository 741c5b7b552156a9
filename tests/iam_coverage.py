"""Do the template's IAM policies allow what each function's code can do, and no more?

moto and DynamoDB Local check no permissions, so a handler can pass every test and still
be denied in AWS (issue 21: the batch mailer's role lacked dynamodb:ConditionCheckItem,
so the withdrawal of a cancelled spawn was denied and cancelled children sent mail).
Three sources of truth, cross-checked:

- **static** (`tests/iam_static.py`): every DynamoDB/KMS request (action and table/index)
  and every other AWS action the code reachable from the function's `Handler` can make,
  derived from the code;
- **dynamic** (`covers(...)`): every botocore call the handler tests make from handler
  code, with its real resource and partition keys, and the line that made it;
- **the template**: each function's role after the SAM transform.

`covers("StatusApiFunction")` is a module fixture for a handler's test file; at the end of
the module it asserts that the role allows every recorded call (conditions evaluated
against the call's keys), that every recorded call came from a site the static analysis
found and needs nothing it did not derive (so the analysis cannot silently miss a call
site), and that every granted resource of a service the analysis types only by action
(Lambda, S3, SES) was used by some call. `tests/test_template.py` checks the static needs
against every role both ways (all allowed; nothing granted that no code path needs).

IAM facts encoded here: a transaction is authorised item by item (there is no
`dynamodb:TransactWriteItems` action); a Query/Scan on an index needs the index ARN;
`dynamodb:LeadingKeys` holds the partition key values a request touches (ForAllValues
over an empty set is true, so a Scan passes such a condition); `GetObject`/`HeadObject`
with a `VersionId` need `s3:GetObjectVersion`; without `s3:ListBucket` a missing key
answers 403, not 404.
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import iam_static
import pytest
import template_check
from botocore.client import BaseClient

REPO = Path(__file__).resolve().parents[1]
OUR_CODE = (str(REPO / "jobstate") + "/", str(REPO / "handlers") + "/")
HANDLERS_DIR = str(REPO / "handlers")  # (a prefix: the default entry is any handler)
ACCOUNT, REGION, PARTITION, STACK = "123456789012", "us-east-1", "aws", "stack"
TABLE_ARN = f"arn:{PARTITION}:dynamodb:{REGION}:{ACCOUNT}:table/jobs"
KEY_ARN = f"arn:{PARTITION}:kms:{REGION}:{ACCOUNT}:key/11111111-2222-3333-4444-555555555555"
BUCKET = "uploads"  # the bucket of tests/test_handlers_s3.py, as the SourceBucket
TABLE_NAME = "jobs"  # every table a test uses stands for the stack's one table

Need = tuple[str, str]  # (IAM action, resource ARN; "*" when only the action is known)

# Services whose needs the static analysis derives with their resources (DynamoDB tables
# and indexes, the KMS key): their grants are checked resource by resource statically.
# For the others it knows the action only; their resources come from the recorded calls.
STATIC_RESOURCES = ("dynamodb:", "kms:")

# Grants that no request of the code can show a need for, and why each is needed anyway.
# (function logical id or "*", IAM action, resource as rendered by _render) -> reason.
NEEDED_ANYWAY: dict[tuple[str, str, str], str] = {
    ("*", "sqs:SendMessage", "<OnFailureQueue.Arn>"):
        "Lambda itself sends a failed asynchronous event to the on-failure destination "
        "with the function's role (SAM adds this statement for EventInvokeConfig)",
    ("FileProcessorFunction", "s3:ListBucket", f"arn:{PARTITION}:s3:::{BUCKET}"):
        "no request lists the bucket, but without it S3 answers 403 instead of 404 for a "
        "deleted object, which the handler tells apart by NoSuchKey",
}

_TRANSACT = iam_static.TRANSACT_WRITE_KINDS
_UNAUTHORISED = {"DescribeTable", "CreateTable", "UpdateTimeToLive", "DescribeTimeToLive"}


@dataclass(frozen=True)
class Request:
    """One IAM authorisation a recorded call needed."""

    action: str
    resource: str
    keys: tuple[str, ...] | None = None  # partition key values (dynamodb:LeadingKeys)
    context: tuple[tuple[str, str], ...] = ()  # kms:EncryptionContext pairs

    @property
    def need(self) -> Need:
        return (self.action, self.resource)


# -- what one botocore call needs ---------------------------------------------------------


def _pk(key: Any) -> str | None:
    value = (key or {}).get("pk") if isinstance(key, dict) else None
    return value.get("S") if isinstance(value, dict) else None


def _query_keys(params: dict[str, Any]) -> tuple[str, ...]:
    """The partition key value a Query's key condition names ("<name> = :v AND ...")."""
    expr = str(params.get("KeyConditionExpression", ""))
    first = expr.split(" AND ")[0].split("=")
    if len(first) != 2:
        return ()
    value = (params.get("ExpressionAttributeValues") or {}).get(first[1].strip(), {})
    return (value["S"],) if isinstance(value, dict) and "S" in value else ()


def requests_of(service: str, operation: str, params: dict[str, Any]) -> list[Request]:
    """The IAM authorisations (action, resource, keys) AWS checks for one API call."""
    if service == "dynamodb":
        if operation == "TransactWriteItems":
            out = []
            for item in params["TransactItems"]:
                for kind, body in item.items():
                    pk = _pk(body.get("Key") or body.get("Item"))
                    out.append(Request(_TRANSACT[kind], TABLE_ARN, (pk,) if pk else ()))
            return out
        if operation in _UNAUTHORISED:
            return []  # table management: the tests' setup, never the handlers'
        if operation == "BatchGetItem":
            keys = tuple(k for spec in params["RequestItems"].values()
                         for key in spec["Keys"] if (k := _pk(key)) is not None)
            return [Request("dynamodb:BatchGetItem", TABLE_ARN, keys)]
        arn = TABLE_ARN + (f"/index/{params['IndexName']}" if params.get("IndexName") else "")
        if operation == "Query":
            keys = _query_keys(params)
        elif operation == "Scan":
            keys = ()
        else:
            pk = _pk(params.get("Key") or params.get("Item"))
            keys = (pk,) if pk else ()
        return [Request(f"dynamodb:{operation}", arn, keys)]
    if service == "kms":
        # Every key a test creates stands for the stack's KmsKeyArn, every table for its
        # table (as with TABLE_ARN).
        ctx = {k: (TABLE_NAME if k == "jobstate:table" else v)
               for k, v in (params.get("EncryptionContext") or {}).items()}
        return [Request(f"kms:{operation}", KEY_ARN, None, tuple(sorted(ctx.items())))]
    return [Request(a, r) for a, r in needs_of(service, operation, params)]


def needs_of(service: str, operation: str, params: dict[str, Any]) -> list[Need]:
    """The (action, resource) pairs IAM checks for one API call."""
    if service in ("dynamodb", "kms"):
        return [r.need for r in requests_of(service, operation, params)]
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
        raw = "Raw" in (params.get("Content") or {})
        return [("ses:SendRawEmail" if raw else "ses:SendEmail",
                 params.get("FromEmailAddressIdentityArn") or "*")]
    return [(f"{service}:{operation}", "*")]


# -- the template's grants ------------------------------------------------------------------


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
                     "${AWS::StackName}": STACK, "${SourceBucket}": BUCKET,
                     "${KmsKeyArn}": KEY_ARN}.items():
            text = text.replace(k, v)
        return text
    if isinstance(value, dict) and "Ref" in value:
        return {"SenderIdentityArn": "*", "KmsKeyArn": KEY_ARN, "Table": TABLE_NAME}.get(
            value["Ref"], f"<{value['Ref']}>")
    return json.dumps(value)


def _render_condition(condition: dict[str, Any]) -> str:
    rendered = {op: {key: [_render(v) for v in (want if isinstance(want, list) else [want])]
                     for key, want in body.items()}
                for op, body in condition.items()}
    return json.dumps(rendered, sort_keys=True)


@dataclass(frozen=True)
class Grant:
    sid: str
    effect: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]
    condition: str  # JSON (hashable); "{}" when none

    def matches(self, action: str, resource: str) -> bool:
        return (any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in self.actions)
                and (resource == "*" or any(fnmatch.fnmatchcase(resource, r)
                                            for r in self.resources)))


def grants(cfn: dict[str, Any], function_id: str) -> list[Grant]:
    out = []
    for st in template_check.role_statements(cfn, function_id):
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        res = st.get("Resource", [])
        res = res if isinstance(res, list) else [res]
        out.append(Grant(st.get("Sid", "?"), st.get("Effect", "Allow"), tuple(actions),
                         tuple(_render(r) for r in res),
                         _render_condition(st.get("Condition") or {})))
    return out


class UnsupportedCondition(AssertionError):
    """A policy condition this checker cannot evaluate (so it must not guess)."""


def _condition_holds(condition: str, request: Request | None) -> bool:
    """Whether a statement's Condition holds for `request` (None: a static need, whose
    keys are unknown; a condition is then taken to be satisfiable)."""
    for op, body in json.loads(condition).items():
        for key, want in body.items():
            patterns = want if isinstance(want, list) else [want]
            if request is None:
                if op not in ("ForAllValues:StringLike", "ForAllValues:StringEquals",
                              "StringEquals"):
                    raise UnsupportedCondition(f"{op} {key}")
                continue
            if key == "dynamodb:LeadingKeys" and op.startswith("ForAllValues:String"):
                like = op.endswith("Like")
                values = request.keys or ()
                if not all(any(fnmatch.fnmatchcase(v, p) if like else v == p
                               for p in patterns) for v in values):
                    return False
            elif key.startswith("kms:EncryptionContext:") and op == "StringEquals":
                if dict(request.context).get(key.split(":", 2)[2]) not in patterns:
                    return False
            else:
                raise UnsupportedCondition(f"{op} {key}")
    return True


def allows(policy: list[Grant], action: str, resource: str,
           request: Request | None = None) -> bool:
    def hit(g: Grant) -> bool:
        return g.matches(action, resource) and _condition_holds(g.condition, request)

    if any(g.effect == "Deny" and hit(g) for g in policy):
        return False
    return any(g.effect == "Allow" and hit(g) for g in policy)


def denied(cfn: dict[str, Any], function_id: str, needs: set[Need] | set[Request]
           ) -> list[str]:
    """The needs (static pairs, or recorded requests with their keys) the role refuses."""
    policy = grants(cfn, function_id)
    out = []
    for n in sorted(needs, key=str):
        req = n if isinstance(n, Request) else None
        action, resource = req.need if req else cast(Need, n)
        if not allows(policy, action, resource, req):
            keys = f" (partition keys {list(req.keys)})" if req and req.keys else ""
            out.append(f"{action} on {resource}{keys}")
    return sorted(set(out))


# -- static needs, per function ---------------------------------------------------------------


def _concrete(need: iam_static.Need) -> Need:
    action, res = need
    if res == iam_static.TABLE:
        return action, TABLE_ARN
    if res.startswith("index/"):
        return action, f"{TABLE_ARN}/{res}"
    if res == "key":
        return action, KEY_ARN
    return action, res


def handler_of(cfn: dict[str, Any], function_id: str) -> str:
    handler = template_check.props(cfn, function_id).get("Handler")
    assert isinstance(handler, str), f"{function_id}: no Handler"
    return handler


def static_needs(cfn: dict[str, Any], function_id: str, *, kms: bool = False) -> set[Need]:
    """What the code reachable from the function's Handler can need (KMS only when the
    stack is deployed with a KmsKeyArn)."""
    return {_concrete(n) for n in iam_static.handler_needs(handler_of(cfn, function_id))
            if kms or not n[0].startswith("kms:")}


def _needed_anyway(function_id: str, action: str, resource: str) -> bool:
    return any(f in ("*", function_id) and a == action and r == resource
               for f, a, r in NEEDED_ANYWAY)


def unneeded(cfn: dict[str, Any], function_id: str, needs: set[Need], *,
             services: tuple[str, ...] | None = None) -> list[str]:
    """Grants (action on resource) that no need uses and NEEDED_ANYWAY does not explain.

    `needs` with resource "*" (an action the static analysis found without its resource)
    justify the action only; `services` limits the check to actions with these prefixes.
    """
    out = []
    for g in grants(cfn, function_id):
        if g.effect != "Allow":
            continue
        for action in g.actions:
            if services is not None and not action.startswith(services):
                continue
            for resource in g.resources:
                if _needed_anyway(function_id, action, resource):
                    continue
                used = any(fnmatch.fnmatchcase(a.lower(), action.lower())
                           and (r == "*" or fnmatch.fnmatchcase(r, resource))
                           for a, r in needs)
                if not used:
                    out.append(f"{g.sid}: {action} on {resource}")
    return out


def least_privilege(cfn: dict[str, Any], function_id: str, *, kms: bool = False
                    ) -> list[str]:
    """Grants no reachable code path needs: DynamoDB/KMS by resource, others by action."""
    needs = static_needs(cfn, function_id, kms=kms)
    problems = unneeded(cfn, function_id, needs, services=STATIC_RESOURCES)
    actions = {(a, "*") for a, _ in needs}
    others = [p for p in unneeded(cfn, function_id, actions)
              if not p.split(": ", 1)[1].startswith(STATIC_RESOURCES)]
    return problems + others


# -- recording the calls the handler tests make --------------------------------------------------


def _entry_frame(files: tuple[str, ...], app: bool) -> bool:
    """Whether the current call runs under the function's own entry point: a frame in its
    handler module, or (for a worker, whose handler is an App's) App.handler/run_step."""
    frame = sys._getframe(2)
    for _ in range(80):
        if frame is None:
            return False
        code = frame.f_code
        if code.co_filename.startswith(files) or (
            app and code.co_filename.endswith("jobstate/app.py")
            and code.co_name in ("handler", "run_step")
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def entry_of(cfn: dict[str, Any], function_id: str) -> tuple[tuple[str, ...], bool]:
    """(handler module file, runs App.handler) of a function of the template."""
    handler = handler_of(cfn, function_id)
    module = handler.rpartition(".")[0]
    path = str(REPO / Path(*module.split("."))) + ".py"
    return (path,), iam_static.program().reaches(handler, "jobstate.app.App.handler")


def call_site() -> tuple[str, int] | None:
    """(file, line) of the code that made the current botocore call: the innermost frame
    in jobstate/ or handlers/ outside a request primitive (JobStore.call)."""
    spans = iam_static.program().primitive_spans()
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        if path.startswith(OUR_CODE) and not any(
                p == path and lo <= frame.f_lineno <= hi for p, lo, hi in spans):
            return path, frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return None


class Recorder:
    """Records the IAM needs (and code sites) of every botocore call made under the
    function's entry point (`entry_of`)."""

    def __init__(self, entry: tuple[tuple[str, ...], bool] = ((HANDLERS_DIR,), True)) -> None:
        self.entry = entry
        self.requests: set[Request] = set()
        self.sites: dict[tuple[str, str, str, int], int] = {}  # (service, op, file, line)
        self.calls = 0

    @property
    def needs(self) -> set[Need]:
        return {r.need for r in self.requests}

    def observe(self, service: str, operation: str, params: dict[str, Any],
                site: tuple[str, int] | None = None) -> None:
        self.calls += 1
        self.requests.update(requests_of(service, operation, params))
        site = site or call_site()
        if site is not None:
            key = (service, operation, *site)
            self.sites[key] = self.sites.get(key, 0) + 1

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real: Callable[..., Any] = BaseClient._make_api_call

        def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
            if _entry_frame(*self.entry):
                self.observe(client.meta.service_model.service_name, operation, params)
            return real(client, operation, params)

        monkeypatch.setattr(BaseClient, "_make_api_call", recording)

    def unexplained_sites(self) -> list[str]:
        """Recorded calls from a line where the static analysis found no such request."""
        from botocore import xform_name

        sites = iam_static.program().sites()
        out = []
        for (service, op, path, line), n in sorted(self.sites.items()):
            if service not in iam_static.SERVICES:
                continue  # e.g. kms, called by the encryption library on our behalf
            snake = xform_name(op)
            if not any(s.path == path and s.line <= line <= s.end_line
                       and s.service == service and s.op == snake for s in sites):
                out.append(f"{service} {op} from {Path(path).relative_to(REPO)}:{line} "
                           f"({n} calls)")
        return out


def covers(function_id: str, *, also: tuple[Need, ...] = ()) -> Callable[..., Any]:
    """A module-scoped autouse fixture asserting the function's role allows its calls.

    `also`: needs the tests cannot show (prefer NEEDED_ANYWAY, which says why).
    """

    @pytest.fixture(scope="module", autouse=True)
    def _iam_coverage() -> Iterator[Recorder]:
        # The stack with every option on (a KMS key): what the role may grant at most.
        cfn = template_check.resolve_conditions(template_check.transform(),
                                                {"KmsKeyArn": KEY_ARN})
        recorder = Recorder(entry_of(cfn, function_id))
        with pytest.MonkeyPatch.context() as mp:
            recorder.install(mp)
            yield recorder
        assert recorder.calls > 0, "no handler call was recorded: is the fixture wired?"
        missing = denied(cfn, function_id, recorder.requests | {
            Request(a, r) for a, r in also})
        assert not missing, (f"template.yaml does not let {function_id} do what its "
                             f"handler does: {missing}")
        static = static_needs(cfn, function_id, kms=True)
        static_actions = {a for a, _ in static}
        unseen = sorted(f"{a} on {r}" for a, r in recorder.needs
                        if a.startswith("dynamodb:") and (a, r) not in static) + sorted(
            a for a, _ in recorder.needs if a not in static_actions)
        assert not unseen, (f"{function_id}'s handler made requests the static analysis "
                            f"(tests/iam_static.py) did not derive: {unseen}")
        unexplained = recorder.unexplained_sites()
        assert not unexplained, ("requests from lines where tests/iam_static.py found no "
                                 f"request site: {unexplained}")
        unused = [p for p in unneeded(cfn, function_id, recorder.needs | set(also))
                  if not p.split(": ", 1)[1].startswith(STATIC_RESOURCES)]
        assert not unused, (f"{function_id}'s role grants what none of its calls used "
                            f"(add the call to a test, or the reason to NEEDED_ANYWAY): "
                            f"{unused}")

    return _iam_coverage


# -- enforcing a role on the requests, as AWS would ---------------------------------------------


@contextmanager
def enforcing(function_id: str, cfn: dict[str, Any] | None = None) -> Iterator[list[str]]:
    """Deny every botocore call from handler code that the function's role does not
    allow, the way AWS does (AccessDeniedException, nothing applied). Yields the list of
    denials, so a test can assert what was refused."""
    from botocore.exceptions import ClientError

    cfn = cfn or template_check.transform()
    policy = grants(cfn, function_id)
    entry = entry_of(cfn, function_id)
    refused: list[str] = []
    real: Callable[..., Any] = BaseClient._make_api_call

    def checked(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if _entry_frame(*entry):
            for req in requests_of(client.meta.service_model.service_name, operation,
                                   params):
                if not allows(policy, req.action, req.resource, req):
                    msg = (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/{function_id}Role/x "
                           f"is not authorized to perform: {req.action} on resource: "
                           f"{req.resource}")
                    refused.append(f"{req.action} on {req.resource}")
                    raise ClientError(cast(Any, {"Error": {"Code": "AccessDeniedException",
                                                           "Message": msg}}), operation)
        return real(client, operation, params)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BaseClient, "_make_api_call", checked)
        yield refused
