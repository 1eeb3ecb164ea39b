"""Lambda's rules for partial batch responses and the record shape, as the local poller applies them."""

from __future__ import annotations

import pytest

from dataset_forwarder_cli.local.poller import EventSourceConfig, failed_message_ids, to_lambda_record

IDS = ["m1", "m2", "m3"]


@pytest.mark.parametrize(
    ("response", "failed", "whole_batch"),
    [
        (None, set(), False),
        ({}, set(), False),
        ({"batchItemFailures": []}, set(), False),
        ({"batchItemFailures": [{"itemIdentifier": "m2"}]}, {"m2"}, False),
        ({"batchItemFailures": [{"itemIdentifier": "m1"}, {"itemIdentifier": "m3"}]}, {"m1", "m3"}, False),
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, set(IDS), True),
        ({"batchItemFailures": [{"itemIdentifier": None}]}, set(IDS), True),
        ({"batchItemFailures": [{"itemId": "m1"}]}, set(IDS), True),
        ({"batchItemFailures": [{"itemIdentifier": "elsewhere"}]}, set(IDS), True),
        ({"batchItemFailures": "m1"}, set(IDS), True),
        (["m1"], set(IDS), True),
    ],
)
def test_partial_batch_response_rules(response: object, failed: set[str], whole_batch: bool) -> None:
    result, reason = failed_message_ids(response, IDS, report_batch_item_failures=True)
    assert result == failed
    assert (reason is not None) is whole_batch


def test_without_report_batch_item_failures_any_answer_is_success() -> None:
    response = {"batchItemFailures": [{"itemIdentifier": "m1"}]}
    assert failed_message_ids(response, IDS, report_batch_item_failures=False) == (set(), None)


def test_record_has_the_shape_lambda_hands_to_the_function() -> None:
    message = {
        "MessageId": "m1",
        "ReceiptHandle": "rh",
        "Body": "{}",
        "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1"},
        "MessageAttributes": {"uri": {"DataType": "String", "StringValue": "s3://b/k"}},
        "MD5OfBody": "x",
    }
    record = to_lambda_record(message, "arn:aws:sqs:us-east-1:123456789012:q", "us-east-1")
    assert record["messageId"] == "m1"
    assert record["receiptHandle"] == "rh"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert record["messageAttributes"]["uri"] == {
        "stringValue": "s3://b/k",
        "binaryValue": None,
        "stringListValues": [],
        "binaryListValues": [],
        "dataType": "String",
    }
    assert (record["eventSource"], record["eventSourceARN"], record["awsRegion"]) == (
        "aws:sqs",
        "arn:aws:sqs:us-east-1:123456789012:q",
        "us-east-1",
    )


@pytest.mark.parametrize(
    "settings", [{"batch_size": 0}, {"maximum_concurrency": 0}, {"wait_time_s": 21}, {"wait_time_s": -1}]
)
def test_event_source_settings_are_validated(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        EventSourceConfig(queue_url="u", queue_arn="a", region="r", **settings)
