"""template.yaml read as written and as the SAM transform turns it into CloudFormation.

Least privilege is proven on the synthesized policies, i.e. after the transform, where SAM would
have added its own policies. The only `Resource: "*"` is EC2's two Describe calls in a VPC
deployment, which accept no other resource: the function sends metrics as EMF log lines (no
cloudwatch:PutMetricData), X-Ray is off (xray:PutTraceSegments would need "*"), and the execution
role is written out instead of SAM's AWS managed policies, which grant on "*".
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
# EC2 authorizes these on "*" only (Service Authorization Reference); Lambda needs them in a VPC.
UNSCOPABLE_READS = {"ec2:DescribeNetworkInterfaces", "ec2:DescribeSubnets"}
NO_VALUE = {"Ref": "AWS::NoValue"}


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
    assert function_globals["Runtime"] == "python3.13"
    assert layer["Properties"]["CompatibleRuntimes"] == [function_globals["Runtime"]]
    assert layer["Properties"]["CompatibleArchitectures"] == function_globals["Architectures"] == ["arm64"]
    assert layer["Metadata"]["BuildArchitecture"] == "arm64"
    # The layer's Makefile installs wheels for that platform and that interpreter.
    makefile = (ROOT / layer["Properties"]["ContentUri"] / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^LAYER_PLATFORM \?= manylinux\w*_aarch64$", makefile, re.MULTILINE)
    assert "--python-version 3.13" in makefile
    assert re.search(r"^LAYER_PYTHON \?= python3\.13$", makefile, re.MULTILINE)
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
        if "*" in _as_list(statement["Resource"]):
            assert set(_as_list(statement["Action"])) <= UNSCOPABLE_READS, statement


def test_only_the_vpc_policy_grants_on_every_resource_and_only_describe_calls(transformed: dict[str, Any]) -> None:
    everywhere = {
        name: statement
        for name, document in _policy_documents(transformed).items()
        for statement in document["Statement"]
        if "*" in _as_list(statement["Resource"])
    }
    assert list(everywhere) == ["ForwarderNetworkPolicy"]
    assert set(_as_list(everywhere["ForwarderNetworkPolicy"]["Action"])) == UNSCOPABLE_READS
    assert transformed["Resources"]["ForwarderNetworkPolicy"]["Condition"] == "HasVpc"


def test_function_role_carries_no_aws_managed_policies(transformed: dict[str, Any]) -> None:
    role_arn = _function(transformed)["Properties"]["Role"]
    assert role_arn == {"Fn::GetAtt": ["ForwarderRole", "Arn"]}
    role = transformed["Resources"]["ForwarderRole"]["Properties"]
    # only the stack's own network interface policy, only in a VPC (not AWSLambdaVPCAccessExecutionRole)
    assert role["ManagedPolicyArns"] == {"Fn::If": ["HasVpc", [{"Ref": "ForwarderNetworkPolicy"}], NO_VALUE]}
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
    # Targets may be SecureStrings too (docs/operate.md), so the targets path keeps decryption, scoped
    # like the secrets: through SSM only, for parameters below the two paths only.
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
    assert trust["Condition"] == {"StringEquals": {"sts:ExternalId": {"Ref": "UpstreamExternalId"}}}


def test_a_trusted_principal_cannot_be_given_without_an_external_id(transformed: dict[str, Any]) -> None:
    rule = transformed["Rules"]["UpstreamPrincipalNeedsExternalId"]
    assert rule["RuleCondition"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "UpstreamPrincipalArn"}, ""]}]}
    [assertion] = rule["Assertions"]
    assert assertion["Assert"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "UpstreamExternalId"}, ""]}]}
    pattern = re.compile(transformed["Parameters"]["UpstreamExternalId"]["AllowedPattern"])
    for good in ("", "team-a-7f3c9e"):
        assert pattern.fullmatch(good), good
    for bad in ("x", "has space"):
        assert not pattern.fullmatch(bad), bad
    assert transformed["Outputs"]["UpstreamPublisherRoleArn"]["Condition"] == "HasUpstreamPrincipal"


def test_mwaa_policy_is_conditional_and_each_position_reads_its_own_environment(transformed: dict[str, Any]) -> None:
    policy = transformed["Resources"]["ForwarderMwaaPolicy"]
    assert policy["Condition"] == "HasMwaaEnvironments"
    assert policy["Properties"]["Roles"] == [{"Ref": "ForwarderRole"}]
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert _as_list(statement["Action"]) == ["airflow:InvokeRestApi"]
    arn = "arn:${AWS::Partition}:airflow:*:${AWS::AccountId}:role/${Name}/${MwaaAirflowRole}"
    first, *others = statement["Resource"]
    assert first == {"Fn::Sub": [arn, {"Name": {"Fn::Select": [0, {"Fn::Split": [",", {"Ref": "MwaaEnvironments"}]}]}}]}
    padded = {"Fn::Split": [",", {"Fn::Sub": "${MwaaEnvironments},,,,,,,,,"}]}
    assert len(others) == 9
    for index, entry in enumerate(others, start=1):
        condition, value, otherwise = entry["Fn::If"]
        assert otherwise == NO_VALUE
        name = {"Fn::Select": [index, padded]}
        assert value == {"Fn::Sub": [arn, {"Name": name}]}
        assert transformed["Conditions"][condition] == {"Fn::Not": [{"Fn::Equals": [name, ""]}]}
    assert transformed["Conditions"]["HasMwaaEnvironments"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "MwaaEnvironments"}, ""]}]
    }


def test_mwaa_environments_and_target_roles_accept_only_names_and_plain_arns(transformed: dict[str, Any]) -> None:
    environments = re.compile(transformed["Parameters"]["MwaaEnvironments"]["AllowedPattern"])
    for good in ("", "*", "team-c-prod", "a,b_2,C-3", ",".join(f"e{i}" for i in range(10))):
        assert environments.fullmatch(good), good
    for bad in ("a, b", "a,*", "*,a", "a,", "1env", ",".join(f"e{i}" for i in range(11))):
        assert not environments.fullmatch(bad), bad
    # the least built-in Airflow role with can_create on DAG Runs and (FAB provider's current role
    # definitions) Assets; Op adds connections, variables and pools (README "MWAA targets")
    assert transformed["Parameters"]["MwaaAirflowRole"]["Default"] == "User"
    roles = re.compile(transformed["Parameters"]["TargetRoleArns"]["AllowedPattern"])
    role = "arn:aws:iam::210987654321:role/dataset-forwarder-invoke"
    for good in ("", role, f"{role},{role}2"):
        assert roles.fullmatch(good), good
    for bad in ("*", "arn:aws:iam::210987654321:role/*", "arn:aws:iam::*:role/x", f"{role}, {role}"):
        assert not roles.fullmatch(bad), bad


def test_assume_role_policy_is_conditional_and_grants_exactly_the_listed_roles(transformed: dict[str, Any]) -> None:
    policy = transformed["Resources"]["ForwarderAssumeTargetRolesPolicy"]
    assert policy["Condition"] == "HasTargetRoleArns"
    assert policy["Properties"]["Roles"] == [{"Ref": "ForwarderRole"}]
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert _as_list(statement["Action"]) == ["sts:AssumeRole"]
    assert statement["Resource"] == {"Fn::Split": [",", {"Ref": "TargetRoleArns"}]}
    assert transformed["Conditions"]["HasTargetRoleArns"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "TargetRoleArns"}, ""]}]
    }


def test_function_environment_carries_the_allow_lists_and_secrets_path(transformed: dict[str, Any]) -> None:
    variables = _function(transformed)["Properties"]["Environment"]["Variables"]
    assert variables["MWAA_ENVIRONMENTS"] == {"Ref": "MwaaEnvironments"}
    assert variables["TARGET_ROLE_ARNS"] == {"Ref": "TargetRoleArns"}
    assert variables["SECRETS_PATH"] == {"Ref": "SecretsPath"}


def test_function_is_told_its_own_timeout(transformed: dict[str, Any]) -> None:
    """Targets whose timeout_s could never fit are refused at parse time: the function must know its timeout."""
    properties = _function(transformed)["Properties"]
    timeout = properties.get("Timeout", transformed.get("Globals", {}).get("Function", {}).get("Timeout"))
    assert properties["Environment"]["Variables"]["FUNCTION_TIMEOUT_S"] == str(timeout)


def test_vpc_is_optional_and_needs_subnets_and_security_groups_together(transformed: dict[str, Any]) -> None:
    properties = _function(transformed)["Properties"]
    assert properties["VpcConfig"] == {
        "Fn::If": [
            "HasVpc",
            {"SubnetIds": {"Ref": "SubnetIds"}, "SecurityGroupIds": {"Ref": "SecurityGroupIds"}},
            NO_VALUE,
        ]
    }
    assert transformed["Conditions"]["HasVpc"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "SubnetIds"}]}, ""]}]
    }
    for name in ("SubnetIds", "SecurityGroupIds"):
        assert transformed["Parameters"][name]["Type"] == "CommaDelimitedList"
        assert transformed["Parameters"][name]["Default"] == ""
    [assertion] = transformed["Rules"]["SubnetsAndSecurityGroupsTogether"]["Assertions"]
    both_empty, both_set = assertion["Assert"]["Fn::Or"]
    empty = [{"Fn::EachMemberEquals": [{"Ref": name}, ""]} for name in ("SubnetIds", "SecurityGroupIds")]
    assert both_empty == {"Fn::And": empty}
    assert both_set == {"Fn::And": [{"Fn::Not": [condition]} for condition in empty]}


def test_deploy_guided_groups_every_parameter(template: dict[str, Any]) -> None:
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    grouped = [name for group in groups for name in group["Parameters"]]
    assert sorted(grouped) == sorted(template["Parameters"])
    labels = {group["Label"]["default"]: group["Parameters"] for group in groups}
    assert ["SubnetIds", "SecurityGroupIds"] in labels.values()
    assert ["MwaaEnvironments", "MwaaAirflowRole", "TargetRoleArns"] in labels.values()


def test_both_queues_refuse_requests_without_tls(transformed: dict[str, Any]) -> None:
    [policy] = _resources_of_type(transformed, "AWS::SQS::QueuePolicy").values()
    assert policy["Properties"]["Queues"] == [{"Ref": "EventsQueue"}, {"Ref": "DeadLetterQueue"}]
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny"  # grants nothing: access stays with IAM
    assert statement["Principal"] == "*"
    assert statement["Action"] == "sqs:*"
    assert statement["Resource"] == [
        {"Fn::GetAtt": ["EventsQueue", "Arn"]},
        {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
    ]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


# -- the synthesized template: what moto does not keep --------------------------------------------


def test_dead_letters_and_delivery_records_survive_stack_deletion_and_replacement(transformed: dict[str, Any]) -> None:
    for name in ("DeadLetterQueue", "IdempotencyTable"):
        resource = transformed["Resources"][name]
        assert (resource.get("DeletionPolicy"), resource.get("UpdateReplacePolicy")) == ("Retain", "Retain"), name


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


def _metric_alarms(transformed: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Alarms on one metric, by (namespace, metric, the queue or function they watch)."""
    alarms = {}
    for body in _resources_of_type(transformed, "AWS::CloudWatch::Alarm").values():
        properties = body["Properties"]
        if "MetricName" in properties:
            [dimension] = properties["Dimensions"]
            watched = next(iter(dimension["Value"].values()))
            watched = watched[0] if isinstance(watched, list) else watched
            alarms[(properties["Namespace"], properties["MetricName"], watched)] = properties
    return alarms


