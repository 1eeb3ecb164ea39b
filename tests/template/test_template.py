"""template.yaml read as written and as the SAM transform turns it into CloudFormation.

Least privilege is proven on the synthesized policies, i.e. after the transform, where SAM would
have added its own policies. No statement needs `Resource: "*"`: the function sends metrics as EMF
log lines (no cloudwatch:PutMetricData), X-Ray is off (xray:PutTraceSegments would need "*"), and
the execution role is written out instead of SAM's AWS managed policies, which grant on "*".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.template.conftest import ROOT, TEMPLATE

PARAMETER_ARN = "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
SSM_READ_ACTIONS = {"ssm:GetParameter", "ssm:GetParametersByPath"}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _resources_of_type(template: dict[str, Any], resource_type: str) -> dict[str, dict[str, Any]]:
    return {name: body for name, body in template["Resources"].items() if body["Type"] == resource_type}


def _policy_documents(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every permissions policy in the template (not trust policies), by where it lives."""
    documents: dict[str, dict[str, Any]] = {}
    for name, body in template["Resources"].items():
        properties = body.get("Properties", {})
        if body["Type"] == "AWS::IAM::Role":
            for policy in properties.get("Policies", []):
                documents[f"{name}/{policy['PolicyName']}"] = policy["PolicyDocument"]
        elif body["Type"] in ("AWS::IAM::ManagedPolicy", "AWS::IAM::Policy"):
            documents[name] = properties["PolicyDocument"]
    return documents


def _statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    return [statement for document in _policy_documents(template).values() for statement in document["Statement"]]


def _sub(value: Any) -> str:
    """The text of a `!Sub "..."` (or a plain string)."""
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return str(sub if isinstance(sub, str) else sub[0])
    assert isinstance(value, str), value
    return value


def _function(template: dict[str, Any]) -> dict[str, Any]:
    [function] = _resources_of_type(template, "AWS::Lambda::Function").values()
    return function


# -- the template as written ------------------------------------------------------------------


def test_cfn_lint_reports_nothing() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    if not cfn_lint.exists():
        pytest.skip(f"cfn-lint is not installed next to {sys.executable}")
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_visibility_timeout_is_six_function_timeouts(template: dict[str, Any]) -> None:
    timeout = template["Globals"]["Function"]["Timeout"]
    assert template["Resources"]["EventsQueue"]["Properties"]["VisibilityTimeout"] == 6 * timeout


