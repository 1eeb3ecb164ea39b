"""The SAM-transformed template.yaml deployed into moto's CloudFormation, its resources read back.

moto keeps queues, redrive, the table's keys and billing, the function (with its VPC configuration)
and its event source mapping, IAM roles and inline/managed policy documents, with every intrinsic
function and condition resolved. It drops what these tests therefore check on the transformed
template instead (test_template.py): the table's TTL, point-in-time recovery and deletion policy,
the function's LoggingConfig, Architectures and layers, CloudWatch alarms, queue policies, managed
policies attached to roles, and Rules.
"""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest

from dataset_forwarder_cli.local import sam as sam_stack
from tests.template.conftest import FULL_PARAMETERS, TEMPLATE, DeployedStack

# moto says so for every alarm and queue policy it skips; those are checked on the transformed template.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Tried to parse AWS..CloudWatch..Alarm:UserWarning"),
    pytest.mark.filterwarnings("ignore:Tried to parse AWS..SQS..QueuePolicy:UserWarning"),
]

DESIGN_ENVIRONMENT = {
    "TARGETS_PATH",
    "DEAD_LETTER_QUEUE_URL",
    "IDEMPOTENCY_TABLE",
    "MAX_ATTEMPTS",
    "CONFIG_TTL_S",
    "ALLOW_HTTP_TARGETS",
    # the MWAA, cross-account and secret-scope settings (docs/operate.md)
    "MWAA_ENVIRONMENTS",
    "TARGET_ROLE_ARNS",
    "SECRETS_PATH",
}
ACCOUNT = "123456789012"  # moto's
DAY_S = 24 * 3600


def _queue_attributes(stack: DeployedStack, logical_id: str) -> dict[str, str]:
    sqs = stack.session.client("sqs")
    url = stack.physical_ids()[logical_id]
    attributes: dict[str, str] = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return attributes


def _function(stack: DeployedStack) -> dict[str, Any]:
    name = stack.physical_ids()["ForwarderFunction"]
    configuration: dict[str, Any] = stack.session.client("lambda").get_function_configuration(FunctionName=name)
    return configuration


def _event_source_mapping(stack: DeployedStack) -> dict[str, Any]:
    function_arn = _function(stack)["FunctionArn"]
    mappings = stack.session.client("lambda").list_event_source_mappings()["EventSourceMappings"]
    [mapping] = [mapping for mapping in mappings if mapping["FunctionArn"] == function_arn]
    return dict(mapping)


def _policy_document(session: Any, policy_arn: str) -> dict[str, Any]:
    iam = session.client("iam")
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    document = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    return json.loads(document) if isinstance(document, str) else dict(document)


def _inline_policies(stack: DeployedStack) -> dict[str, list[dict[str, Any]]]:
    """The forwarder role's inline policies (its own and the conditional AWS::IAM::Policy ones): name -> statements."""
    iam = stack.session.client("iam")
    role = stack.physical_ids()["ForwarderRole"]
    policies = {}
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        # moto returns the inline policy CloudFormation gave it as a Python literal, not JSON.
        policies[name] = (document if isinstance(document, dict) else ast.literal_eval(document))["Statement"]
    return policies


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _resources(statement: dict[str, Any]) -> list[str]:
    # moto keeps an `!If [..., !Ref AWS::NoValue]` list item as None; CloudFormation drops it.
    return [resource for resource in _as_list(statement["Resource"]) if resource is not None]


def _mwaa_role_arns(environments: str, airflow_role: str) -> set[str]:
    return {f"arn:aws:airflow:*:{ACCOUNT}:role/{name}/{airflow_role}" for name in environments.split(",") if name}


@pytest.fixture(params=["default_stack", "full_stack"])
def stack(request: pytest.FixtureRequest) -> DeployedStack:
    deployed: DeployedStack = request.getfixturevalue(request.param)
    return deployed


def test_stack_reaches_create_complete(stack: DeployedStack) -> None:
    assert stack.status == "CREATE_COMPLETE", stack.failure_events()


