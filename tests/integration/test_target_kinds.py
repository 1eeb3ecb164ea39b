"""Target kinds through the real handler: HTTPS and MWAA ways in, asset_event and trigger_dag actions, side by side.

SQS, SSM and DynamoDB on moto server; fake Airflow 2.11/3.3 APIs on 127.0.0.1; the local MWAA emulator (real boto3
client, SigV4) in front of one of them, reached through AWS_ENDPOINT_URL_MWAA as the deployed function would reach
MWAA.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from dataset_forwarder.dead_letters import UNCONFIRMED
from dataset_forwarder_cli.dead_letter_box import DeadLetterBox
from dataset_forwarder_cli.local.mwaa import MwaaEmulator
from devkit.airflow_api import FakeAirflow, Fault
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.lambda_sqs import LambdaSqsDriver
from tests.integration.conftest import LogCapture, polled

BEARS = "s3://bucket/bears"
ENVIRONMENT = "team-c-prod"


@pytest.fixture
def emulator() -> Iterator[MwaaEmulator]:
    with MwaaEmulator(relay_timeout_s=5.0, max_hang_s=10) as started:
        yield started


@pytest.fixture
def mwaa_stack(stack: ForwarderStack, emulator: MwaaEmulator, monkeypatch: pytest.MonkeyPatch) -> ForwarderStack:
    """The stack with MWAA allowed for ENVIRONMENT only, InvokeRestApi served by the emulator."""
    from dataset_forwarder import runtime

    stack.mwaa_environments = ENVIRONMENT
    stack.target_role_arns = "arn:aws:iam::210987654321:role/dataset-forwarder-invoke"
    stack.mwaa_endpoint = emulator.endpoint
    for key, value in stack.env().items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    return stack


def _airflow_for(way: str, version: str, airflow: Callable[..., FakeAirflow], emulator: MwaaEmulator) -> FakeAirflow:
    """An Airflow with DAG `consumer`: over HTTPS it takes a static token; behind MWAA, the emulator's own login."""
    if way == "https":
        fake = airflow(version, auth="bearer", token="tok-123456")
    else:
        fake = airflow(version, auth="airflow-token" if version == "3" else "basic")
        emulator.add_environment(ENVIRONMENT, fake.url, airflow=version, username="admin", password="admin-pw")
    fake.add_dag("consumer")
    return fake


def _trigger_target(way: str, fake: FakeAirflow, stack: ForwarderStack, **fields: Any) -> dict[str, Any]:
    """A trigger_dag target parameter reaching `fake` over HTTPS (bearer token) or through MWAA."""
    base = {"action": "trigger_dag", "dag_id": "consumer", "datasets": [BEARS], **fields}
    if way == "mwaa":
        return {"mwaa": {"environment": ENVIRONMENT}, **base}
    return {"url": fake.url, "auth": {"type": "bearer", "secret": stack.put_secret("team-b", "tok-123456")}, **base}


def _expected_conf(sent: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset_forwarder": {
            "id": sent["id"],
            "uri": sent["uri"],
            "extra": {"rows": 42},
            "partition_key": None,
            "source": sent["source"],
            "trail": ["team-a-prod"],
        }
    }


