"""The local stack: template.yaml deployed into moto server, the product's poller feeding the real handler.

No Airflow: downstream deployments are `FakeAirflow`s. The handler runs as it does under `dataset-forwarder local
up`: in execution-environment processes with the function's environment read back from the deployed stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dataset_forwarder_cli.local import sam
from dataset_forwarder_cli.local.poller import (
    EventSourceConfig,
    InProcessInvoker,
    Invocation,
    Poller,
    ProcessInvoker,
)
from dataset_forwarder_cli.local.stack import DeployedStack, LocalStack, aws_session, client, deploy
from devkit.airflow_api import FakeAirflow, Fault
from devkit.envelopes import envelope
from tests.integration.conftest import wait_for

# moto names every resource type it skips (the CloudWatch alarms) on each deployment
pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse AWS..CloudWatch..Alarm:UserWarning")

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
# The handler's retry delay is 0 here, so a record it reports as failed is visible again at once.
HANDLER_ENV = {"RETRY_BASE_DELAY_S": "0", "RETRY_MAX_DELAY_S": "0"}


@pytest.fixture(scope="module")
def local_stack() -> Iterator[LocalStack]:
    """moto server with the template's stack (targets read on every record); no poller running by default."""
    stack = LocalStack(parameters={"ConfigTtlSeconds": "0"}, handler_env=HANDLER_ENV, template_path=TEMPLATE)
    stack.start(poll=False)
    yield stack
    stack.stop()


@pytest.fixture
def sqs(local_stack: LocalStack) -> Any:
    return local_stack.sqs()


@pytest.fixture
def ssm(local_stack: LocalStack) -> Any:
    return client(aws_session(), "ssm", local_stack.endpoint)


@pytest.fixture
def put_target(ssm: Any, local_stack: LocalStack) -> Iterator[Callable[[str, str, list[str]], None]]:
    """Register a target (auth none) under the stack's TARGETS_PATH; all are removed after the test."""
    names: list[str] = []

    def put(name: str, url: str, datasets: list[str]) -> None:
        value = {"url": url, "airflow": "auto", "datasets": datasets, "auth": {"type": "none"}, "timeout_s": 5}
        ssm.put_parameter(
            Name=f"{local_stack.stack.targets_path}/{name}", Value=json.dumps(value), Type="String", Overwrite=True
        )
        names.append(name)

    yield put
    for name in names:
        ssm.delete_parameter(Name=f"{local_stack.stack.targets_path}/{name}")


def _send(sqs: Any, queue_url: str, uri: str, **fields: Any) -> tuple[str, str]:
    body = envelope(uri, **fields)
    attributes = {
        "uri": {"DataType": "String", "StringValue": uri},
        "event_id": {"DataType": "String", "StringValue": body["id"]},
        "source_deployment": {"DataType": "String", "StringValue": "team-a-prod"},
    }
    sent = sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body), MessageAttributes=attributes)
    return str(sent["MessageId"]), str(body["id"])