def test_events_queue_is_encrypted_and_hides_a_record_for_six_function_timeouts(stack: DeployedStack) -> None:
    attributes = _queue_attributes(stack, "EventsQueue")
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert int(attributes["VisibilityTimeout"]) >= 6 * int(_function(stack)["Timeout"])
    assert int(attributes["MessageRetentionPeriod"]) == 4 * 24 * 3600


def test_events_queue_redrives_to_the_dead_letter_queue_only_after_max_attempts(
    stack: DeployedStack, template: dict[str, Any]
) -> None:
    redrive = json.loads(_queue_attributes(stack, "EventsQueue")["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == _queue_attributes(stack, "DeadLetterQueue")["QueueArn"]
    assert int(redrive["maxReceiveCount"]) > int(stack.parameter("MaxAttempts", template))
    assert int(redrive["maxReceiveCount"]) > int(template["Parameters"]["MaxAttempts"]["MaxValue"])


def test_dead_letter_queue_is_encrypted_and_keeps_dead_letters_14_days(stack: DeployedStack) -> None:
    attributes = _queue_attributes(stack, "DeadLetterQueue")
    assert attributes["SqsManagedSseEnabled"] == "true"
    assert int(attributes["MessageRetentionPeriod"]) == 14 * 24 * 3600
    assert "RedrivePolicy" not in attributes


def test_idempotency_table_has_powertools_key_and_is_on_demand(stack: DeployedStack) -> None:
    table = stack.session.client("dynamodb").describe_table(TableName=stack.physical_ids()["IdempotencyTable"])
    assert table["Table"]["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["Table"]["AttributeDefinitions"] == [{"AttributeName": "id", "AttributeType": "S"}]
    assert table["Table"]["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_event_source_mapping_reports_partial_failures_with_the_stack_parameters(
    stack: DeployedStack, template: dict[str, Any]
) -> None:
    mapping = _event_source_mapping(stack)
    assert mapping["EventSourceArn"] == _queue_attributes(stack, "EventsQueue")["QueueArn"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BatchSize"] == int(stack.parameter("BatchSize", template))
    assert mapping["MaximumBatchingWindowInSeconds"] == int(stack.parameter("MaximumBatchingWindowInSeconds", template))
    assert mapping["ScalingConfig"]["MaximumConcurrency"] == int(stack.parameter("MaximumConcurrency", template))
    assert mapping["ScalingConfig"]["MaximumConcurrency"] >= 2


def test_function_environment_is_the_design_contract(stack: DeployedStack, template: dict[str, Any]) -> None:
    environment = {key: str(value) for key, value in _function(stack)["Environment"]["Variables"].items()}
    resources = stack.physical_ids()
    assert set(environment) >= DESIGN_ENVIRONMENT
    assert {key for key in environment if key not in DESIGN_ENVIRONMENT} == {
        "IDEMPOTENCY_TTL_S",
        "FUNCTION_TIMEOUT_S",
        "AWS_STS_REGIONAL_ENDPOINTS",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
        "POWERTOOLS_TRACE_DISABLED",
    }
    assert environment["TARGETS_PATH"] == stack.parameter("TargetsPath", template)
    assert environment["SECRETS_PATH"] == stack.parameter("SecretsPath", template)
    assert environment["MWAA_ENVIRONMENTS"] == stack.parameter("MwaaEnvironments", template)
    assert environment["TARGET_ROLE_ARNS"] == stack.parameter("TargetRoleArns", template)
    assert environment["AWS_STS_REGIONAL_ENDPOINTS"] == "regional"
    assert environment["DEAD_LETTER_QUEUE_URL"] == resources["DeadLetterQueue"]
    assert environment["IDEMPOTENCY_TABLE"] == resources["IdempotencyTable"]
    assert environment["MAX_ATTEMPTS"] == stack.parameter("MaxAttempts", template)
    assert environment["CONFIG_TTL_S"] == stack.parameter("ConfigTtlSeconds", template)
    assert environment["ALLOW_HTTP_TARGETS"] == "false"
    assert environment["POWERTOOLS_SERVICE_NAME"] == "dataset-forwarder"
    assert environment["POWERTOOLS_METRICS_NAMESPACE"] == "DatasetForwarder"
    assert environment["POWERTOOLS_LOG_LEVEL"] == stack.parameter("LogLevel", template)


def test_idempotency_records_outlive_every_copy_of_an_event(stack: DeployedStack, template: dict[str, Any]) -> None:
    """A dead letter lives 14 days, then a redrive retries it: the delivery record must last longer."""
    from dataset_forwarder.settings import Settings

    ttl_s = int(_function(stack)["Environment"]["Variables"]["IDEMPOTENCY_TTL_S"])
    dlq_retention_s = int(_queue_attributes(stack, "DeadLetterQueue")["MessageRetentionPeriod"])
    retry_window_s = int(template["Parameters"]["MaxAttempts"]["MaxValue"]) * Settings.retry_max_delay_s
    assert ttl_s == dlq_retention_s + DAY_S
    assert ttl_s - dlq_retention_s > retry_window_s
    assert ttl_s > int(_queue_attributes(stack, "EventsQueue")["MessageRetentionPeriod"])
    environment = {key: str(value) for key, value in _function(stack)["Environment"]["Variables"].items()}
    assert Settings.from_env(environment).idempotency_ttl_s == ttl_s


def test_function_settings_read_by_the_code_are_valid(stack: DeployedStack) -> None:
    from dataset_forwarder.settings import Settings

    environment = {key: str(value) for key, value in _function(stack)["Environment"]["Variables"].items()}
    settings = Settings.from_env(environment)
    assert settings.dead_letter_queue_url == stack.outputs["DeadLetterQueueUrl"]
    assert settings.allow_http_targets is False


def test_function_runs_the_handler_on_python_313_with_reserved_concurrency(
    stack: DeployedStack, template: dict[str, Any]
) -> None:
    function = _function(stack)
    assert function["Runtime"] == "python3.13"
    assert function["Handler"] == "app.lambda_handler"
    assert function["Timeout"] == 60
    assert function["EphemeralStorage"] == {"Size": 512}
    concurrency = stack.session.client("lambda").get_function_concurrency(FunctionName=function["FunctionName"])
    reserved = int(stack.parameter("ReservedConcurrency", template))
    assert concurrency["ReservedConcurrentExecutions"] == reserved
    assert reserved >= int(stack.parameter("MaximumConcurrency", template))


def test_function_logs_to_its_own_log_group_with_retention(stack: DeployedStack, template: dict[str, Any]) -> None:
    name = stack.physical_ids()["ForwarderLogGroup"]
    [group] = stack.session.client("logs").describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    assert group["retentionInDays"] == int(stack.parameter("LogRetentionInDays", template))


def test_forwarder_role_reaches_only_this_stacks_resources(stack: DeployedStack, template: dict[str, Any]) -> None:
    iam = stack.session.client("iam")
    resources = stack.physical_ids()
    role = resources["ForwarderRole"]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    statements = [statement for policy in _inline_policies(stack).values() for statement in policy]
    queue_arn = _queue_attributes(stack, "EventsQueue")["QueueArn"]
    dlq_arn = _queue_attributes(stack, "DeadLetterQueue")["QueueArn"]
    table_arn = stack.session.client("dynamodb").describe_table(TableName=resources["IdempotencyTable"])["Table"][
        "TableArn"
    ]
    parameter_prefix = "arn:aws:ssm:us-east-1:123456789012:parameter"
    targets, secrets = stack.parameter("TargetsPath", template), stack.parameter("SecretsPath", template)
    allowed = {
        "sqs": {queue_arn, dlq_arn},
        "dynamodb": {table_arn},
        "ssm": {f"{parameter_prefix}{targets}", f"{parameter_prefix}{targets}/*", f"{parameter_prefix}{secrets}/*"},
        "logs": {f"arn:aws:logs:us-east-1:123456789012:log-group:{resources['ForwarderLogGroup']}:*"},
        "kms": {"arn:aws:kms:us-east-1:123456789012:key/*"},
        "airflow": _mwaa_role_arns(
            stack.parameter("MwaaEnvironments", template), stack.parameter("MwaaAirflowRole", template)
        ),
        "sts": {arn for arn in stack.parameter("TargetRoleArns", template).split(",") if arn},
    }
    for statement in statements:
        assert statement["Effect"] == "Allow"
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        services = {action.split(":")[0] for action in actions}
        assert len(services) == 1, statement
        assert set(_resources(statement)) <= allowed[services.pop()], statement


def test_mwaa_and_assume_role_grants_exist_only_when_parameters_name_them(
    default_stack: DeployedStack, full_stack: DeployedStack, any_mwaa_stack: DeployedStack
) -> None:
    assert set(_inline_policies(default_stack)) == {"forwarder"}
    assert not {"ForwarderMwaaPolicy", "ForwarderAssumeTargetRolesPolicy"} & set(default_stack.physical_ids())
    assert set(_inline_policies(any_mwaa_stack)) == {"forwarder", "invoke-mwaa-rest-api"}
    assert set(_inline_policies(full_stack)) == {"forwarder", "invoke-mwaa-rest-api", "assume-target-roles"}


def test_mwaa_grant_names_each_environment_as_the_airflow_role(
    full_stack: DeployedStack, any_mwaa_stack: DeployedStack
) -> None:
    [named] = _inline_policies(full_stack)["invoke-mwaa-rest-api"]
    assert _as_list(named["Action"]) == ["airflow:InvokeRestApi"]
    assert sorted(_resources(named)) == [
        f"arn:aws:airflow:*:{ACCOUNT}:role/team-c-prod/Op",
        f"arn:aws:airflow:*:{ACCOUNT}:role/team-d-prod/Op",
    ]
    [any_environment] = _inline_policies(any_mwaa_stack)["invoke-mwaa-rest-api"]
    assert _as_list(any_environment["Action"]) == ["airflow:InvokeRestApi"]
    assert _resources(any_environment) == [f"arn:aws:airflow:*:{ACCOUNT}:role/*/User"]  # any environment, as User


def test_mwaa_grant_takes_up_to_ten_environments(aws_session: Any, transformed: dict[str, Any]) -> None:
    names = [f"env-{index}" for index in range(1, 11)]
    parameters = {"MwaaEnvironments": ",".join(names)}
    description = sam_stack.deploy(aws_session, "forwarder-ten-mwaa", parameters, template_path=TEMPLATE)
    stack = DeployedStack(aws_session, description, parameters)
    assert stack.status == "CREATE_COMPLETE", stack.failure_events()
    [statement] = _inline_policies(stack)["invoke-mwaa-rest-api"]
    assert sorted(_resources(statement)) == sorted(_mwaa_role_arns(",".join(names), "User"))


def test_assume_role_grant_is_exactly_the_target_role_arns(full_stack: DeployedStack) -> None:
    [statement] = _inline_policies(full_stack)["assume-target-roles"]
    assert _as_list(statement["Action"]) == ["sts:AssumeRole"]
    assert _resources(statement) == FULL_PARAMETERS["TargetRoleArns"].split(",")
    assert "Condition" not in statement


def test_function_joins_the_vpc_only_when_subnets_are_given(
    default_stack: DeployedStack, full_stack: DeployedStack
) -> None:
    assert not (_function(default_stack).get("VpcConfig") or {}).get("SubnetIds")
    assert "ForwarderNetworkPolicy" not in default_stack.physical_ids()
    vpc = _function(full_stack)["VpcConfig"]
    assert vpc["SubnetIds"] == full_stack.parameters["SubnetIds"].split(",")
    assert vpc["SecurityGroupIds"] == full_stack.parameters["SecurityGroupIds"].split(",")


def test_vpc_network_interface_policy_is_scoped_to_this_account(full_stack: DeployedStack) -> None:
    document = _policy_document(full_stack.session, full_stack.physical_ids()["ForwarderNetworkPolicy"])
    granted = {
        action: set(_resources(statement))
        for statement in document["Statement"]
        for action in _as_list(statement["Action"])
        if statement["Effect"] == "Allow"
    }
    prefix = f"arn:aws:ec2:us-east-1:{ACCOUNT}"
    interfaces = {f"{prefix}:network-interface/*"}
    assert granted == {
        "ec2:CreateNetworkInterface": interfaces | {f"{prefix}:subnet/*", f"{prefix}:security-group/*"},
        "ec2:DeleteNetworkInterface": interfaces,
        "ec2:AssignPrivateIpAddresses": interfaces,
        "ec2:UnassignPrivateIpAddresses": interfaces,
        "ec2:DescribeNetworkInterfaces": {"*"},  # EC2 Describe calls accept no other resource
        "ec2:DescribeSubnets": {"*"},
    }


def test_publisher_policy_allows_only_send_message_on_the_events_queue(stack: DeployedStack) -> None:
    document = _policy_document(stack.session, stack.outputs["PublisherPolicyArn"])
    [statement] = document["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Action"] in ("sqs:SendMessage", ["sqs:SendMessage"])
    assert statement["Resource"] in (stack.outputs["EventsQueueArn"], [stack.outputs["EventsQueueArn"]])
    assert "Condition" not in statement


def test_upstream_role_exists_only_when_a_trusted_principal_is_given(
    default_stack: DeployedStack, full_stack: DeployedStack
) -> None:
    assert "UpstreamPublisherRole" not in default_stack.physical_ids()
    assert "UpstreamPublisherRoleArn" not in default_stack.outputs
    iam = full_stack.session.client("iam")
    role = iam.get_role(RoleName=full_stack.physical_ids()["UpstreamPublisherRole"])["Role"]
    assert full_stack.outputs["UpstreamPublisherRoleArn"] == role["Arn"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"AWS": FULL_PARAMETERS["UpstreamPrincipalArn"]},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": FULL_PARAMETERS["UpstreamExternalId"]}},
        }
    ]


def test_alarm_topic_mails_the_given_address_only_when_one_is_given(
    default_stack: DeployedStack, full_stack: DeployedStack
) -> None:
    assert "AlarmTopic" not in default_stack.physical_ids()
    topic_arn = full_stack.physical_ids()["AlarmTopic"]
    subscriptions = full_stack.session.client("sns").list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [(item["Protocol"], item["Endpoint"]) for item in subscriptions] == [
        ("email", FULL_PARAMETERS["AlarmEmail"])
    ]


def test_outputs_give_the_upstream_environment_to_paste(stack: DeployedStack) -> None:
    outputs = stack.outputs
    variables = dict(pair.split("=", 1) for pair in outputs["UpstreamEnvironment"].split())
    queue_name = outputs["EventsQueueArn"].rsplit(":", 1)[1]
    # moto server answers get_queue_url with its own endpoint; CloudFormation gives the public URL.
    public_url = f"https://sqs.us-east-1.amazonaws.com/123456789012/{queue_name}"
    queue_url = stack.session.client("sqs").get_queue_url(QueueName=queue_name)["QueueUrl"]
    assert queue_url.endswith(f"/123456789012/{queue_name}")
    assert variables == {"DATASET_FORWARDER_QUEUE_URL": public_url, "AWS_DEFAULT_REGION": "us-east-1"}
    assert outputs["EventsQueueUrl"] == public_url == stack.physical_ids()["EventsQueue"]
    assert outputs["DeadLetterQueueUrl"] == stack.physical_ids()["DeadLetterQueue"]
    role = stack.session.client("iam").get_role(RoleName=stack.physical_ids()["ForwarderRole"])["Role"]
    assert outputs["ForwarderRoleArn"] == role["Arn"]
    assert outputs["DashboardUrl"].startswith(
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1"
    )
    assert outputs["DashboardUrl"].endswith(f"#dashboards:name={stack.physical_ids()['Dashboard']}")


def test_dashboard_body_is_valid_json_naming_this_stacks_queues(stack: DeployedStack) -> None:
    resources = stack.physical_ids()
    body = stack.session.client("cloudwatch").get_dashboard(DashboardName=resources["Dashboard"])["DashboardBody"]
    text = json.dumps(json.loads(body))
    for logical_id in ("EventsQueue", "DeadLetterQueue"):
        assert json.dumps(resources[logical_id].rsplit("/", 1)[1]) in text
    assert json.dumps(resources["ForwarderFunction"]) in text
    assert '"label": "${PROP(\'Dim.target\')}"' in text  # one legend entry per target