def test_an_event_fans_out_to_an_asset_event_a_trigger_over_https_and_a_trigger_through_mwaa_once_each(
    mwaa_stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    emulator: MwaaEmulator,
) -> None:
    assets = airflow("3", datasets=[BEARS])
    https_dags = airflow("2", auth="bearer", token="tok-123456")
    mwaa_dags = airflow("3", auth="airflow-token")
    for fake in (https_dags, mwaa_dags):
        fake.add_dag("consumer")
    emulator.add_environment(ENVIRONMENT, mwaa_dags.url, airflow="3", username="admin", password="admin-pw")
    mwaa_stack.put_target("assets", {"url": assets.url, "datasets": [BEARS]})
    mwaa_stack.put_target("team-b", _trigger_target("https", https_dags, mwaa_stack))
    mwaa_stack.put_target("team-c", _trigger_target("mwaa", mwaa_dags, mwaa_stack))
    # The upstream extra may carry our reserved key (an event forwarded before): the conf leaves it out.
    sent = envelope(BEARS, extra={"rows": 42, "dataset_forwarder": {"id": "upstream-of-upstream"}})

    mwaa_stack.send(sent)
    invocations = lambda_driver.drain()
    mwaa_stack.send(sent)  # a second SQS copy of the same event: the ledger stops it everywhere
    lambda_driver.drain()

    assert [inv.response for inv in invocations] == [{"batchItemFailures": []}]
    assert assets.count("POST", "/api/v2/assets/events") == 1
    [event] = assets.events
    assert event.extra["dataset_forwarder"]["id"] == sent["id"]
    for fake, api in ((https_dags, "v1"), (mwaa_dags, "v2")):
        [run] = fake.dag_runs
        assert (run.dag_id, run.run_id) == ("consumer", f"dataset_forwarder__{sent['id']}")
        assert run.conf == _expected_conf(sent), api
    assert https_dags.count("POST", "/api/v1/dags/consumer/dagRuns") == 1
    assert mwaa_dags.dag_runs[0].body["logical_date"] is None
    assert [(c.method, c.path) for c in emulator.calls_to(ENVIRONMENT)] == [
        ("GET", "/version"),
        ("POST", "/dags/consumer/dagRuns"),
    ]
    assert mwaa_stack.dead_letters() == []


@pytest.mark.parametrize("way", ["https", "mwaa"])
def test_a_redriven_letter_for_a_run_that_exists_does_not_start_a_second_run(
    way: str,
    mwaa_stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    emulator: MwaaEmulator,
    forwarder_logs: LogCapture,
) -> None:
    fake = _airflow_for(way, "3", airflow, emulator)
    mwaa_stack.put_target("team-b", _trigger_target(way, fake, mwaa_stack, airflow="3", timeout_s=0.5))
    # The first try's POST creates the run after the forwarder gave up waiting for its answer.
    fake.inject(Fault(delay_s=1.5, method="POST", path_prefix="/api/v2/dags/"))
    sent = envelope(BEARS)
    mwaa_stack.send(sent)
    first = polled(lambda_driver)
    assert first.failed_ids  # a retry is due
    fake.wait_for_dag_runs(1, timeout_s=5)
    # Before the retry, the target stops accepting the forwarder: the retry is refused and dead-lettered.
    if way == "mwaa":
        emulator.set_allowed(ENVIRONMENT, [])
    else:
        fake.set_token("tok-rotated-654321")

    lambda_driver.drain()

    box = DeadLetterBox(mwaa_stack.sqs, mwaa_stack.dlq_url)
    [letter] = box.peek()
    assert (letter.target, letter.error) == ("team-b", "auth")
    # Nothing could look before the refused retry (for this action only the POST tells): the run may exist.
    assert letter.unconfirmed
    # The operator fixes access, then redrives.
    if way == "mwaa":
        emulator.set_allowed(ENVIRONMENT, ["123456789012"])
    else:
        mwaa_stack.put_secret("team-b", "tok-rotated-654321")
    box.redrive(mwaa_stack.queue_url)
    invocations = lambda_driver.drain()

    assert [inv.failed_ids for inv in invocations] == [set()]
    assert box.peek() == []  # the letter was consumed: the redrive settled it
    [run] = fake.dag_runs
    assert run.run_id == f"dataset_forwarder__{sent['id']}"
    posts = fake.requests
    assert [status for method, path, status in posts if method == "POST" and "/dagRuns" in path][-1] == 409
    assert "the target already has it, not posted again" in forwarder_logs.text
    assert mwaa_stack.dead_letters(expected=0, timeout_s=0.5) == []