def test_alarms_cover_dead_letters_stuck_events_errors_and_throttles(transformed: dict[str, Any]) -> None:
    alarms = _metric_alarms(transformed)
    assert set(alarms) == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", "DeadLetterQueue"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", "EventsQueue"),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", "DeadLetterQueue"),
        ("AWS/Lambda", "Errors", "ForwarderFunction"),
        ("AWS/Lambda", "Throttles", "ForwarderFunction"),
    }
    dead_letters = alarms[("AWS/SQS", "ApproximateNumberOfMessagesVisible", "DeadLetterQueue")]
    assert dead_letters["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}
    ]
    assert (dead_letters["Threshold"], dead_letters["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    oldest = alarms[("AWS/SQS", "ApproximateAgeOfOldestMessage", "EventsQueue")]
    assert oldest["Threshold"] == {"Ref": "OldestMessageAgeAlarmSeconds"}
    assert transformed["Parameters"]["OldestMessageAgeAlarmSeconds"]["Default"] == 900
    actions = {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}], {"Ref": "AWS::NoValue"}]}
    for alarm in _resources_of_type(transformed, "AWS::CloudWatch::Alarm").values():
        assert alarm["Properties"]["AlarmActions"] == actions


def test_dead_letters_alarm_well_before_they_expire(transformed: dict[str, Any]) -> None:
    alarm = _metric_alarms(transformed)[("AWS/SQS", "ApproximateAgeOfOldestMessage", "DeadLetterQueue")]
    assert alarm["Threshold"] == {"Ref": "DeadLetterAgeAlarmSeconds"}
    assert (alarm["Statistic"], alarm["ComparisonOperator"]) == ("Maximum", "GreaterThanOrEqualToThreshold")
    parameter = transformed["Parameters"]["DeadLetterAgeAlarmSeconds"]
    retention = transformed["Resources"]["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"]
    assert parameter["Default"] == 7 * 24 * 3600
    assert parameter["MaxValue"] <= retention - 2 * 24 * 3600  # even the latest alarm leaves two days to redrive


