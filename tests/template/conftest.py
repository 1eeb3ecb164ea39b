"""Template tier: template.yaml read, SAM-transformed and deployed into moto's CloudFormation.

The transform and the deployment are the product's own (`dataset_forwarder_cli.local.sam`, which the local
stack uses too), so these tests check what `dataset-forwarder local up` and `sam deploy` create.

The stacks are created once per session (moto server on 127.0.0.1); tests only read them back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dataset_forwarder_cli.local import sam as sam_stack
from devkit.moto_env import MotoServer, use_moto

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# Every option switched away from its default, so a value that does not reach the resource shows.
# SubnetIds and SecurityGroupIds are added by `full_stack`, from a VPC it creates in moto first.
FULL_PARAMETERS = {
    "TargetsPath": "/team-a/forwarder/targets",
    "SecretsPath": "/team-a/forwarder/secrets",
    "ConfigTtlSeconds": "30",
    "MaxAttempts": "7",
    "BatchSize": "25",
    "MaximumBatchingWindowInSeconds": "5",
    "MaximumConcurrency": "3",
    "ReservedConcurrency": "8",
    "UpstreamPrincipalArn": "arn:aws:iam::111122223333:role/astro-workload-identity",
    "UpstreamExternalId": "team-a-7f3c9e",
    "MwaaEnvironments": "team-c-prod,team-d-prod",
    "MwaaAirflowRole": "Op",
    "TargetRoleArns": (
        "arn:aws:iam::210987654321:role/dataset-forwarder-invoke,arn:aws:iam::210987654322:role/forwarder/invoke"
    ),
    "AlarmEmail": "oncall@example.com",
    "OldestMessageAgeAlarmSeconds": "600",
    "DeadLetterAgeAlarmSeconds": "432000",
    "LogLevel": "DEBUG",
    "LogRetentionInDays": "14",
}


@pytest.fixture(scope="session")
def template() -> dict[str, Any]:
    return sam_stack.load_template(TEMPLATE)


@pytest.fixture(scope="session")
def transformed(template: dict[str, Any]) -> dict[str, Any]:
    try:
        import samtranslator  # noqa: F401
    except ImportError:
        reason = "aws-sam-translator is not installed in this venv (requirements-dev.txt should pin it)"
        if os.environ.get("SAM_VENV"):
            pytest.fail(f"{reason}; `make template-test` runs every template check")  # no silent skip there
        pytest.skip(reason)
    return sam_stack.transformed(template)


@pytest.fixture(scope="session")
def aws_session() -> Iterator[Any]:
    """A boto3 session on a moto server of its own; fake credentials, us-east-1, no profile."""
    import boto3

    with MotoServer() as server, pytest.MonkeyPatch.context() as patch:
        use_moto(patch, server.endpoint)
        yield boto3.session.Session()


@dataclass
class DeployedStack:
    """A stack created from the shipped template, with what the tests read back from moto."""

    session: Any
    description: dict[str, Any]
    parameters: dict[str, str]

    @property
    def status(self) -> str:
        return str(self.description["StackStatus"])

    @property
    def outputs(self) -> dict[str, str]:
        return {output["OutputKey"]: output["OutputValue"] for output in self.description.get("Outputs", [])}

    def physical_ids(self) -> dict[str, str]:
        cloudformation = self.session.client("cloudformation")
        summaries = cloudformation.list_stack_resources(StackName=self.description["StackName"])
        return {item["LogicalResourceId"]: item["PhysicalResourceId"] for item in summaries["StackResourceSummaries"]}

    def failure_events(self) -> list[str]:
        events = self.session.client("cloudformation").describe_stack_events(StackName=self.description["StackName"])
        return [
            f"{event['LogicalResourceId']}: {event.get('ResourceStatusReason')}"
            for event in events["StackEvents"]
            if event["ResourceStatus"].endswith("FAILED")
        ]

    def parameter(self, name: str, template: dict[str, Any]) -> str:
        return self.parameters.get(name, str(template["Parameters"][name].get("Default", "")))


@pytest.fixture(scope="session")
def default_stack(aws_session: Any, transformed: dict[str, Any]) -> DeployedStack:
    """The stack as `sam deploy --guided` makes it when every default is accepted."""
    return DeployedStack(aws_session, sam_stack.deploy(aws_session, "forwarder-defaults", template_path=TEMPLATE), {})


def _private_network(session: Any) -> dict[str, str]:
    """A VPC with two subnets and a security group in moto: SubnetIds and SecurityGroupIds for a stack."""
    ec2 = session.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        ec2.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]
        for cidr, zone in (("10.20.1.0/24", "us-east-1a"), ("10.20.2.0/24", "us-east-1b"))
    ]
    group = ec2.create_security_group(VpcId=vpc, GroupName="forwarder", Description="forwarder egress")["GroupId"]
    return {"SubnetIds": ",".join(subnets), "SecurityGroupIds": group}


@pytest.fixture(scope="session")
def full_stack(aws_session: Any, transformed: dict[str, Any]) -> DeployedStack:
    """Every parameter changed: VPC, MWAA environments, target roles, upstream role, alarm e-mail, paths, limits."""
    parameters = {**FULL_PARAMETERS, **_private_network(aws_session)}
    description = sam_stack.deploy(aws_session, "forwarder-full", parameters, template_path=TEMPLATE)
    return DeployedStack(aws_session, description, parameters)


@pytest.fixture(scope="session")
def any_mwaa_stack(aws_session: Any, transformed: dict[str, Any]) -> DeployedStack:
    """Defaults, except that every MWAA environment of the account is allowed (`*`)."""
    parameters = {"MwaaEnvironments": "*"}
    description = sam_stack.deploy(aws_session, "forwarder-any-mwaa", parameters, template_path=TEMPLATE)
    return DeployedStack(aws_session, description, parameters)
