"""`dataset-forwarder status` against moto server: queue depths, the oldest event's age, dead letters grouped."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner, Result

from dataset_forwarder_cli.local.commands import is_our_process
from dataset_forwarder_cli.local.stack import DeployedStack
from dataset_forwarder_cli.main import cli
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.moto_env import DEFAULT_REGION
from tests.integration.conftest import wait_for

BEARS = "s3://bucket/bears"


def _status(stack: ForwarderStack, *args: str, env: dict[str, str | None] | None = None) -> Result:
    base = ["--queue-url", stack.queue_url, "--dlq-url", stack.dlq_url]
    return CliRunner().invoke(cli, [*base, "status", *args], env=env, catch_exceptions=False)


def _dead_letter(stack: ForwarderStack, target: str, error: str, **attributes: str) -> None:
    values = {"target": target, "error": error, "detail": "d", "attempts": "3", **attributes}
    stack.sqs.send_message(
        QueueUrl=stack.dlq_url,
        MessageBody=json.dumps(envelope(BEARS, only_targets=[target])),
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in values.items()},
    )


@pytest.fixture
def busy(stack: ForwarderStack) -> ForwarderStack:
    """3 events waiting, 1 held back for a retry (received, invisible), 2 delayed; 4 dead letters, 2 targets."""
    for _ in range(4):
        stack.send(envelope(BEARS))
    held = stack.sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=1, VisibilityTimeout=600)
    assert len(held["Messages"]) == 1
    for _ in range(2):
        stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps(envelope(BEARS)), DelaySeconds=900)
    _dead_letter(stack, "team-b", "auth")
    _dead_letter(stack, "team-b", "auth", unconfirmed="true")
    _dead_letter(stack, "team-b", "timeout")
    _dead_letter(stack, "team-c", "timeout")
    return stack


def _visible(stack: ForwarderStack, url: str) -> int:
    attributes = stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def test_status_counts_the_queue_and_groups_dead_letters_without_consuming_anything(busy: ForwarderStack) -> None:
    as_json = _status(busy, "--json")
    people = _status(busy, env={"COLUMNS": "200"})

    assert as_json.exit_code == 0, as_json.output
    report = json.loads(as_json.output)
    events, dead = report["events_queue"], report["dead_letter_queue"]
    assert (events["visible"], events["in_flight"], events["delayed"]) == (3, 1, 2)
    assert events["oldest_message_age"]["seconds"] is None
    assert events["oldest_message_age"]["source"].startswith("unknown: no CloudWatch")
    assert (dead["visible"], dead["read"], dead["all_read"]) == (4, 4, True)
    assert [(g["target"], g["error"], g["count"], g["unconfirmed"]) for g in dead["by_target_and_error"]] == [
        ("team-b", "auth", 2, 1),
        ("team-b", "timeout", 1, 0),
        ("team-c", "timeout", 1, 0),
    ]
    assert people.exit_code == 0, people.output
    assert "in flight / retry wait" in people.output
    assert "dead letters by target and error (all)" in people.output
    assert "team-c" in people.output
    # nothing was consumed, and no event was received (a receive counts towards the redrive to the DLQ)
    assert _visible(busy, busy.dlq_url) == 4
    waiting = busy.sqs.receive_message(
        QueueUrl=busy.queue_url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["ApproximateReceiveCount"]
    )["Messages"]
    assert [m["Attributes"]["ApproximateReceiveCount"] for m in waiting] == ["1", "1", "1"]


def test_status_shows_cloudwatchs_age_of_the_oldest_event_when_it_has_one(busy: ForwarderStack) -> None:
    name = busy.queue_url.rsplit("/", 1)[-1]
    boto3.client("cloudwatch").put_metric_data(
        Namespace="AWS/SQS",
        MetricData=[
            {
                "MetricName": "ApproximateAgeOfOldestMessage",
                "Dimensions": [{"Name": "QueueName", "Value": name}],
                "Timestamp": datetime.now(UTC) - timedelta(minutes=1),  # CloudWatch is a minute or more behind
                "Value": 754.0,
                "Unit": "Seconds",
            }
        ],
    )

    report = json.loads(_status(busy, "--json").output)
    people = _status(busy, env={"COLUMNS": "200"})

    assert report["events_queue"]["oldest_message_age"]["seconds"] == 754.0
    assert report["events_queue"]["oldest_message_age"]["source"] == "CloudWatch ApproximateAgeOfOldestMessage"
    assert "12m 34s" in people.output


def test_status_with_a_small_sample_says_it_did_not_read_every_letter(busy: ForwarderStack) -> None:
    report = json.loads(_status(busy, "--sample", "2", "--json").output)
    people = _status(busy, "--sample", "2", env={"COLUMNS": "200"})

    assert report["dead_letter_queue"]["read"] == 2
    assert report["dead_letter_queue"]["all_read"] is False
    assert sum(g["count"] for g in report["dead_letter_queue"]["by_target_and_error"]) == 2
    assert "2 read of about 4" in people.output


@pytest.fixture
def local_state(stack: ForwarderStack, aws_env: str, tmp_path: Path) -> Iterator[Path]:
    """A local stack's state file naming this test's queues on moto server, and a live process of ours as its PID."""
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "dataset_forwarder_cli"])
    # its command line can read empty for a moment after the start
    wait_for(lambda: is_our_process(stand_in.pid), timeout_s=10, what="the stand-in's command line")
    deployed = DeployedStack(
        stack_name="dataset-forwarder-local", region=DEFAULT_REGION, endpoint=aws_env, template="template.yaml",
        outputs={}, parameters={}, resources={}, queue_url=stack.queue_url, queue_arn="arn:aws:sqs:::events",
        dlq_url=stack.dlq_url, table=stack.table, targets_path=stack.targets_path, secrets_path=stack.secrets_path,
        function_logical_id="Forwarder", function_name="forwarder", function_arn="arn:aws:lambda:::forwarder",
        handler="app.lambda_handler", code_dir="functions/forwarder", timeout_s=60, memory_mb=512,
        function_environment={}, batch_size=10, batching_window_s=0, maximum_concurrency=2,
    )  # fmt: skip
    state = {"status": "running", "pid": stand_in.pid, "stack": deployed.to_json()}
    (tmp_path / "state.json").write_text(json.dumps(state))
    try:
        yield tmp_path
    finally:
        stand_in.kill()
        stand_in.wait()


def test_local_reads_the_running_local_stacks_endpoint_and_queues(
    busy: ForwarderStack, local_state: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # nothing in the environment points at moto or the queues: only the local stack's state does
    env: dict[str, str | None] = {
        "DATASET_FORWARDER_LOCAL_DIR": str(local_state),
        "AWS_ENDPOINT_URL": None,
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_SESSION_TOKEN": None,
        "DATASET_FORWARDER_QUEUE_URL": None,
        "DEAD_LETTER_QUEUE_URL": None,
    }

    local = CliRunner().invoke(cli, ["--local", "status", "--json"], env=env, catch_exceptions=False)
    none_running = CliRunner().invoke(
        cli, ["--local", "status"], env={**env, "DATASET_FORWARDER_LOCAL_DIR": str(tmp_path_factory.mktemp("none"))}
    )

    assert local.exit_code == 0, local.output
    report = json.loads(local.output)
    assert report["events_queue"]["url"] == busy.queue_url
    assert report["events_queue"]["visible"] == 3
    assert report["dead_letter_queue"]["read"] == 4
    assert none_running.exit_code == 1
    assert "no local stack is running" in none_running.output