def _counts(sqs: Any, queue_url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def process_poller(local_stack: LocalStack, sqs: Any) -> Iterator[Poller]:
    """The poller as `local up` builds it (settings from the deployed stack, handler in processes), not started."""
    stack = local_stack.stack
    invoker = ProcessInvoker(stack.function(HANDLER_ENV), size=stack.maximum_concurrency)
    poller = Poller(sqs, stack.event_source(), invoker)
    yield poller
    poller.stop(timeout_s=30)


# --------------------------------------------------------------------------------------------- from the template


def test_event_source_and_function_settings_are_read_from_the_template(local_stack: LocalStack) -> None:
    template = sam.load_template(TEMPLATE)
    defaults = {name: spec.get("Default") for name, spec in template["Parameters"].items()}
    stack = local_stack.stack
    source = stack.event_source()
    assert source.batch_size == int(defaults["BatchSize"])
    assert source.batching_window_s == float(defaults["MaximumBatchingWindowInSeconds"])
    assert source.maximum_concurrency == int(defaults["MaximumConcurrency"]) >= 2
    assert source.report_batch_item_failures is True
    assert source.wait_time_s == 20  # Lambda's long polling
    assert source.queue_arn.endswith(stack.resources["EventsQueue"].rsplit("/", 1)[1])
    function = stack.function()
    assert function.handler == template["Resources"]["ForwarderFunction"]["Properties"]["Handler"]
    assert function.code_dir == (TEMPLATE.parent / "functions" / "forwarder").resolve()
    assert function.timeout_s == float(template["Globals"]["Function"]["Timeout"])
    # the function's own environment as the template sets it, plus the local endpoint; HTTP targets allowed
    environment = dict(function.environment)
    assert environment["DEAD_LETTER_QUEUE_URL"].endswith(stack.resources["DeadLetterQueue"].rsplit("/", 1)[1])
    assert environment["IDEMPOTENCY_TABLE"] == stack.resources["IdempotencyTable"] == stack.table
    assert environment["CONFIG_TTL_S"] == "0"  # the stack parameter given to `local up`
    assert environment["MAX_ATTEMPTS"] == str(defaults["MaxAttempts"])
    assert environment["ALLOW_HTTP_TARGETS"] == "true"
    assert environment["AWS_ENDPOINT_URL"] == local_stack.endpoint
    assert stack.upstream_env()["DATASET_FORWARDER_QUEUE_URL"] == stack.queue_url


def test_parameters_change_what_the_poller_does(local_stack: LocalStack) -> None:
    """BatchSize, batching window and concurrency come from the deployed mapping, so stack parameters count."""
    stack = deploy(
        local_stack.endpoint,
        stack_name=f"params-{uuid.uuid4().hex[:6]}",
        parameters={"BatchSize": "25", "MaximumBatchingWindowInSeconds": "2", "MaximumConcurrency": "3"},
        template_path=TEMPLATE,
    )
    source = stack.event_source()
    assert (source.batch_size, source.batching_window_s, source.maximum_concurrency) == (25, 2.0, 3)
    # moto's own event source mapping (it would need Docker) is switched off: the poller is the only consumer
    lambda_ = client(aws_session(), "lambda", local_stack.endpoint)
    [mapping] = lambda_.list_event_source_mappings(FunctionName=stack.function_name)["EventSourceMappings"]
    assert mapping["State"] == "Disabled"
    assert DeployedStack.from_json(json.loads(json.dumps(stack.to_json()))) == stack


def test_batching_window_fills_a_batch_beyond_ten_records(local_stack: LocalStack) -> None:
    stack = deploy(
        local_stack.endpoint,
        stack_name=f"window-{uuid.uuid4().hex[:6]}",
        parameters={"BatchSize": "25", "MaximumBatchingWindowInSeconds": "1"},
        template_path=TEMPLATE,
    )
    sqs = local_stack.sqs()
    for start in range(0, 23, 10):
        entries = [{"Id": str(i), "MessageBody": "{}"} for i in range(start, min(start + 10, 23))]
        sqs.send_message_batch(QueueUrl=stack.queue_url, Entries=entries)
    seen: list[int] = []
    poller = Poller(sqs, stack.event_source(), InProcessInvoker(lambda event, _: seen.append(len(event["Records"]))))
    started = time.monotonic()
    invocation = poller.poll_once(wait_s=1)
    assert invocation is not None
    assert seen == [23]  # one invocation with every record, though SQS hands out at most 10 per call
    assert time.monotonic() - started >= 0.9  # the window was waited out: fewer records than BatchSize
    assert _counts(sqs, stack.queue_url) == (0, 0)


# --------------------------------------------------------------------------------------------- through the handler


def test_a_message_goes_through_poller_and_handler_to_the_downstream(
    local_stack: LocalStack,
    sqs: Any,
    process_poller: Poller,
    airflow: Callable[..., FakeAirflow],
    put_target: Callable[[str, str, list[str]], None],
) -> None:
    fake = airflow("3", datasets=["s3://local/bears"])
    put_target("team-b", fake.url, ["s3://local/*"])
    invocations: list[Invocation] = []
    process_poller.on_invocation = invocations.append
    process_poller.start()

    message_id, event_id = _send(sqs, local_stack.stack.queue_url, "s3://local/bears", extra={"rows": 7})

    [event] = fake.wait_for_events(1, timeout_s=20)
    assert event.extra["rows"] == 7
    assert event.extra["dataset_forwarder"]["id"] == event_id
    assert event.extra["dataset_forwarder"]["trail"] == ["team-a-prod"]
    wait_for(lambda: bool(invocations), timeout_s=10, what="the invocation's result", every_s=0.02)
    [invocation] = invocations
    assert invocation.message_ids == [message_id]
    assert invocation.failed_ids == set()
    record = invocation.event["Records"][0]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == local_stack.stack.queue_arn
    assert record["attributes"]["ApproximateReceiveCount"] == "1"  # nothing else received it first
    assert record["messageAttributes"]["event_id"]["stringValue"] == event_id
    assert _counts(sqs, local_stack.stack.queue_url) == (0, 0)  # acknowledged, so deleted


def test_partial_failure_deletes_the_delivered_record_and_leaves_only_the_failed_one(
    local_stack: LocalStack,
    sqs: Any,
    process_poller: Poller,
    airflow: Callable[..., FakeAirflow],
    put_target: Callable[[str, str, list[str]], None],
) -> None:
    good = airflow("3", datasets=["s3://ok/bears"])
    bad = airflow("3", datasets=["s3://bad/bears"])
    bad.inject(Fault(status=503, method="POST"))
    put_target("good", good.url, ["s3://ok/*"])
    put_target("bad", bad.url, ["s3://bad/*"])
    queue_url = local_stack.stack.queue_url
    ok_id, _ = _send(sqs, queue_url, "s3://ok/bears")
    failing_id, _ = _send(sqs, queue_url, "s3://bad/bears")

    invocation = process_poller.poll_once(wait_s=1)

    assert invocation is not None
    assert sorted(invocation.message_ids) == sorted([ok_id, failing_id])  # one batch
    assert invocation.response["batchItemFailures"] == [{"itemIdentifier": failing_id}]
    assert invocation.failed_ids == {failing_id}
    assert invocation.deleted_ids == [ok_id]
    assert len(good.events) == 1
    assert bad.events == []
    # only the failed record is left; the handler made it visible again at once (retry delay 0 here)
    left = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageSystemAttributeNames=["All"]
    )["Messages"]
    assert [m["MessageId"] for m in left] == [failing_id]
    assert left[0]["Attributes"]["ApproximateReceiveCount"] == "2"
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=left[0]["ReceiptHandle"])