def test_function_and_layer_agree_on_runtime_and_architecture(template: dict[str, Any]) -> None:
    function_globals = template["Globals"]["Function"]
    layer = template["Resources"]["DependenciesLayer"]
    assert function_globals["Runtime"] == "python3.11"
    assert layer["Properties"]["CompatibleRuntimes"] == [function_globals["Runtime"]]
    assert layer["Properties"]["CompatibleArchitectures"] == function_globals["Architectures"] == ["arm64"]
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"
    # The layer's Makefile installs wheels for that platform and that interpreter.
    makefile = (ROOT / layer["Properties"]["ContentUri"] / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^LAYER_PLATFORM \?= manylinux\w*_aarch64$", makefile, re.MULTILINE)
    assert "--python-version 3.11" in makefile
    assert "-m compileall" in makefile


def test_layer_requirements_are_pinned_and_leave_boto3_to_the_runtime() -> None:
    directory = ROOT / "layers" / "dependencies"
    for name in ("requirements.txt", "constraints.txt"):
        lines = [line for line in (directory / name).read_text(encoding="utf-8").splitlines() if line.strip()]
        pins = [line for line in lines if not line.startswith("#")]
        assert pins, name
        assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", pin) for pin in pins), pins
        assert not {pin.split("==")[0].lower() for pin in pins} & {"boto3", "botocore", "s3transfer"}


def test_maximum_concurrency_cannot_go_below_two(template: dict[str, Any]) -> None:
    assert template["Parameters"]["MaximumConcurrency"]["MinValue"] >= 2
    reserved = template["Parameters"]["ReservedConcurrency"]["Default"]
    assert reserved >= template["Parameters"]["MaximumConcurrency"]["Default"]


def test_each_checkov_skip_is_justified_next_to_its_resource(template: dict[str, Any]) -> None:
    skips = {
        (name, skip["id"]): skip.get("comment", "")
        for name, body in template["Resources"].items()
        for skip in body.get("Metadata", {}).get("checkov", {}).get("skip", [])
    }
    assert ("ForwarderFunction", "CKV_AWS_116") in skips
    assert ("ForwarderFunction", "CKV_AWS_117") in skips
    for (name, check), comment in skips.items():
        assert len(comment.split()) >= 12, f"{name} skips {check} without a real justification"


# -- the synthesized template: least privilege ---------------------------------------------------


def test_no_action_is_a_wildcard(transformed: dict[str, Any]) -> None:
    for statement in _statements(transformed):
        assert "NotAction" not in statement
        for action in _as_list(statement["Action"]):
            assert "*" not in action, statement


def test_no_statement_grants_on_every_resource(transformed: dict[str, Any]) -> None:
    for statement in _statements(transformed):
        assert "NotResource" not in statement
        assert "*" not in _as_list(statement["Resource"]), statement


def test_function_role_carries_no_aws_managed_policies(transformed: dict[str, Any]) -> None:
    role_arn = _function(transformed)["Properties"]["Role"]
    assert role_arn == {"Fn::GetAtt": ["ForwarderRole", "Arn"]}
    role = transformed["Resources"]["ForwarderRole"]["Properties"]
    assert "ManagedPolicyArns" not in role
    assert role["AssumeRolePolicyDocument"]["Statement"] == [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ]


def test_ssm_is_read_only_under_the_targets_and_secrets_paths(transformed: dict[str, Any]) -> None:
    allowed = {
        f"{PARAMETER_ARN}${{TargetsPath}}",
        f"{PARAMETER_ARN}${{TargetsPath}}/*",
        f"{PARAMETER_ARN}${{SecretsPath}}/*",
    }
    granted = set()
    for statement in _statements(transformed):
        ssm_actions = {action for action in _as_list(statement["Action"]) if action.startswith("ssm:")}
        if ssm_actions:
            assert ssm_actions <= SSM_READ_ACTIONS, statement
            granted |= {_sub(resource) for resource in _as_list(statement["Resource"])}
    assert granted == allowed


def test_kms_decrypt_only_through_ssm_and_only_for_the_two_paths(transformed: dict[str, Any]) -> None:
    kms = [s for s in _statements(transformed) if any(a.startswith("kms:") for a in _as_list(s["Action"]))]
    [statement] = kms
    assert _as_list(statement["Action"]) == ["kms:Decrypt"]
    condition = statement["Condition"]
    assert _sub(condition["StringEquals"]["kms:ViaService"]) == "ssm.${AWS::Region}.amazonaws.com"
    contexts = {_sub(arn) for arn in condition["StringLike"]["kms:EncryptionContext:PARAMETER_ARN"]}
    assert contexts == {f"{PARAMETER_ARN}${{TargetsPath}}/*", f"{PARAMETER_ARN}${{SecretsPath}}/*"}
    key_choice = statement["Resource"]["Fn::If"]
    assert key_choice[0] == "HasSsmKmsKey"
    assert key_choice[1] == {"Ref": "SsmKmsKeyArn"}
    assert _sub(key_choice[2]) == "arn:${AWS::Partition}:kms:${AWS::Region}:${AWS::AccountId}:key/*"


def test_dynamodb_only_item_calls_on_the_idempotency_table(transformed: dict[str, Any]) -> None:
    for statement in _statements(transformed):
        actions = {action for action in _as_list(statement["Action"]) if action.startswith("dynamodb:")}
        if actions:
            assert actions <= {"dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"}
            assert _as_list(statement["Resource"]) == [{"Fn::GetAtt": ["IdempotencyTable", "Arn"]}]


def test_sqs_only_on_the_two_queues_and_sending_only_to_the_dead_letter_queue(transformed: dict[str, Any]) -> None:
    role_statements = transformed["Resources"]["ForwarderRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    for statement in role_statements["Statement"]:
        actions = {action for action in _as_list(statement["Action"]) if action.startswith("sqs:")}
        if not actions:
            continue
        [resource] = _as_list(statement["Resource"])
        assert resource in ({"Fn::GetAtt": ["EventsQueue", "Arn"]}, {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]})
        if "sqs:SendMessage" in actions:
            assert resource == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}


def test_publisher_policy_is_send_message_on_the_events_queue_only(transformed: dict[str, Any]) -> None:
    document = transformed["Resources"]["PublisherPolicy"]["Properties"]["PolicyDocument"]
    [statement] = document["Statement"]
    assert statement["Effect"] == "Allow"
    assert _as_list(statement["Action"]) == ["sqs:SendMessage"]
    assert _as_list(statement["Resource"]) == [{"Fn::GetAtt": ["EventsQueue", "Arn"]}]


def test_upstream_role_is_conditional_and_holds_only_the_publisher_policy(transformed: dict[str, Any]) -> None:
    role = transformed["Resources"]["UpstreamPublisherRole"]
    assert role["Condition"] == "HasUpstreamPrincipal"
    assert transformed["Conditions"]["HasUpstreamPrincipal"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "UpstreamPrincipalArn"}, ""]}]
    }
    assert role["Properties"]["ManagedPolicyArns"] == [{"Ref": "PublisherPolicy"}]
    assert "Policies" not in role["Properties"]
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"AWS": {"Ref": "UpstreamPrincipalArn"}}
    assert trust["Action"] == "sts:AssumeRole"
    assert transformed["Outputs"]["UpstreamPublisherRoleArn"]["Condition"] == "HasUpstreamPrincipal"