def test_broken_target_parameters_raise_an_alarm(transformed: dict[str, Any]) -> None:
    from dataset_forwarder import stats

    [alarm] = [
        body["Properties"]
        for body in _resources_of_type(transformed, "AWS::CloudWatch::Alarm").values()
        if "Metrics" in body["Properties"]
    ]
    [query] = alarm["Metrics"]
    variables = _function(transformed)["Properties"]["Environment"]["Variables"]
    assert variables["POWERTOOLS_METRICS_NAMESPACE"] == stats.NAMESPACE
    # every target's series: no SCHEMA(), so the `target` dimension the function adds is summed over
    assert query["Expression"] == (
        f"SELECT SUM({stats.INVALID_TARGET_CONFIG}) FROM {stats.NAMESPACE} "
        f"WHERE service = '{variables['POWERTOOLS_SERVICE_NAME']}'"
    )
    assert query["ReturnData"] is True
    assert (alarm["Threshold"], alarm["ComparisonOperator"]) == (1, "GreaterThanOrEqualToThreshold")
    assert alarm["TreatMissingData"] == "notBreaching"


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
        "ForwarderRoleArn",
        "DashboardUrl",
        "UpstreamEnvironment",
    } <= set(outputs)
    environment = _sub(outputs["UpstreamEnvironment"]["Value"])
    assert environment == "DATASET_FORWARDER_QUEUE_URL=${EventsQueue} AWS_DEFAULT_REGION=${AWS::Region}"


def test_security_md_backs_each_template_claim_with_an_existing_test() -> None:
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    section = text.split("## What the template enforces", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+)`", section))
    defined = {
        match
        for path in (ROOT / "tests" / "template").glob("test_*.py")
        for match in re.findall(r"^def (test_\w+)\(", path.read_text(encoding="utf-8"), re.MULTILINE)
    }
    assert len(named) >= 20
    assert named <= defined, sorted(named - defined)
    claims = [line for line in section.splitlines() if line.startswith("- **")]
    assert claims
    for claim in section.split("\n- **")[1:]:
        assert re.search(r"`test_\w+`", claim), claim.splitlines()[0]
