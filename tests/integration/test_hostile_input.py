"""Hostile and odd input through the real handler: it never raises; each record is acked or reported."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.airflow_api import FakeAirflow, Fault
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.lambda_sqs import FakeLambdaContext, LambdaSqsDriver

BEARS = "s3://bucket/bears"
ARN = "arn:aws:sqs:us-east-1:123456789012:not-a-real-queue"


def lambda_event(bodies: list[str]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": "rh-" + uuid.uuid4().hex,
                "body": body,
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "0"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": ARN,
                "awsRegion": "us-east-1",
            }
            for body in bodies
        ]
    }


bodies = st.one_of(
    st.text(max_size=200),
    st.builds(json.dumps, st.dictionaries(st.sampled_from(["version", "id", "uri", "extra", "trail"]), st.integers())),
    st.builds(
        lambda uri, extra: json.dumps(envelope(uri, extra=extra)),
        st.text(alphabet="s3:/bé*?[]_%|", min_size=1, max_size=30),
        st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    ),
)


@given(st.lists(bodies, min_size=1, max_size=5))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_handler_never_raises_and_answers_for_every_record(stack: ForwarderStack, batch: list[str]) -> None:
    import app

    event = lambda_event(batch)

    response = app.lambda_handler(event, FakeLambdaContext())

    ids = {record["messageId"] for record in event["Records"]}
    assert {item["itemIdentifier"] for item in response["batchItemFailures"]} <= ids


def test_unicode_and_glob_metacharacters_in_uris_route_exactly(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("3")
    odd = ["s3://b/bär/[2026]*.csv", "s3://b/50%_done", "s3://b/a|b"]
    for uri in odd:
        fake.add_dataset(uri)
    stack.put_target("team-b", {"url": fake.url, "airflow": "3", "datasets": odd})
    for uri in odd:
        stack.send(envelope(uri))

    lambda_driver.drain()

    assert sorted(e.uri for e in fake.events) == sorted(odd)
    assert stack.dead_letters() == []


def test_huge_extra_is_delivered_or_dead_lettered_with_a_reason(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("3")
    fake.add_dataset(BEARS)
    stack.put_target("team-b", {"url": fake.url, "airflow": "3", "datasets": [BEARS]})
    stack.put_target("picky", {"url": fake.url, "airflow": "3", "datasets": ["s3://bucket/big"]})
    fake.add_dataset("s3://bucket/big")
    fake.inject(Fault(status=413, method="POST"))  # the first POST, whichever target it is, is refused
    big = {"blob": "x" * 240_000}
    stack.send(envelope(BEARS, extra=big))
    stack.send(envelope("s3://bucket/big", extra=big))

    lambda_driver.drain()

    letters = stack.dead_letters(expected=1)
    assert [d.attributes["error"] for d in letters] == ["http_413"]
    assert len(fake.events) == 1
    assert fake.events[0].extra["blob"] == big["blob"]