@pytest.mark.parametrize("way", ["https", "mwaa"])
def test_a_trigger_of_a_dag_the_target_does_not_have_is_dead_lettered_unknown_dag(
    way: str,
    mwaa_stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    emulator: MwaaEmulator,
) -> None:
    fake = _airflow_for(way, "2", airflow, emulator)
    mwaa_stack.put_target("team-b", _trigger_target(way, fake, mwaa_stack, dag_id="renamed_away"))
    sent = envelope(BEARS)
    mwaa_stack.send(sent)

    invocations = lambda_driver.drain()

    assert [inv.failed_ids for inv in invocations] == [set()]  # permanent: dead-lettered at once
    [letter] = mwaa_stack.dead_letters(expected=1)
    assert letter.attributes["target"] == "team-b"
    assert letter.attributes["error"] == "unknown_dag"
    assert "renamed_away" in letter.attributes["detail"]
    assert UNCONFIRMED not in letter.attributes
    assert letter.envelope == {**sent, "only_targets": ["team-b"]}
    assert fake.dag_runs == []


def test_an_mwaa_target_outside_the_allowed_environments_is_broken_and_its_replay_is_invalid_target(
    mwaa_stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    emulator: MwaaEmulator,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake = airflow("3", datasets=[BEARS])
    emulator.add_environment("team-x-prod", fake.url, airflow="3")  # it exists, but the stack may not call it
    mwaa_stack.put_target("team-x", {"mwaa": {"environment": "team-x-prod"}, "datasets": [BEARS]})
    mwaa_stack.send(envelope(BEARS))
    lambda_driver.drain()
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(doc.get("target") == "team-x" and "InvalidTargetConfig" in doc for doc in emf)
    assert mwaa_stack.dead_letters(expected=0, timeout_s=0.5) == []  # unrouted: not a usable target

    mwaa_stack.send(envelope(BEARS, only_targets=["team-x"]))  # a replay aimed at it
    lambda_driver.drain()

    [letter] = mwaa_stack.dead_letters(expected=1)
    assert (letter.attributes["target"], letter.attributes["error"]) == ("team-x", "invalid_target")
    assert "team-x-prod is not one this stack may invoke" in letter.attributes["detail"]
    assert "MWAA_ENVIRONMENTS" in letter.attributes["detail"]
    assert emulator.calls == []  # never attempted
    assert fake.requests == []


def test_a_cross_account_mwaa_target_is_reached_as_its_assumed_role_only(
    mwaa_stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The function assumes the target's role_arn through (moto's) STS; the environment admits only that role."""
    from dataset_forwarder import runtime

    role = mwaa_stack.target_role_arns
    fake = airflow("3", datasets=[BEARS])
    fake.add_dag("consumer")
    with MwaaEmulator(keys={}, moto_endpoint=moto_endpoint) as emulator:
        emulator.add_key("testing", "testing", "arn:aws:iam::123456789012:role/dataset-forwarder-function")
        emulator.add_environment(ENVIRONMENT, fake.url, airflow="3", account="210987654321", allow=[role])
        monkeypatch.setenv("AWS_ENDPOINT_URL_MWAA", emulator.endpoint)
        runtime.reset()
        with_role = {"environment": ENVIRONMENT, "role_arn": role}
        mwaa_stack.put_target(
            "team-c", {"mwaa": with_role, "action": "trigger_dag", "dag_id": "consumer", "datasets": [BEARS]}
        )
        mwaa_stack.put_target("own-identity", {"mwaa": {"environment": ENVIRONMENT}, "datasets": [BEARS]})
        sent = envelope(BEARS)
        mwaa_stack.send(sent)

        lambda_driver.drain()

        [run] = fake.dag_runs
        assert run.run_id == f"dataset_forwarder__{sent['id']}"
        [letter] = mwaa_stack.dead_letters(expected=1)
        assert (letter.attributes["target"], letter.attributes["error"]) == ("own-identity", "auth")
        callers = {(call.caller, call.error) for call in emulator.calls}
        assert callers == {
            ("arn:aws:sts::210987654321:assumed-role/dataset-forwarder-invoke/dataset-forwarder", None),
            ("arn:aws:iam::123456789012:role/dataset-forwarder-function", "AccessDeniedException"),
        }
        assert fake.events == []