def test_invocations_run_concurrently_in_separate_environments(
    local_stack: LocalStack,
    sqs: Any,
    process_poller: Poller,
    airflow: Callable[..., FakeAirflow],
    put_target: Callable[[str, str, list[str]], None],
) -> None:
    slow = airflow("3", datasets=["s3://slow/a", "s3://slow/b"])
    slow.inject(Fault(delay_s=2.0, method="POST"), times=2)
    put_target("slow", slow.url, ["s3://slow/*"])
    invocations: list[Invocation] = []
    process_poller.on_invocation = invocations.append
    process_poller.start()
    queue_url = local_stack.stack.queue_url

    _send(sqs, queue_url, "s3://slow/a")
    wait_for(lambda: slow.faults_left() == 1, timeout_s=10, what="the first POST to start", every_s=0.02)  # takes 2 s
    _send(sqs, queue_url, "s3://slow/b")  # arrives while the first batch is in flight

    slow.wait_for_events(2, timeout_s=20)
    wait_for(lambda: len(invocations) == 2, timeout_s=10, what="both invocations' results", every_s=0.02)
    first, second = sorted(invocations, key=lambda i: i.started_at)
    assert len(first.message_ids) == len(second.message_ids) == 1
    assert second.started_at < first.started_at + first.result.duration_s  # they overlapped
    assert isinstance(process_poller.invoker, ProcessInvoker)
    assert process_poller.invoker.environments >= 2  # the busy environment was not shared


# --------------------------------------------------------------------------------------------- Lambda's rules


@pytest.fixture
def plain_queue(local_stack: LocalStack, sqs: Any) -> str:
    """A queue of its own with a 1 s visibility timeout, for handlers that fail on purpose."""
    url: str = sqs.create_queue(QueueName=f"plain-{uuid.uuid4().hex[:8]}", Attributes={"VisibilityTimeout": "1"})[
        "QueueUrl"
    ]
    return url


def test_a_handler_exception_leaves_the_whole_batch_to_sqs(sqs: Any, plain_queue: str) -> None:
    def broken(event: dict[str, Any], context: Any) -> Any:
        raise RuntimeError("boom")

    poller = Poller(sqs, EventSourceConfig.for_queue(sqs, plain_queue), InProcessInvoker(broken))
    ids = {str(sqs.send_message(QueueUrl=plain_queue, MessageBody=str(i))["MessageId"]) for i in range(3)}

    invocation = poller.poll_once(wait_s=1)

    assert invocation is not None
    assert invocation.failed_ids == ids
    assert invocation.batch_error == "RuntimeError: boom"
    assert _counts(sqs, plain_queue) == (0, 3)  # nothing deleted, nothing made visible early
    again = poller.poll_once(wait_s=5)  # the queue's visibility timeout (1 s) brings them back, as on AWS
    assert again is not None
    assert set(again.message_ids) == ids
    assert {r["attributes"]["ApproximateReceiveCount"] for r in again.event["Records"]} == {"2"}


def test_an_unknown_item_identifier_fails_the_whole_batch(sqs: Any, plain_queue: str) -> None:
    poller = Poller(
        sqs,
        EventSourceConfig.for_queue(sqs, plain_queue),
        InProcessInvoker(lambda event, _: {"batchItemFailures": [{"itemIdentifier": "not-in-this-batch"}]}),
    )
    sqs.send_message(QueueUrl=plain_queue, MessageBody="x")

    invocation = poller.poll_once(wait_s=1)

    assert invocation is not None
    assert invocation.batch_error == "invalid itemIdentifier 'not-in-this-batch'"
    assert _counts(sqs, plain_queue) == (0, 1)


