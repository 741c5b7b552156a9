"""The SAM template: transforms and lints clean offline, and has the properties a
recursive jobstate deployment needs. Negative tests mutate copies of the template to
prove each check can fail."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import template_check as tc

SELF_INVOKE = (
    'Resource: !Sub "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}'
    ':function:${AWS::StackName}-file-processor"'
)


@pytest.fixture(scope="module")
def cfn() -> dict[str, Any]:
    return tc.transform(tc.TEMPLATE)


def mutated(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    """A copy of template.yaml with `old` replaced by `new` (which must occur)."""
    text = tc.TEMPLATE.read_text(encoding="utf-8")
    assert old in text, f"mutation target not found: {old!r}"
    path = tmp_path / "template.yaml"
    path.write_text(text.replace(old, new, count), encoding="utf-8")
    return path


# -- (a) transforms and lints clean ----------------------------------------------------


def test_template_transforms_and_lints_clean(cfn: dict[str, Any]) -> None:
    errors, warnings = tc.lint_all(cfn)
    assert errors == []
    assert warnings == []


def test_every_property_check_passes(cfn: dict[str, Any]) -> None:
    assert tc.check_all(cfn) == []


# -- (b) properties of the transformed template ----------------------------------------


def test_workers(cfn: dict[str, Any]) -> None:
    assert tc.check_workers(cfn) == []
    for fn in tc.WORKERS:
        assert tc.props(cfn, fn)["RecursiveLoop"] == "Allow"


def test_workers_invoke_themselves_by_name(cfn: dict[str, Any]) -> None:
    assert tc.check_self_invoke(cfn) == []


def test_workers_can_write_to_failure_queue(cfn: dict[str, Any]) -> None:
    assert tc.check_failure_queue_policy(cfn) == []


def test_table(cfn: dict[str, Any]) -> None:
    assert tc.check_table(cfn) == []


def test_iam_has_no_wildcards(cfn: dict[str, Any]) -> None:
    assert tc.check_iam(cfn) == []
    assert any(True for _ in tc.iam_statements(cfn))  # the walker sees statements at all


FUNCTIONS = (*tc.WORKERS, "SweeperFunction", "StatusApiFunction")


KMS = pytest.mark.parametrize("kms", [False, True], ids=["no-key", "kms-key"])


def deployed(cfn: dict[str, Any], kms: bool) -> dict[str, Any]:
    """The stack as deployed without, or with, the optional KmsKeyArn."""
    from iam_coverage import KEY_ARN

    return tc.resolve_conditions(cfn, {"KmsKeyArn": KEY_ARN if kms else ""})


@KMS
@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_every_role_allows_what_its_code_can_do(cfn: dict[str, Any], function_id: str,
                                                kms: bool) -> None:
    """Each role allows every request the code reachable from its Handler can make
    (derived by tests/iam_static.py, not listed): issue 21's batch mailer lacked
    dynamodb:ConditionCheckItem, which the withdrawal of a cancelled spawn needs. With a
    KmsKeyArn, the KMS requests of the cipher too."""
    from iam_coverage import denied, static_needs

    stack = deployed(cfn, kms)
    needs = static_needs(stack, function_id, kms=kms)
    assert needs and denied(stack, function_id, needs) == []


@KMS
@pytest.mark.parametrize("function_id", FUNCTIONS)
def test_no_role_grants_what_no_code_path_needs(cfn: dict[str, Any], function_id: str,
                                                kms: bool) -> None:
    """Least privilege: every granted DynamoDB action and table/index is needed by a
    reachable request; every other granted action too (or explained in NEEDED_ANYWAY).
    Workers used to be granted index/*, which no worker queries. KMS grants exist only
    when the stack has a key, and each function gets only the KMS actions its code uses
    (the status API only ever opens tokens)."""
    from iam_coverage import least_privilege

    assert least_privilege(deployed(cfn, kms), function_id, kms=kms) == []


def test_kms_grants_exist_only_with_a_key(cfn: dict[str, Any]) -> None:
    def kms_actions(stack: dict[str, Any]) -> set[str]:
        return {a for _, st in tc.iam_statements(stack)
                for a in (st["Action"] if isinstance(st["Action"], list) else [st["Action"]])
                if a.startswith("kms:")}

    assert kms_actions(deployed(cfn, False)) == set()
    assert kms_actions(deployed(cfn, True)) == {"kms:GenerateDataKey", "kms:Decrypt"}
    env = cfn["Globals"]["Function"]["Environment"]["Variables"] if "Globals" in cfn else (
        tc.props(cfn, "SweeperFunction")["Environment"]["Variables"])
    assert env["JOBSTATE_KMS_KEY_ARN"] == {"Ref": "KmsKeyArn"}


def test_the_spawn_withdrawal_is_a_need_of_every_worker(cfn: dict[str, Any]) -> None:
    """The gap of issue 21, seen by the analysis: the ConditionCheck of
    fanout._withdraw's transaction makes dynamodb:ConditionCheckItem a need of every
    function that runs App.handler, and of no other."""
    from iam_coverage import TABLE_ARN, static_needs

    check = ("dynamodb:ConditionCheckItem", TABLE_ARN)
    assert {f for f in FUNCTIONS if check in static_needs(cfn, f)} == set(tc.WORKERS)


def test_the_iam_coverage_check_can_fail(cfn: dict[str, Any]) -> None:
    import copy

    from iam_coverage import TABLE_ARN, denied, least_privilege

    cancel = {("dynamodb:UpdateItem", TABLE_ARN), ("dynamodb:PutItem", TABLE_ARN)}
    assert denied(cfn, "StatusApiFunction", cancel) == []
    broken = tc.resolve_conditions(copy.deepcopy(cfn))
    for st in tc.role_statements(broken, "StatusApiFunction"):
        if isinstance(st.get("Action"), list) and "dynamodb:PutItem" in st["Action"]:
            st["Action"].remove("dynamodb:PutItem")
    assert denied(broken, "StatusApiFunction", cancel) == [f"dynamodb:PutItem on {TABLE_ARN}"]
    versioned = {("s3:GetObjectVersion", "arn:aws:s3:::uploads/in/a.txt")}
    assert denied(cfn, "FileProcessorFunction", versioned) == []
    assert denied(cfn, "FileProcessorFunction",
                  {("s3:PutObject", "arn:aws:s3:::uploads/in/a.txt")})  # not results/
    # A grant nothing needs is reported: an index grant to a worker, a Scan.
    extra = tc.resolve_conditions(copy.deepcopy(cfn))
    for st in tc.role_statements(extra, "EtlPollerFunction"):
        if st.get("Sid") == "JobTable":
            st["Resource"] = [*st["Resource"], {"Fn::Sub": "${Table.Arn}/index/*"}]
            st["Action"] = [*st["Action"], "dynamodb:Scan"]
    problems = least_privilege(extra, "EtlPollerFunction")
    assert any("index/*" in p for p in problems) and any("Scan" in p for p in problems)


def test_a_role_without_condition_check_is_caught(tmp_path: Path) -> None:
    cfn = tc.transform(mutated(tmp_path, "                - dynamodb:ConditionCheckItem",
                               "", count=-1))
    from iam_coverage import TABLE_ARN, denied, static_needs

    needs = static_needs(cfn, "BatchMailerFunction")
    assert denied(cfn, "BatchMailerFunction", needs) == [
        f"dynamodb:ConditionCheckItem on {TABLE_ARN}"]


def test_function_url_uses_iam(cfn: dict[str, Any]) -> None:
    assert tc.check_function_url(cfn) == []


def test_status_api_grants_come_from_a_parameter_that_refuses_by_default(
        cfn: dict[str, Any]) -> None:
    from handlers.status_api import GRANTS_ENV, Grants

    env = tc.props(cfn, "StatusApiFunction")["Environment"]["Variables"]
    assert env[GRANTS_ENV] == {"Ref": "StatusApiGrants"}
    default = cfn["Parameters"]["StatusApiGrants"]["Default"]
    assert Grants.parse(default).grants == ()  # nobody may do anything until granted


def test_sweeper_schedule_and_routes(cfn: dict[str, Any]) -> None:
    assert tc.check_sweeper(cfn) == []


def test_alarms(cfn: dict[str, Any]) -> None:
    assert tc.check_alarms(cfn) == []


def test_alarm_actions_only_with_topic(cfn: dict[str, Any]) -> None:
    assert "HasAlarmTopic" in cfn["Conditions"]
    for lid, alarm in tc.resources(cfn, "AWS::CloudWatch::Alarm").items():
        assert "Fn::If" in alarm["Properties"]["AlarmActions"], lid


# -- (c) the checks can fail ----------------------------------------------------------


def test_circular_self_invoke_is_caught_by_cfn_lint_after_transform(tmp_path: Path) -> None:
    path = mutated(tmp_path, SELF_INVOKE, "Resource: !GetAtt FileProcessorFunction.Arn")
    # The SAM transform accepts it; the circular Function <-> Role dependency only
    # shows up when cfn-lint checks the transformed CloudFormation (rule E3004).
    cfn = tc.transform(path)
    errors = tc.lint(cfn)
    assert any(e.startswith("E3004") and "FileProcessorFunction" in e for e in errors), errors
    assert any(p.startswith("E3004") for p in tc.validate(path))
    assert any("FileProcessorFunction" in p for p in tc.check_self_invoke(cfn))


def test_async_retries_are_caught(tmp_path: Path) -> None:
    cfn = tc.transform(mutated(tmp_path, "MaximumRetryAttempts: 0", "MaximumRetryAttempts: 2"))
    problems = tc.check_workers(cfn)
    assert len(problems) == 1
    assert "FileProcessorFunction" in problems[0] and "MaximumRetryAttempts" in problems[0]


def test_missing_recursive_loop_allow_is_caught(tmp_path: Path) -> None:
    cfn = tc.transform(mutated(tmp_path, "RecursiveLoop: Allow", "RecursiveLoop: Terminate"))
    assert any("RecursiveLoop" in p for p in tc.check_workers(cfn))


def test_public_function_url_is_caught(tmp_path: Path) -> None:
    cfn = tc.transform(mutated(tmp_path, "AuthType: AWS_IAM", "AuthType: NONE"))
    problems = tc.check_function_url(cfn)
    assert any("AuthType is 'NONE'" in p for p in problems)
    assert any("invokable by anyone" in p for p in problems)


def test_dynamodb_wildcard_is_caught(tmp_path: Path) -> None:
    cfn = tc.transform(mutated(tmp_path, "- dynamodb:GetItem", "- dynamodb:*"))
    problems = tc.check_iam(cfn)
    assert any("dynamodb:*" in p for p in problems), problems


def test_invoke_any_function_is_caught(tmp_path: Path) -> None:
    cfn = tc.transform(mutated(tmp_path, SELF_INVOKE, 'Resource: "*"'))
    assert any("non-specific" in p for p in tc.check_iam(cfn))
    assert tc.check_self_invoke(cfn) != []


def test_table_without_ttl_is_caught(tmp_path: Path) -> None:
    cfn = tc.transform(mutated(tmp_path, "AttributeName: ex\n", "AttributeName: ttl\n"))
    assert any("TTL" in p for p in tc.check_table(cfn))


def test_missing_alarm_is_caught(cfn: dict[str, Any]) -> None:
    broken = {**cfn, "Resources": {k: v for k, v in cfn["Resources"].items()
                                   if k != "EtlPollerRecursionDroppedAlarm"}}
    assert tc.check_alarms(broken) == [
        "EtlPollerFunction: no RecursiveInvocationsDropped > 0 alarm"
    ]
