"""The operator CLI against moto server and fake Airflow APIs, including a real dead letter's round trip."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import subprocess
import sys
import termios
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from dataset_forwarder_cli.main import cli
from devkit.airflow_api import FakeAirflow
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.lambda_sqs import LambdaSqsDriver
from devkit.sqs_proxy import SpoilingProxy
from tests.integration.conftest import wait_for

BEARS = "s3://bucket/bears"


@pytest.fixture
def run(stack: ForwarderStack) -> Callable[..., Result]:
    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
        base = [
            "--targets-path",
            stack.targets_path,
            "--secrets-path",
            stack.secrets_path,
            "--queue-url",
            stack.queue_url,
            "--dlq-url",
            stack.dlq_url,
        ]
        return CliRunner().invoke(cli, [*base, *args], input=input, env=env, catch_exceptions=False)

    return invoke


def test_put_list_show_test_delete_round_trip_never_shows_the_secret(
    run: Callable[..., Result], stack: ForwarderStack, airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("3", auth="bearer", token="tok-SECRET-4242")
    fake.add_dataset(BEARS, scheduled_dags=("consumer", "reporting"))

    put = run(
        "targets", "put", "team-b", "--url", fake.url, "--dataset", BEARS, "--dataset", "s3://lake/*",
        "--auth", "bearer", "--token-stdin", "--allow-http", input="tok-SECRET-4242\n",
    )  # fmt: skip
    assert put.exit_code == 0, put.output
    stored = stack.ssm.get_parameter(Name=f"{stack.secrets_path}/team-b", WithDecryption=False)["Parameter"]
    listed = run("targets", "list", "--json")
    shown = run("targets", "show", "team-b")
    tested = run("targets", "test", "team-b", "--send", "--allow-http")
    deleted = run("targets", "delete", "team-b")
    after = run("targets", "list", "--json")

    assert stored["Type"] == "SecureString"
    [target] = json.loads(listed.output)["targets"]
    assert target["name"] == "team-b"
    assert target["datasets"] == [BEARS, "s3://lake/*"]
    assert target["auth"] == {"type": "bearer", "secret": f"{stack.secrets_path}/team-b"}
    assert shown.exit_code == 0
    assert "secret_parameter_exists" in shown.output
    assert tested.exit_code == 0, tested.output
    assert "Airflow 3" in tested.output
    assert "consumer, reporting" in tested.output
    assert len(fake.events) == 1
    assert deleted.exit_code == 0
    assert json.loads(after.output)["targets"] == []
    for result in (put, listed, shown, tested, deleted):
        assert "tok-SECRET-4242" not in result.output


def test_put_validates_before_writing(run: Callable[..., Result], stack: ForwarderStack) -> None:
    bad_url = run("targets", "put", "t1", "--url", "http://plain.example", "--dataset", BEARS, "--auth", "none")
    bad_name = run("targets", "put", "a/b", "--url", "https://x.example", "--dataset", BEARS, "--auth", "none")
    no_token = run("targets", "put", "t2", "--url", "https://x.example", "--dataset", BEARS, "--auth", "bearer")
    unset_env = run(
        "targets", "put", "t3", "--url", "https://x.example", "--dataset", BEARS, "--auth", "bearer",
        "--token-env", "SURELY_NOT_SET_VAR",
    )  # fmt: skip

    assert bad_url.exit_code == 1
    assert "https" in bad_url.output
    assert bad_name.exit_code == 1
    assert "must match" in bad_name.output
    assert no_token.exit_code == 1
    assert "--token-stdin" in no_token.output
    assert unset_env.exit_code == 1
    assert "SURELY_NOT_SET_VAR" in unset_env.output
    assert json.loads(run("targets", "list", "--json").output)["targets"] == []


def _stored_secret(stack: ForwarderStack, name: str) -> str:
    parameter = stack.ssm.get_parameter(Name=f"{stack.secrets_path}/{name}", WithDecryption=True)["Parameter"]
    return str(parameter["Value"])


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_token_stdin_piped_keeps_every_character_but_the_final_line_ending(
    run: Callable[..., Result], stack: ForwarderStack, ending: str
) -> None:
    put = run(
        "targets", "put", "spaced", "--url", "https://x.example", "--dataset", BEARS, "--auth", "bearer",
        "--token-stdin", input=f"  tok with spaces\t {ending}",
    )  # fmt: skip
    two_lines = run(
        "targets", "put", "two", "--url", "https://x.example", "--dataset", BEARS, "--auth", "bearer",
        "--token-stdin", input="tok-line-1\ntok-line-2\n",
    )  # fmt: skip

    assert put.exit_code == 0, put.output
    assert _stored_secret(stack, "spaced") == "  tok with spaces\t "
    assert two_lines.exit_code == 1
    assert "line break" in two_lines.output
    assert "tok-line" not in two_lines.output


def test_token_stdin_on_a_terminal_prompts_without_echo(stack: ForwarderStack) -> None:
    """The real CLI on a pseudo-terminal that is its controlling terminal, as when an operator types the token."""
    token = " typed-SECRET-6161 "
    primary, secondary = pty.openpty()
    command = [
        sys.executable, "-m", "dataset_forwarder_cli.main", "--targets-path", stack.targets_path,
        "--secrets-path", stack.secrets_path, "targets", "put", "typed", "--url", "https://x.example",
        "--dataset", BEARS, "--auth", "bearer", "--token-stdin",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),  # noqa: PLW1509 - no threads to fork with here
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    os.close(secondary)
    screen = b""

    def read_some() -> bool:
        nonlocal screen
        if select.select([primary], [], [], 0.2)[0]:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                return True
            screen += chunk
            return not chunk
        return process.poll() is not None

    try:
        wait_for(lambda: read_some() or b"hidden" in screen, timeout_s=30, what="the hidden prompt")
        os.write(primary, token.encode() + b"\n")
        wait_for(lambda: read_some() and process.poll() is not None, timeout_s=30, what="the command to end")
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        os.close(primary)

    output = screen.decode(errors="replace")
    assert process.returncode == 0, output
    assert "Token or password (hidden)" in output
    assert "typed-SECRET" not in output
    assert "saved target typed" in output
    assert _stored_secret(stack, "typed") == token


def test_targets_test_fails_clearly_on_refused_credentials_and_unknown_dataset(
    run: Callable[..., Result], airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("2", auth="basic", password="right-pw")
    run(
        "targets", "put", "old", "--url", fake.url, "--dataset", BEARS, "--auth", "basic", "--username", "admin",
        "--token-env", "PW", "--allow-http", env={"PW": "wrong-pw"},
    )  # fmt: skip

    refused = run("targets", "test", "old", "--allow-http")
    run(
        "targets", "put", "old", "--url", fake.url, "--dataset", BEARS, "--auth", "basic", "--username", "admin",
        "--token-env", "PW", "--allow-http", env={"PW": "right-pw"},
    )  # fmt: skip
    unknown = run("targets", "test", "old", "--allow-http")

    assert refused.exit_code == 1
    assert "credentials refused" in refused.output
    assert unknown.exit_code == 1
    assert "not known downstream" in unknown.output
    assert "wrong-pw" not in refused.output


def test_targets_test_refuses_a_plain_http_target_unless_allowed(
    run: Callable[..., Result], airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("3", auth="bearer", token="tok-in-clear-99")
    fake.add_dataset(BEARS)
    run(
        "targets", "put", "local", "--url", fake.url, "--dataset", BEARS, "--auth", "bearer",
        "--token-env", "T", "--allow-http", env={"T": "tok-in-clear-99"},
    )  # fmt: skip

    refused = run("targets", "test", "local")
    requests_before = len(fake.requests)
    allowed = run("targets", "test", "local", "--allow-http")

    assert refused.exit_code == 1
    assert "plain http://" in refused.output
    assert "credential" in refused.output
    assert "--allow-http" in refused.output
    assert requests_before == 0  # refused before anything was sent
    assert allowed.exit_code == 0, allowed.output
    assert "tok-in-clear-99" not in refused.output + allowed.output


def test_enable_disable_and_malformed_parameter_reporting(run: Callable[..., Result], stack: ForwarderStack) -> None:
    run("targets", "put", "t1", "--url", "https://a.example", "--dataset", BEARS, "--auth", "none")
    stack.put_target("broken", "{not json")

    disabled = run("targets", "disable", "t1")
    listed = json.loads(run("targets", "list", "--json").output)
    show_broken = run("targets", "show", "broken")
    missing = run("targets", "show", "nope")

    assert disabled.exit_code == 0
    assert listed["targets"][0]["enabled"] is False
    assert listed["broken"][0]["name"] == "broken"
    assert show_broken.exit_code == 1
    assert "malformed" in show_broken.output
    assert missing.exit_code == 1
    assert "not found" in missing.output
    assert "Traceback" not in show_broken.output + missing.output
    run("targets", "enable", "t1")
    assert json.loads(run("targets", "list", "--json").output)["targets"][0]["enabled"] is True


def test_send_test_event_puts_a_valid_envelope_on_the_queue(
    run: Callable[..., Result],
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
) -> None:
    fake = airflow("3")
    fake.add_dataset(BEARS)
    stack.put_target("team-b", {"url": fake.url, "datasets": [BEARS]})

    sent = run("send-test-event", BEARS, "--extra", '{"rows": 7}', "--deployment", "ops-laptop")
    bad = run("send-test-event", BEARS, "--extra", "[1]")
    lambda_driver.drain()

    assert sent.exit_code == 0, sent.output
    assert bad.exit_code == 1
    [event] = fake.events
    assert event.extra["rows"] == 7
    assert event.extra["dataset_forwarder"]["trail"] == ["ops-laptop"]


def test_send_test_event_sends_a_dag_run_outcome_with_partition_key_to_one_target(
    run: Callable[..., Result],
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
) -> None:
    failed_uri = "dagrun://team-a/etl_daily/failed"
    chosen, other = airflow("3"), airflow("3")
    for fake in (chosen, other):
        fake.add_dataset(failed_uri)
    stack.put_target("chosen", {"url": chosen.url, "datasets": ["dagrun://team-a/*"]})
    stack.put_target("other", {"url": other.url, "datasets": ["dagrun://team-a/*"]})

    sent = run(
        "send-test-event", "--dag-run", "etl_daily", "--state", "failed", "--deployment", "team-a",
        "--partition-key", "2026-12-06", "--target", "chosen", "--json",
    )  # fmt: skip
    both = run("send-test-event", "s3://x", "--dag-run", "etl_daily")
    lambda_driver.drain()

    assert sent.exit_code == 0, sent.output
    envelope_sent = json.loads(sent.output)["envelope"]
    assert envelope_sent["kind"] == "dag_run"
    assert envelope_sent["uri"] == envelope_sent["name"] == failed_uri
    assert envelope_sent["partition_key"] == "2026-12-06"
    assert envelope_sent["only_targets"] == ["chosen"]
    assert {"dag_id", "run_id", "state", "run_type", "logical_date", "start_date", "end_date"} <= set(
        envelope_sent["extra"]
    )
    assert envelope_sent["source"]["task_id"] is None
    assert both.exit_code == 1  # a URI and --dag-run at once
    [event] = chosen.events
    assert event.extra["state"] == "failed"
    assert other.events == []


def test_dead_letter_listed_filtered_redriven_after_fix_and_delivered_once(
    run: Callable[..., Result],
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
) -> None:
    fake = airflow("3", auth="bearer", token="new-token-77")
    other = airflow("3")
    for downstream in (fake, other):
        downstream.add_dataset(BEARS)
    run(
        "targets", "put", "team-b", "--url", fake.url, "--dataset", BEARS, "--auth", "bearer",
        "--token-env", "T", "--allow-http", env={"T": "old-token-11"},
    )  # fmt: skip
    stack.put_target("team-c", {"url": other.url, "datasets": [BEARS]})
    sent = envelope(BEARS)
    stack.send(sent)
    stack.send("not json")
    lambda_driver.drain()

    listed = json.loads(run("dlq", "list", "--json").output)
    only_auth = json.loads(run("dlq", "list", "--error", "auth", "--json").output)
    table = run("dlq", "list")
    shown = run("dlq", "show", sent["id"])
    dry = run("dlq", "redrive", "--target", "team-b", "--dry-run")
    run(
        "targets", "put", "team-b", "--url", fake.url, "--dataset", BEARS, "--auth", "bearer",
        "--token-env", "T", "--allow-http", env={"T": "new-token-77"},
    )  # fmt: skip
    moved = run("dlq", "redrive", "--target", "team-b")
    lambda_driver.drain()
    left = json.loads(run("dlq", "list", "--json").output)

    assert listed["counts"] == {
        "by_target": {"team-b": 1, "-": 1},
        "by_error": {"auth": 1, "invalid_message": 1},
        "unconfirmed": 0,
        "total": 2,
    }
    assert [d["target"] for d in only_auth["dead_letters"]] == ["team-b"]
    assert "team-b" in table.output
    assert "auth" in table.output
    assert shown.exit_code == 0
    assert json.loads(shown.output)["body"]["only_targets"] == ["team-b"]
    assert "would move" in dry.output
    assert "1 dead letter(s) moved" in moved.output
    assert len(fake.events) == 1
    assert len(other.events) == 1  # the replay reached only the target that failed
    assert [d["error"] for d in left["dead_letters"]] == ["invalid_message"]
    for result in (table, shown, dry, moved):
        assert "old-token-11" not in result.output
        assert "new-token-77" not in result.output


def _dead_letter(stack: ForwarderStack, target: str, error: str, **attributes: str) -> tuple[str, dict[str, Any]]:
    """A letter written to the DLQ as the forwarder writes one; returns (message id, envelope)."""
    body = envelope(BEARS, only_targets=[target])
    values = {"target": target, "error": error, "detail": f"{error} at {target}", "attempts": "1", **attributes}
    sent = stack.sqs.send_message(
        QueueUrl=stack.dlq_url,
        MessageBody=json.dumps(body),
        MessageAttributes={k: {"DataType": "String", "StringValue": v} for k, v in values.items()},
    )
    return sent["MessageId"], body


def _depth(stack: ForwarderStack, queue_url: str) -> int:
    attributes = stack.sqs.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])


def test_dlq_list_unconfirmed_shows_only_letters_whose_target_may_hold_the_event(
    run: Callable[..., Result], stack: ForwarderStack
) -> None:
    unsure_id, unsure = _dead_letter(stack, "team-b", "timeout", unconfirmed="true")
    _dead_letter(stack, "team-b", "timeout")
    _dead_letter(stack, "team-c", "auth", unconfirmed="false")

    everything = json.loads(run("dlq", "list", "--json").output)
    unconfirmed = json.loads(run("dlq", "list", "--unconfirmed", "--json").output)
    table = run("dlq", "list", "--unconfirmed", env={"COLUMNS": "250"})
    shown = json.loads(run("dlq", "show", unsure_id).output)

    assert everything["counts"]["total"] == 3
    assert everything["counts"]["unconfirmed"] == 1
    assert [(d["message_id"], d["unconfirmed"]) for d in unconfirmed["dead_letters"]] == [(unsure_id, True)]
    assert unconfirmed["counts"] == {
        "by_target": {"team-b": 1}, "by_error": {"timeout": 1}, "unconfirmed": 1, "total": 1,
    }  # fmt: skip
    assert table.exit_code == 0
    assert "unconfirmed" in table.output
    assert "1 dead letter(s)" in table.output
    assert unsure["id"] in table.output
    assert shown["unconfirmed"] is True
    assert shown["event_id"] == unsure["id"]


def test_redrive_reports_a_letter_sent_but_not_deleted_and_exits_1(
    run: Callable[..., Result], stack: ForwarderStack, aws_env: str
) -> None:
    moved_id, _ = _dead_letter(stack, "team-b", "auth")
    stuck_id, _ = _dead_letter(stack, "team-b", "auth")
    proxy = SpoilingProxy(aws_env)
    proxy.spoil_message_ids.add(stuck_id)  # its delete carries a receipt handle SQS no longer knows

    with proxy.running():
        redriven = run("dlq", "redrive", env={"AWS_ENDPOINT_URL": proxy.url})
        as_json = run("dlq", "redrive", "--json", env={"AWS_ENDPOINT_URL": proxy.url})

    assert redriven.exit_code == 1
    assert f"moved {moved_id}" in redriven.output
    assert f"SENT BUT STILL IN THE DLQ {stuck_id}" in redriven.output
    assert "1 dead letter(s) moved" in redriven.output
    assert "ReceiptHandleIsInvalid" in redriven.output
    assert "sent to the events queue but NOT deleted from the DLQ" in redriven.output
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert report["moved"] == []
    assert [(d["message_id"], d["reason"]) for d in report["sent_not_deleted"]] == [
        (stuck_id, "ReceiptHandleIsInvalid")
    ]
    # the letter really stayed in the DLQ, and was sent once per redrive
    assert proxy.spoiled == [stuck_id, stuck_id]
    [left] = json.loads(run("dlq", "list", "--json").output)["dead_letters"]
    assert left["message_id"] == stuck_id
    assert _depth(stack, stack.queue_url) == 3


def test_purge_needs_confirmation_and_missing_queue_is_one_line(
    run: Callable[..., Result], stack: ForwarderStack
) -> None:
    stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody="x")

    refused = run("dlq", "purge")
    purged = run("dlq", "purge", "--yes")
    missing = CliRunner().invoke(cli, ["--dlq-url", stack.dlq_url + "-gone", "dlq", "list"])

    assert refused.exit_code == 1
    assert "--yes" in refused.output
    assert purged.exit_code == 0
    assert missing.exit_code == 1
    assert "queue not found" in missing.output
    assert "Traceback" not in missing.output


def test_console_script_is_installed_with_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dataset_forwarder_cli.main", "--help"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0
    assert "targets" in out.stdout
    assert "dlq" in out.stdout


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AWS_REGION": None, "AWS_DEFAULT_REGION": None}, "no AWS region"),
        ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "cannot reach AWS"),
        (
            {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None,
             "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent",
             "AWS_EC2_METADATA_DISABLED": "true"},
            "no AWS credentials",
        ),
    ],
)  # fmt: skip
def test_aws_setup_problems_are_one_line_errors(
    stack: ForwarderStack, env: dict[str, str | None], expected: str
) -> None:
    result = CliRunner().invoke(cli, ["--targets-path", stack.targets_path, "targets", "list"], env=env)

    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_queue_urls_are_discovered_from_the_stack_outputs(stack: ForwarderStack) -> None:
    cloudformation = boto3.client("cloudformation")
    name = "dataset-forwarder-" + stack.table.rsplit("-", 1)[-1]
    template = {
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "EventsQueueUrl": {"Value": stack.queue_url},
            "DeadLetterQueueUrl": {"Value": stack.dlq_url},
        },
    }
    cloudformation.create_stack(StackName=name, TemplateBody=json.dumps(template))
    stack.sqs.send_message(QueueUrl=stack.dlq_url, MessageBody="left behind")

    listed = CliRunner().invoke(
        cli, ["--stack-name", name, "dlq", "list", "--json"], env={"DEAD_LETTER_QUEUE_URL": None}
    )
    sent = CliRunner().invoke(
        cli, ["--stack-name", name, "send-test-event", BEARS], env={"DATASET_FORWARDER_QUEUE_URL": None}
    )
    missing = CliRunner().invoke(
        cli, ["--stack-name", "no-such-stack", "dlq", "list"], env={"DEAD_LETTER_QUEUE_URL": None}
    )

    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["counts"]["total"] == 1
    assert sent.exit_code == 0, sent.output
    assert (
        int(
            stack.sqs.get_queue_attributes(QueueUrl=stack.queue_url, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"
            ]["ApproximateNumberOfMessages"]
        )
        == 1
    )
    assert missing.exit_code == 1
    assert "Traceback" not in missing.output


def test_targets_put_list_and_test_an_mwaa_trigger_dag_target(
    run: Callable[..., Result],
    airflow: Callable[..., FakeAirflow],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every kind through the CLI: an MWAA way in (the local emulation, IAM) with the trigger_dag action."""
    from dataset_forwarder_cli.local.mwaa import MwaaEmulator

    fake = airflow("3", auth="airflow-token")
    fake.add_dag("refresh_dashboards", paused=True)
    with MwaaEmulator() as emulator:
        emulator.add_environment("team-c-prod", fake.url, airflow="3", username="admin", password="admin-pw")
        monkeypatch.setenv("AWS_ENDPOINT_URL_MWAA", emulator.endpoint)
        saved = run(
            "targets", "put", "team-c", "--mwaa-environment", "team-c-prod", "--action", "trigger_dag",
            "--dag-id", "refresh_dashboards", "--dataset", "dagrun://team-a/etl_daily/success",
        )  # fmt: skip
        with_auth = run("targets", "put", "bad", "--mwaa-environment", "x", "--auth", "bearer", "--dataset", BEARS)
        listed = json.loads(run("targets", "list", "--json").output)
        shown = json.loads(run("targets", "show", "team-c", "--json").output)
        tested = run("targets", "test", "team-c", "--json")

    assert saved.exit_code == 0, saved.output
    assert "MWAA team-c-prod" in saved.output
    assert with_auth.exit_code == 1
    assert "IAM" in with_auth.output
    [entry] = listed["targets"]
    assert (entry["name"], entry["mwaa"]["environment"], entry["action"]) == ("team-c", "team-c-prod", "trigger_dag")
    assert shown["mwaa"] == {"environment": "team-c-prod"}
    assert (shown["action"], shown["dag_id"]) == ("trigger_dag", "refresh_dashboards")
    assert "auth" not in shown
    report = json.loads(tested.output)
    assert report["ok"] is True, report
    checks = {check["name"]: check for check in report["checks"]}
    assert "MWAA team-c-prod" in checks["api"]["detail"]
    assert "IAM" in checks["credentials"]["detail"]
    assert "paused" in checks["dag refresh_dashboards"]["detail"]
    assert fake.dag_runs == []  # checks only read
