"""Our moto server launcher makes SQS deletes atomic with sends (moto rebuilds the list without the lock)."""

from __future__ import annotations

import threading

import boto3
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.sqs.models import sqs_backends

from dataset_forwarder_cli.local.moto_fixes import apply


@mock_aws
def test_a_delete_waits_for_the_queue_lock_that_sends_take() -> None:
    apply()
    apply()  # idempotent
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="events")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="one")
    handle = sqs.receive_message(QueueUrl=url)["Messages"][0]["ReceiptHandle"]
    queue = sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues["events"]
    deleted = threading.Event()

    with queue._messages_lock:  # a send is appending right now
        worker = threading.Thread(target=lambda: (queue.delete_message(handle), deleted.set()))
        worker.start()
        assert not deleted.wait(0.3)  # the delete cannot rebuild the list under the send's feet
    worker.join(5)

    assert deleted.is_set()
    assert queue._messages == []


@mock_aws
def test_the_faster_moto_still_expires_messages_past_the_retention_period_and_keeps_fresh_ones() -> None:
    apply()
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="short", Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="old")
    queue = sqs_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].queues["short"]
    queue._messages[0].sent_timestamp -= 120_000  # sent two minutes ago, kept for one
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []

    sqs.send_message(QueueUrl=url, MessageBody="fresh", DelaySeconds=0)
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30)["Messages"]
    assert [message["Body"] for message in received] == ["fresh"]
    # visibility still follows the clock: the received message is hidden for its 30 s
    assert sqs.receive_message(QueueUrl=url).get("Messages", []) == []
