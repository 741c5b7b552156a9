"""Offline validation of the SAM template: transform with aws-sam-translator, lint the
CloudFormation it produces with cfn-lint, and property checks on that output.

cfn-lint >= 1.54 no longer runs the SAM transform itself, so linting template.yaml
directly passes templates CloudFormation rejects (e.g. a circular self-invoke policy).
`transform()` first, then `lint()` the result.

Every `check_*` function takes a *transformed* template and returns a list of problems
(empty = fine), so tests can prove each check fails on a broken template.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import yaml

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "template.yaml"

# Values for the parameters that have no default (the transform leaves !Ref intact,
# but give realistic values so nothing is resolved against an empty string).
PARAMETERS: dict[str, Any] = {
    "SourceBucket": "jobstate-example-source",
    "SenderIdentityArn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
}

WORKERS = ("FileProcessorFunction", "EtlPollerFunction", "BatchMailerFunction")
LINT_REGION = "us-east-1"


# -- loading and transforming --------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation short-form tags (!Ref, !Sub, ...).

    A subclass, so the global yaml.SafeLoader is left alone (samtranslator's own
    `yaml_parse` registers the constructor on SafeLoader itself).
    """


def _register_tags() -> None:
    from samtranslator.yaml_helper import intrinsics_multi_constructor

    _CfnLoader.add_multi_constructor("!", intrinsics_multi_constructor)


_register_tags()