# -- the synthesized template: what moto does not keep --------------------------------------------


def test_idempotency_table_expires_records_and_has_point_in_time_recovery(transformed: dict[str, Any]) -> None:
    properties = transformed["Resources"]["IdempotencyTable"]["Properties"]
    assert properties["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert properties["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert properties["BillingMode"] == "PAY_PER_REQUEST"


def test_function_uses_the_layer_its_log_group_and_arm64(transformed: dict[str, Any]) -> None:
    properties = _function(transformed)["Properties"]
    [layer] = properties["Layers"]
    [layer_id] = _resources_of_type(transformed, "AWS::Lambda::LayerVersion")
    assert layer == {"Ref": layer_id}
    assert properties["Architectures"] == ["arm64"]
    assert properties["LoggingConfig"] == {"LogGroup": {"Ref": "ForwarderLogGroup"}}


def test_alarms_cover_dead_letters_stuck_events_errors_and_throttles(transformed: dict[str, Any]) -> None:
    alarms = {
        (body["Properties"]["Namespace"], body["Properties"]["MetricName"]): body["Properties"]
        for body in _resources_of_type(transformed, "AWS::CloudWatch::Alarm").values()
    }
    assert set(alarms) == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage"),
        ("AWS/Lambda", "Errors"),
        ("AWS/Lambda", "Throttles"),
    }
    dead_letters = alarms[("AWS/SQS", "ApproximateNumberOfMessagesVisible")]
    assert dead_letters["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}
    ]
    assert (dead_letters["Threshold"], dead_letters["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    oldest = alarms[("AWS/SQS", "ApproximateAgeOfOldestMessage")]
    assert oldest["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["EventsQueue", "QueueName"]}}]
    assert oldest["Threshold"] == {"Ref": "OldestMessageAgeAlarmSeconds"}
    assert transformed["Parameters"]["OldestMessageAgeAlarmSeconds"]["Default"] == 900
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}


# -- dashboard and outputs --------------------------------------------------------------------------


def _dashboard(transformed: dict[str, Any]) -> dict[str, Any]:
    body = _sub(transformed["Resources"]["Dashboard"]["Properties"]["DashboardBody"])
    return dict(json.loads(re.sub(r"\$\{[^}]+\}", "placeholder", body)))


def test_dashboard_draws_a_line_per_target_for_each_delivery_metric(transformed: dict[str, Any]) -> None:
    from dataset_forwarder import stats

    expressions = [
        metric["expression"]
        for widget in _dashboard(transformed)["widgets"]
        for line in widget.get("properties", {}).get("metrics", [])
        for metric in line
        if isinstance(metric, dict) and "expression" in metric
    ]
    service = _function(transformed)["Properties"]["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"]
    for name in (stats.DELIVERED, stats.DEAD_LETTERED, stats.RETRIED, stats.LATENCY):
        [expression] = [text for text in expressions if f'MetricName="{name}"' in text]
        assert expression.startswith(f'SEARCH(\'{{{stats.NAMESPACE},service,target}} service="{service}"')


def test_dashboard_shows_unrouted_events_and_both_queue_depths(transformed: dict[str, Any]) -> None:
    from dataset_forwarder import stats

    body = _sub(transformed["Resources"]["Dashboard"]["Properties"]["DashboardBody"])
    lines = [
        line
        for widget in _dashboard(transformed)["widgets"]
        for line in widget.get("properties", {}).get("metrics", [])
        if isinstance(line[0], str)
    ]
    unrouted = [line[:4] for line in lines if line[1] == stats.UNROUTED]
    assert unrouted == [[stats.NAMESPACE, stats.UNROUTED, "service", "dataset-forwarder"]]
    assert '"QueueName", "${EventsQueue.QueueName}"' in body
    assert '"ApproximateNumberOfMessagesVisible", "QueueName", "${DeadLetterQueue.QueueName}"' in body


def test_outputs_name_everything_the_upstream_and_on_call_need(transformed: dict[str, Any]) -> None:
    outputs = transformed["Outputs"]
    assert {
        "EventsQueueUrl",
        "EventsQueueArn",
        "DeadLetterQueueUrl",
        "PublisherPolicyArn",
        "UpstreamPublisherRoleArn",
        "DashboardUrl",
        "UpstreamEnvironment",
    } <= set(outputs)
    environment = _sub(outputs["UpstreamEnvironment"]["Value"])
    assert environment == "DATASET_FORWARDER_QUEUE_URL=${EventsQueue} AWS_DEFAULT_REGION=${AWS::Region}"