class _CountingSqs:
    """An SQS client that counts its receive calls."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.receives: list[int] = []  # WaitTimeSeconds of each call

    def receive_message(self, **kwargs: Any) -> Any:
        self.receives.append(kwargs["WaitTimeSeconds"])
        return self._sqs.receive_message(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)


def test_drain_long_polls_while_a_record_waits_out_its_delay(sqs: Any, plain_queue: str) -> None:
    counting = _CountingSqs(sqs)
    poller = Poller(counting, EventSourceConfig.for_queue(sqs, plain_queue, wait_time_s=0), InProcessInvoker(_ok))
    sent = sqs.send_message(QueueUrl=plain_queue, MessageBody="later", DelaySeconds=2)["MessageId"]

    done = poller.drain(timeout_s=20)

    assert [list(i.message_ids) for i in done] == [[sent]]
    assert 1 in counting.receives  # waits on SQS a second at a time ...
    assert len(counting.receives) < 15  # ... instead of asking again and again with no wait (hundreds of calls)


def _ok(event: dict[str, Any], context: Any) -> Any:
    return {"batchItemFailures": []}


def test_a_timed_out_invocation_leaves_the_batch_and_the_next_one_gets_a_fresh_environment(
    sqs: Any, plain_queue: str, tmp_path: Path
) -> None:
    (tmp_path / "slow.py").write_text(
        "import os, time\n"
        "def handler(event, context):\n"
        "    time.sleep(float(event['Records'][0]['body']))\n"
        "    return {'pid': os.getpid(), 'left_ms': context.get_remaining_time_in_millis()}\n"
    )
    from dataset_forwarder_cli.local.poller import FunctionConfig

    function = FunctionConfig(name="slow", handler="slow.handler", code_dir=tmp_path, timeout_s=1.5)
    poller = Poller(sqs, EventSourceConfig.for_queue(sqs, plain_queue), ProcessInvoker(function, size=1))
    try:
        sqs.send_message(QueueUrl=plain_queue, MessageBody="5")
        timed_out = poller.poll_once(wait_s=1)
        assert timed_out is not None
        assert timed_out.batch_error == "Task timed out after 1.50 seconds"
        assert sum(_counts(sqs, plain_queue)) == 1  # not deleted (visible again: it outlived the 1 s timeout)
        sqs.purge_queue(QueueUrl=plain_queue)

        sqs.send_message(QueueUrl=plain_queue, MessageBody="0")
        fine = poller.poll_once(wait_s=2)
        assert fine is not None
        assert fine.batch_error is None
        assert fine.result.init_duration_s is not None  # a cold start: the timed-out environment was ended
        assert 0 < fine.response["left_ms"] <= 1500
        assert fine.response["pid"] != os.getpid()
    finally:
        poller.stop(timeout_s=5)


# --------------------------------------------------------------------------------------------- the CLI


def test_local_up_env_down(tmp_path: Path) -> None:
    """`local up` in the background writes its state, `local env` prints it, `local down` ends every process."""
    state_dir = tmp_path / "state"
    command = [sys.executable, "-m", "dataset_forwarder_cli.main", "local"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args, "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            env=env,
            timeout=200,
            check=False,
        )

    up = run("up", "--json")
    assert up.returncode == 0, up.stderr + up.stdout
    state = json.loads(up.stdout)
    pid = state["pid"]
    try:
        assert (state_dir / "state.json").is_file()
        again = run("up")
        assert again.returncode == 1
        assert "already running" in again.stderr
        variables = json.loads(run("env", "--for", "upstream", "--json").stdout)
        assert set(variables) == {
            "DATASET_FORWARDER_QUEUE_URL",
            "AWS_ENDPOINT_URL",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_REGION",
        }
        exports = run("env").stdout
        assert f"export DEAD_LETTER_QUEUE_URL={state['stack']['dlq_url']}" in exports
        # the CLI works against it with that environment
        cli_env = {**env, **json.loads(run("env", "--json").stdout)}
        sent = subprocess.run(
            [sys.executable, "-m", "dataset_forwarder_cli.main", "send-test-event", "s3://nowhere/x"],
            capture_output=True,
            text=True,
            env=cli_env,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    assert f"local stack stopped (pid {pid})" in down.stdout
    assert not (state_dir / "state.json").exists()
    group = subprocess.run(
        ["ps", "-o", "pid=,stat=", "-g", str(pid)], capture_output=True, text=True, check=False
    ).stdout
    # the execution environments ended with it (a zombie is left only where nothing reaps orphans)
    assert [line for line in group.splitlines() if "Z" not in line.split()[1]] == []
    log = (state_dir / "local.log").read_text()
    assert '"message": "invoked with 1 record(s), 0 left on the queue"' in log  # the event was polled
    assert "no target matches the event" in log  # and the real handler ran
