"""Faults on the downstream side: Retry-After, timeouts, resets, and secrets never leaking."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dataset_forwarder.dead_letters import UNCONFIRMED
from devkit.airflow_api import FakeAirflow, Fault
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.lambda_sqs import FakeLambdaContext, LambdaSqsDriver
from tests.integration.conftest import LogCapture, SeenByOperator, polled

BEARS = "s3://bucket/bears"
EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"


def test_retry_after_keeps_the_record_invisible_until_it_passes(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS)
    fake.inject(Fault(status=429, retry_after="2", method="POST"))
    message_id = stack.send(envelope(BEARS))

    first = polled(lambda_driver)
    assert first.failed_ids == {message_id}
    hidden_from = time.monotonic()
    assert lambda_driver.poll() is None  # not visible again at once

    lambda_driver.drain(timeout_s=10)

    assert time.monotonic() - hidden_from >= 1.5
    assert len(fake.events) == 1


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault(delay_s=1.5, method="POST"), "timeout"),
        (Fault(reset=True, method="POST"), "connection"),
        (Fault(status=500, method="POST"), "http_500"),
    ],
)
def test_transient_faults_are_retried_then_delivered(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    forwarder_logs: LogCapture,
    fault: Fault,
    error: str,
) -> None:
    fake = served_target(BEARS, version="2", timeout_s=0.5)
    fake.inject(fault)
    message_id = stack.send(envelope(BEARS))

    first = polled(lambda_driver)
    assert first.failed_ids == {message_id}
    if error == "timeout":
        fake.wait_for_events(1, timeout_s=5)  # the slow POST did land, after the forwarder gave up on it
    lambda_driver.drain()

    assert stack.dead_letters() == []
    assert f'"error":"{error}"' in forwarder_logs.text.replace(" ", "")
    assert len(fake.events) == 1  # the retry checks downstream before posting again


def test_no_secret_appears_in_logs_metrics_or_dead_letters(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    airflow: Callable[..., FakeAirflow],
    forwarder_logs: LogCapture,
    everything_seen: SeenByOperator,
) -> None:
    secrets = {
        "bearer": "bearer-SECRET-7f3a9c",
        "wrong": "wrong-SECRET-0c1d2e",
        "basic": "basic-SECRET-44aa21",
        "jwt": "jwt-password-SECRET-99",
    }
    good_bearer = airflow("3", auth="bearer", token=secrets["bearer"])
    refused = airflow("3", auth="bearer", token="something-else-entirely")
    basic = airflow("2", auth="basic", password=secrets["basic"])
    token = airflow("3", auth="airflow-token", password=secrets["jwt"])
    for fake in (good_bearer, refused, basic, token):
        fake.add_dataset(BEARS)
    stack.put_target(
        "bearer",
        {
            "url": good_bearer.url,
            "datasets": [BEARS],
            "auth": {"type": "bearer", "secret": stack.put_secret("bearer", secrets["bearer"])},
        },
    )
    stack.put_target(
        "refused",
        {
            "url": refused.url,
            "datasets": [BEARS],
            "auth": {"type": "bearer", "secret": stack.put_secret("refused", secrets["wrong"])},
        },
    )
    stack.put_target(
        "basic",
        {
            "url": basic.url,
            "datasets": [BEARS],
            "auth": {"type": "basic", "username": "admin", "secret": stack.put_secret("basic", secrets["basic"])},
        },
    )
    stack.put_target(
        "token",
        {
            "url": token.url,
            "datasets": [BEARS],
            "auth": {"type": "airflow-token", "username": "admin", "secret": stack.put_secret("token", secrets["jwt"])},
        },
    )
    token.inject(Fault(status=503, method="POST", path_prefix="/api/v2/assets/events"))
    stack.send(envelope(BEARS))

    lambda_driver.drain()

    letters = stack.dead_letters(expected=1)
    assert [d.attributes["target"] for d in letters] == ["refused"]
    assert len(good_bearer.events) == len(basic.events) == len(token.events) == 1
    jwts = [e.authorization for e in token.events]
    captured = everything_seen(letters)
    assert forwarder_logs.lines  # the run did log
    for value in [*secrets.values(), *(j.split()[-1] for j in jwts if j)]:
        assert value not in captured


def test_sample_events_run_through_the_handler_as_sam_local_invoke_would(
    stack: ForwarderStack, served_target: Callable[..., FakeAirflow]
) -> None:
    import app

    fake = served_target(BEARS, pinned=False)
    event = json.loads((EVENTS_DIR / "sqs-event-malformed.json").read_text())

    response = app.lambda_handler(event, FakeLambdaContext())

    assert response == {"batchItemFailures": []}
    assert len(fake.events) == 1
    letters = stack.dead_letters(expected=4)
    assert {d.attributes["error"] for d in letters} == {"invalid_message"}


def test_delivery_that_could_outlive_the_invocation_is_not_started(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, name="slow-budget", timeout_s=15)
    message_id = stack.send(envelope(BEARS))
    lambda_driver.timeout_s = 20  # 2 calls x 15 s would not fit

    first = polled(lambda_driver)

    assert first.failed_ids == {message_id}
    assert fake.requests == []
    lambda_driver.timeout_s = 120
    lambda_driver.drain()
    assert len(fake.events) == 1


def test_airflow3_post_that_landed_after_a_timeout_is_not_posted_again(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, token="tok-123456", pinned=False, datasets=["s3://bucket/*"], timeout_s=0.5)
    fake.add_dataset("s3://bucket/other")
    stack.send(envelope("s3://bucket/other"))  # another event of the same deployment, already there
    lambda_driver.drain()
    fake.inject(Fault(delay_s=1.5, method="POST"))
    stack.send(envelope(BEARS))

    first = polled(lambda_driver)
    assert first.failed_ids
    fake.wait_for_events(2, timeout_s=5)
    lambda_driver.drain()

    assert len(fake.events_for(BEARS)) == 1
    assert fake.count("GET", "/api/v2/assets/events") == 1


def _ambiguous_first_try(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> tuple[FakeAirflow, dict[str, Any], str]:
    """One try of an event whose POST lands after the forwarder gave up waiting: (fake, event, receipt handle)."""
    fake = served_target(BEARS, pinned=False, timeout_s=0.5)
    fake.inject(Fault(delay_s=1.5, method="POST"))
    event = envelope(BEARS)
    stack.send(event)
    first = polled(lambda_driver)
    assert first.failed_ids  # to be retried
    return fake, event, first.event["Records"][0]["receiptHandle"]


def test_another_copy_after_an_ambiguous_try_checks_the_target_before_posting(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake, event, receipt = _ambiguous_first_try(stack, lambda_driver, served_target)
    stack.sqs.change_message_visibility(QueueUrl=stack.queue_url, ReceiptHandle=receipt, VisibilityTimeout=60)
    fake.wait_for_events(1, timeout_s=5)  # the first try's POST landed after all

    stack.send(event)  # the same event in a new message (a listener's resend): its first receive
    second = polled(lambda_driver)

    assert second.failed_ids == set()
    assert len(fake.events) == 1  # found downstream, not posted again
    assert fake.count("GET", "/api/v2/assets/events") == 1
    assert fake.count("POST", "/api/v2/assets/events") == 1


def test_another_copy_during_an_ambiguous_try_s_hold_waits(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataset_forwarder import runtime

    monkeypatch.setenv("RETRY_BASE_DELAY_S", "60")  # holds the pair for 30 s after an ambiguous try
    monkeypatch.setenv("RETRY_MAX_DELAY_S", "60")
    runtime.reset()
    fake, event, _ = _ambiguous_first_try(stack, lambda_driver, served_target)

    stack.send(event)  # while the first try's POST may still land
    second = lambda_driver.poll()
    fake.wait_for_events(1, timeout_s=5)

    assert second is not None
    assert len(second.failed_ids) == 1  # told that the pair is in flight: retried later
    assert fake.count("POST", "/api/v2/assets/events") == 1
    assert fake.count("GET", "/api/v2/assets/events") == 0


def test_retry_that_cannot_check_an_ambiguous_try_dead_letters_it_as_unconfirmed_and_redrive_never_duplicates(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    from dataset_forwarder_cli.dead_letter_box import DeadLetterBox

    fake = served_target(BEARS, token="tok-old-123456", pinned=False, timeout_s=0.5)
    fake.inject(Fault(delay_s=1.5, method="POST"))  # lands downstream after we gave up waiting
    stack.send(envelope(BEARS))
    first = polled(lambda_driver)
    assert first.failed_ids
    fake.wait_for_events(1, timeout_s=5)
    fake.set_token("tok-new-654321")  # revoked before the retry can check whether the POST landed

    lambda_driver.drain()

    box = DeadLetterBox(stack.sqs, stack.dlq_url)
    [letter] = box.peek()
    assert letter.error == "auth"
    assert letter.attributes.get(UNCONFIRMED) == "true"
    assert len(fake.events) == 1

    stack.put_secret("team-b", "tok-new-654321")  # the operator fixes the token, then redrives
    box.redrive(stack.queue_url)
    lambda_driver.drain()

    assert len(fake.events) == 1  # checked downstream, found, not posted again
    assert box.peek() == []


def test_a_copy_that_runs_out_of_tries_is_not_dead_lettered_when_another_copy_delivered_the_event(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, pinned=False)
    event = envelope(BEARS)
    stack.send(event)
    lambda_driver.drain()
    assert len(fake.events) == 1

    stack.send(event)  # a second copy, whose every try finds too little time left to start (MAX_ATTEMPTS=3)
    lambda_driver.timeout_s = 2
    invocations = lambda_driver.drain()

    assert len(invocations) == 3
    assert stack.dead_letters(expected=0, timeout_s=1) == []
    assert len(fake.events) == 1


def test_a_last_try_whose_post_lost_its_answer_is_dead_lettered_as_unconfirmed_and_redriven_once(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    from dataset_forwarder_cli.dead_letter_box import DeadLetterBox

    # a short timeout: after a POST that may have landed, the pair is held for 2 timeouts before the next try
    fake = served_target(BEARS, timeout_s=1)
    fake.inject(Fault(reset=True, method="POST"), times=3)  # every try's POST dies waiting for its answer
    stack.send(envelope(BEARS))

    lambda_driver.drain()  # MAX_ATTEMPTS=3

    box = DeadLetterBox(stack.sqs, stack.dlq_url)
    [letter] = box.peek()
    assert letter.error == "connection"
    assert letter.attributes.get(UNCONFIRMED) == "true"  # the operator sees it may be there already
    assert fake.count("POST", "/api/v2/assets/events") == 3
    assert fake.count("GET", "/api/v2/assets/events") == 2  # tries 2 and 3 checked first

    box.redrive(stack.queue_url)
    lambda_driver.drain()

    assert len(fake.events) == 1
    assert fake.count("GET", "/api/v2/assets/events") == 3  # the redrive checked before posting
    assert box.peek() == []