def load_sam(template_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a SAM/CloudFormation YAML file into plain dicts (short tags -> Fn:: form)."""
    text = Path(template_path).read_text(encoding="utf-8")
    data = yaml.load(text, Loader=_CfnLoader)  # a SafeLoader subclass: safe
    if not isinstance(data, dict):
        raise ValueError(f"{template_path}: not a template (top level is {type(data).__name__})")
    return data


class StubManagedPolicyLoader:
    """Offline stand-in for samtranslator's IAM-backed ManagedPolicyLoader."""

    POLICIES: ClassVar[dict[str, str]] = {
        "AWSLambdaBasicExecutionRole":
            "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
        "AWSLambdaSQSQueueExecutionRole":
            "arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole",
        "AWSLambdaRole": "arn:aws:iam::aws:policy/service-role/AWSLambdaRole",
        "AWSXRayDaemonWriteAccess": "arn:aws:iam::aws:policy/AWSXRayDaemonWriteAccess",
    }

    def load(self) -> dict[str, str]:
        return dict(self.POLICIES)


PACKAGED_CODE_URI = "s3://jobstate-artifacts/jobstate.zip"


def package_code_uris(sam: dict[str, Any]) -> dict[str, Any]:
    """Do what `sam package` does to local CodeUri paths: point them at S3.

    The translator only accepts S3 locations; the S3 object is never read.
    """
    out: dict[str, Any] = json.loads(json.dumps(sam))
    sections = [((out.get("Globals") or {}).get("Function") or {})]
    sections += [r.get("Properties") or {} for r in (out.get("Resources") or {}).values()
                 if r.get("Type") == "AWS::Serverless::Function"]
    for p in sections:
        uri = p.get("CodeUri")
        if isinstance(uri, str) and not uri.startswith("s3://"):
            p["CodeUri"] = PACKAGED_CODE_URI
    return out


def transform_dict(
    sam: dict[str, Any], parameter_values: dict[str, Any] | None = None
) -> dict[str, Any]:
    """SAM template (dict) -> CloudFormation template (dict), offline."""
    from samtranslator.translator.transform import transform as sam_transform

    params = dict(PARAMETERS)
    params.update(parameter_values or {})
    # The translator takes AWS::Region/AWS::Partition from a default boto3 session, so
    # it needs a region; set one only for the call, leaving the environment as found.
    saved = os.environ.get("AWS_DEFAULT_REGION")
    if not (saved or os.environ.get("AWS_REGION")):
        os.environ["AWS_DEFAULT_REGION"] = LINT_REGION
    try:
        result: dict[str, Any] = sam_transform(
            package_code_uris(sam), params, StubManagedPolicyLoader()
        )
    finally:
        if saved is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
    return result


def transform(
    template_path: str | os.PathLike[str] = TEMPLATE,
    parameter_values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a SAM YAML file and transform it to CloudFormation, offline.

    Raises samtranslator's `InvalidDocumentException` when SAM rejects the template.
    """
    return transform_dict(load_sam(template_path), parameter_values)


# -- linting -------------------------------------------------------------------------


def lint_matches(cfn_template: dict[str, Any]) -> list[Any]:
    """All cfn-lint matches (errors, warnings, informational) for a CloudFormation dict."""
    from cfnlint.api import lint as cfn_lint
    from cfnlint.config import ManualArgs

    return list(cfn_lint(json.dumps(cfn_template), config=ManualArgs(regions=[LINT_REGION])))


def _fmt(match: Any) -> str:
    path = "/".join(str(p) for p in (getattr(match.rule, "path", None) or []))
    where = f" at {path}" if path else ""
    return f"{match.rule.id}: {match.message}{where}"


def lint_all(cfn_template: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(errors, warnings) from cfn-lint; informational matches are dropped."""
    errors: list[str] = []
    warnings: list[str] = []
    for m in lint_matches(cfn_template):
        rid = m.rule.id
        if rid.startswith("E"):
            errors.append(_fmt(m))
        elif rid.startswith("W"):
            warnings.append(_fmt(m))
    return errors, warnings


def lint(cfn_template: dict[str, Any]) -> list[str]:
    """Error-level cfn-lint findings for a CloudFormation dict (empty = clean)."""
    return lint_all(cfn_template)[0]


def validate(template_path: str | os.PathLike[str] = TEMPLATE) -> list[str]:
    """Transform + lint; SAM transform failures are reported as problems, not raised."""
    from samtranslator.model.exceptions import InvalidDocumentException

    try:
        cfn = transform(template_path)
    except InvalidDocumentException as exc:
        return [f"SAM transform: {cause.message}" for cause in exc.causes] or [str(exc)]
    return lint(cfn)


# -- walking the transformed template ------------------------------------------------


def resources(cfn: dict[str, Any], rtype: str | None = None) -> dict[str, dict[str, Any]]:
    res: dict[str, dict[str, Any]] = cfn.get("Resources", {})
    return {k: v for k, v in res.items() if rtype is None or v.get("Type") == rtype}


def props(cfn: dict[str, Any], logical_id: str) -> dict[str, Any]:
    resource = cfn.get("Resources", {}).get(logical_id)
    if resource is None:
        return {}
    p: dict[str, Any] = resource.get("Properties", {})
    return p


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


POLICY_DOCUMENT_TYPES = (
    "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy",
    "AWS::SQS::QueuePolicy", "AWS::SNS::TopicPolicy", "AWS::S3::BucketPolicy",
)


def resolve_conditions(cfn: dict[str, Any], values: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """A copy of `cfn` deployed with these parameter values (defaults and PARAMETERS
    otherwise): each `Fn::If` replaced by its chosen branch, `AWS::NoValue` dropped."""
    params = {k: v.get("Default") for k, v in (cfn.get("Parameters") or {}).items()}
    params.update(PARAMETERS)
    params.update(values or {})
    conditions: dict[str, Any] = cfn.get("Conditions") or {}

    def value(x: Any) -> Any:
        if isinstance(x, dict) and set(x) == {"Ref"} and x["Ref"] in params:
            return params[x["Ref"]]
        if isinstance(x, str | int | float):
            return x
        raise ValueError(f"cannot evaluate {x!r} in a condition")

    def holds(expr: Any) -> bool:
        if isinstance(expr, dict) and len(expr) == 1:
            (op, arg), = expr.items()
            if op == "Fn::Equals":
                return bool(value(arg[0]) == value(arg[1]))
            if op == "Fn::Not":
                return not holds(arg[0])
            if op == "Fn::And":
                return all(holds(a) for a in arg)
            if op == "Fn::Or":
                return any(holds(a) for a in arg)
            if op == "Condition":
                return holds(conditions[arg])
        raise ValueError(f"cannot evaluate condition {expr!r}")

    no_value = {"Ref": "AWS::NoValue"}

    def walk(node: Any) -> Any:
        """The node resolved; the node itself when nothing under it changes, so a
        resolved template passes through as it is (and edits to it are seen)."""
        if isinstance(node, dict):
            if set(node) == {"Fn::If"}:
                name, yes, no = node["Fn::If"]
                return walk(yes if holds(conditions[name]) else no)
            out = {k: walk(v) for k, v in node.items()}
            if all(out[k] is v for k, v in node.items()) and no_value not in out.values():
                return node
            return {k: v for k, v in out.items() if v != no_value}
        if isinstance(node, list):
            items = [walk(v) for v in node]
            if all(a is b for a, b in zip(items, node, strict=True)) and no_value not in items:
                return node
            return [w for w in items if w != no_value]
        return node

    resolved: dict[str, Any] = walk(cfn)
    return resolved


def iam_statements(cfn: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, statement) for every statement of every identity/resource policy (of the
    stack deployed with `cfn`'s parameter defaults, unless resolved before)."""
    cfn = resolve_conditions(cfn)
    for lid, res in resources(cfn).items():
        p = res.get("Properties", {})
        docs: list[tuple[str, Any]] = []
        if res.get("Type") == "AWS::IAM::Role":
            docs += [(f"{lid}/{pol.get('PolicyName')}", pol.get("PolicyDocument"))
                     for pol in p.get("Policies", [])]
        elif res.get("Type") in POLICY_DOCUMENT_TYPES:
            docs.append((lid, p.get("PolicyDocument")))
        for where, doc in docs:
            if isinstance(doc, dict):
                for st in _as_list(doc.get("Statement", [])):
                    if isinstance(st, dict):
                        yield where, st


def role_statements(cfn: dict[str, Any], function_id: str) -> list[dict[str, Any]]:
    """Inline statements of the role SAM generated for `function_id`."""
    role_id = f"{function_id}Role"
    prefix = f"{role_id}/"
    return [st for where, st in iam_statements(cfn) if where.startswith(prefix)]


def _mentions(value: Any, needle: str) -> bool:
    return needle in json.dumps(value)


# -- property checks (each returns a list of problems) -------------------------------


def check_workers(cfn: dict[str, Any], workers: tuple[str, ...] = WORKERS) -> list[str]:
    """RecursiveLoop Allow, no async retries + an OnFailure destination, reserved concurrency."""
    problems: list[str] = []
    for fn in workers:
        p = props(cfn, fn)
        if resources(cfn).get(fn, {}).get("Type") != "AWS::Lambda::Function":
            problems.append(f"{fn}: no AWS::Lambda::Function")
            continue
        if p.get("RecursiveLoop") != "Allow":
            problems.append(f"{fn}: RecursiveLoop is {p.get('RecursiveLoop')!r}, not 'Allow'")
        if p.get("ReservedConcurrentExecutions") in (None, 0):
            problems.append(f"{fn}: ReservedConcurrentExecutions not set")
        if not (isinstance(p.get("FunctionName"), dict) and "Fn::Sub" in p["FunctionName"]):
            problems.append(f"{fn}: FunctionName is not an explicit !Sub name")
        invoke_configs = resources(cfn, "AWS::Lambda::EventInvokeConfig").values()
        configs = [r["Properties"] for r in invoke_configs
                   if r.get("Properties", {}).get("FunctionName") == {"Ref": fn}]
        if len(configs) != 1:
            problems.append(f"{fn}: expected one EventInvokeConfig, found {len(configs)}")
            continue
        eic = configs[0]
        if eic.get("MaximumRetryAttempts") != 0:
            problems.append(
                f"{fn}: EventInvokeConfig MaximumRetryAttempts is "
                f"{eic.get('MaximumRetryAttempts')!r}, not 0"
            )
        on_failure = (eic.get("DestinationConfig") or {}).get("OnFailure") or {}
        if not on_failure.get("Destination"):
            problems.append(f"{fn}: EventInvokeConfig has no OnFailure destination")
    return problems


def check_self_invoke(cfn: dict[str, Any], workers: tuple[str, ...] = WORKERS) -> list[str]:
    """Each worker may invoke itself, named by the same !Sub string as its FunctionName."""
    problems: list[str] = []
    for fn in workers:
        name = props(cfn, fn).get("FunctionName")
        name_sub = name.get("Fn::Sub") if isinstance(name, dict) else None
        ok = False
        for st in role_statements(cfn, fn):
            if st.get("Effect") != "Allow" or "lambda:InvokeFunction" not in _as_list(
                st.get("Action")
            ):
                continue
            for r in _as_list(st.get("Resource")):
                sub = r.get("Fn::Sub") if isinstance(r, dict) else None
                if (isinstance(sub, str) and isinstance(name_sub, str)
                        and sub.endswith(f":function:{name_sub}")):
                    ok = True
        if not ok:
            problems.append(f"{fn}: no lambda:InvokeFunction on its own name ({name_sub!r})")
    return problems


def check_failure_queue_policy(cfn: dict[str, Any], workers: tuple[str, ...] = WORKERS
                               ) -> list[str]:
    """Each worker's role may sqs:SendMessage to its on-failure destination."""
    problems: list[str] = []
    for fn in workers:
        if not any("sqs:SendMessage" in _as_list(st.get("Action"))
                   and _mentions(st.get("Resource"), "OnFailureQueue")
                   for st in role_statements(cfn, fn)):
            problems.append(f"{fn}: role cannot sqs:SendMessage to OnFailureQueue")
    return problems


def check_table(cfn: dict[str, Any]) -> list[str]:
    tables = resources(cfn, "AWS::DynamoDB::Table")
    if len(tables) != 1:
        return [f"expected one AWS::DynamoDB::Table, found {len(tables)}"]
    lid, res = next(iter(tables.items()))
    p = res.get("Properties", {})
    problems: list[str] = []
    if p.get("BillingMode") != "PAY_PER_REQUEST":
        problems.append(f"{lid}: BillingMode {p.get('BillingMode')!r}")
    keys = {k["AttributeName"]: k["KeyType"] for k in p.get("KeySchema", [])}
    if keys != {"pk": "HASH", "sk": "RANGE"}:
        problems.append(f"{lid}: KeySchema {keys}")
    attr_types = {a["AttributeName"]: a["AttributeType"] for a in p.get("AttributeDefinitions", [])}
    gsis = {g["IndexName"]: g for g in p.get("GlobalSecondaryIndexes", [])}
    want = {
        "by-type": ({"lk": "HASH", "ls": "RANGE"}, "KEYS_ONLY"),
        "due": ({"dk": "HASH", "du": "RANGE"}, "INCLUDE"),
    }
    for name, (schema, projection) in want.items():
        g = gsis.get(name)
        if g is None:
            problems.append(f"{lid}: GSI {name!r} missing")
            continue
        got = {k["AttributeName"]: k["KeyType"] for k in g.get("KeySchema", [])}
        if got != schema:
            problems.append(f"{lid}: GSI {name!r} keys {got}")
        if g.get("Projection", {}).get("ProjectionType") != projection:
            problems.append(f"{lid}: GSI {name!r} projection {g.get('Projection')}")
    if attr_types.get("du") != "N":
        problems.append(f"{lid}: du (due time) must be a Number")
    if gsis.get("due"):
        included = set(gsis["due"].get("Projection", {}).get("NonKeyAttributes", []))
        missing = {"ty", "st", "sn", "dl", "pz"} - included
        if missing:
            problems.append(f"{lid}: GSI 'due' does not project {sorted(missing)}")
    ttl = p.get("TimeToLiveSpecification") or {}
    if not (ttl.get("Enabled") is True and ttl.get("AttributeName") == "ex"):
        problems.append(f"{lid}: TTL on ex (expires at) not enabled ({ttl})")
    pitr = p.get("PointInTimeRecoverySpecification") or {}
    if pitr.get("PointInTimeRecoveryEnabled") is not True:
        problems.append(f"{lid}: point-in-time recovery not enabled")
    if (p.get("SSESpecification") or {}).get("SSEEnabled") is not True:
        problems.append(f"{lid}: SSE not enabled")
    for policy in ("DeletionPolicy", "UpdateReplacePolicy"):
        if res.get(policy) != "Retain":
            problems.append(f"{lid}: {policy} is {res.get(policy)!r}, not Retain")
    return problems


FORBIDDEN_ACTIONS = {"*", "dynamodb:*", "lambda:*"}  # and any other "<service>:*"


def _specific_function(resource: Any) -> bool:
    """An ARN/!Sub naming one function (no wildcard in the name), or a Ref/GetAtt."""
    if isinstance(resource, dict) and ("Ref" in resource or "Fn::GetAtt" in resource):
        return True
    text = resource.get("Fn::Sub") if isinstance(resource, dict) else resource
    if isinstance(text, list):  # Fn::Sub [string, {vars}]
        text = text[0]
    if not isinstance(text, str) or ":function:" not in text:
        return False
    name = text.rsplit(":function:", 1)[1]
    return bool(name) and "*" not in name


def check_iam(cfn: dict[str, Any]) -> list[str]:
    """No wildcard actions; every lambda:InvokeFunction targets a specific function."""
    problems: list[str] = []
    for where, st in iam_statements(cfn):
        if st.get("Effect") != "Allow":
            continue
        actions = [a for a in _as_list(st.get("Action", [])) if isinstance(a, str)]
        bad = sorted({a for a in actions if a.lower() in FORBIDDEN_ACTIONS or a.endswith(":*")})
        if bad:
            problems.append(f"{where}: wildcard action(s) {bad}")
        if "NotAction" in st:
            problems.append(f"{where}: Allow with NotAction")
        if any(a.lower() in ("lambda:invokefunction", "lambda:*", "*") for a in actions):
            for r in _as_list(st.get("Resource", [])):
                if not _specific_function(r):
                    problems.append(
                        f"{where}: lambda:InvokeFunction on non-specific {json.dumps(r)}")
    return problems


def check_function_url(cfn: dict[str, Any], function_id: str = "StatusApiFunction") -> list[str]:
    urls = [r["Properties"] for r in resources(cfn, "AWS::Lambda::Url").values()
            if r.get("Properties", {}).get("TargetFunctionArn") == {"Ref": function_id}]
    if len(urls) != 1:
        return [f"{function_id}: expected one function URL, found {len(urls)}"]
    problems: list[str] = []
    if urls[0].get("AuthType") != "AWS_IAM":
        problems.append(f"{function_id}: function URL AuthType is {urls[0].get('AuthType')!r}")
    for lid, r in resources(cfn, "AWS::Lambda::Permission").items():
        rp = r.get("Properties", {})
        if rp.get("Action") == "lambda:InvokeFunctionUrl" and rp.get("Principal") == "*":
            problems.append(f"{lid}: function URL is invokable by anyone")
    return problems


def check_sweeper(cfn: dict[str, Any], function_id: str = "SweeperFunction") -> list[str]:
    problems: list[str] = []
    rules = [r["Properties"] for r in resources(cfn, "AWS::Events::Rule").values()
             if _mentions(r.get("Properties", {}).get("Targets"), function_id)]
    if not any("ScheduleExpression" in r for r in rules):
        problems.append(f"{function_id}: no EventBridge schedule rule")
    env = (props(cfn, function_id).get("Environment") or {}).get("Variables") or {}
    if "JOBSTATE_DEFAULT_FUNCTION" not in env:
        problems.append(f"{function_id}: JOBSTATE_DEFAULT_FUNCTION not set")
    allowed = json.dumps([st.get("Resource") for st in role_statements(cfn, function_id)
                          if "lambda:InvokeFunction" in _as_list(st.get("Action"))])
    for suffix in ("file-processor", "etl-poller", "batch-mailer"):
        if f"${{AWS::StackName}}-{suffix}" not in allowed:
            problems.append(f"{function_id}: cannot invoke the {suffix} worker")
    return problems


def check_alarms(cfn: dict[str, Any], workers: tuple[str, ...] = WORKERS) -> list[str]:
    alarms = [r.get("Properties", {}) for r in resources(cfn, "AWS::CloudWatch::Alarm").values()]

    def has(metric: str, namespace: str, dim_ref: str | None) -> bool:
        for a in alarms:
            if a.get("MetricName") != metric or a.get("Namespace") != namespace:
                continue
            if a.get("ComparisonOperator") != "GreaterThanThreshold" or a.get("Threshold") != 0:
                continue
            if dim_ref is None or _mentions(a.get("Dimensions"), dim_ref):
                return True
        return False

    problems: list[str] = []
    for fn in workers:
        for metric in ("RecursiveInvocationsDropped", "Errors"):
            if not has(metric, "AWS/Lambda", fn):
                problems.append(f"{fn}: no {metric} > 0 alarm")
    if not has("ApproximateNumberOfMessagesVisible", "AWS/SQS", "OnFailureQueue"):
        problems.append("OnFailureQueue: no depth alarm")
    for metric in ("JobsFailed", "SweepDispatchErrors"):
        if not has(metric, "jobstate", None):
            problems.append(f"no jobstate/{metric} alarm")
    return problems


ALL_CHECKS = (
    check_workers, check_self_invoke, check_failure_queue_policy, check_table, check_iam,
    check_function_url, check_sweeper, check_alarms,
)


def check_all(cfn: dict[str, Any]) -> list[str]:
    return [p for check in ALL_CHECKS for p in check(cfn)]
