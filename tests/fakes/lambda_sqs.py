"""What Lambda's SQS event source does, for tests: receive a batch, call the handler, delete the acked.

Records that the handler reports in `batchItemFailures` are left on the queue, so SQS's own
visibility timeout (as changed by the handler) and redrive policy decide what happens next.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass
class FakeLambdaContext:
    """The attributes of a Lambda context that Powertools and the idempotency utility read."""

    timeout_s: float = 60.0
    function_name: str = "dataset-forwarder"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:dataset-forwarder"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/dataset-forwarder"
    log_stream_name: str = "local"
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


def to_lambda_record(message: dict[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """An SQS ReceiveMessage entry in the shape Lambda hands to the function."""
    attributes = {
        name: {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value["DataType"],
        }
        for name, value in message.get("MessageAttributes", {}).items()
    }
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": message.get("Attributes", {}),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody"),
        "md5OfMessageAttributes": message.get("MD5OfMessageAttributes"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


@dataclass
class Invocation:
    event: dict[str, Any]
    response: dict[str, Any]

    @property
    def failed_ids(self) -> set[str]:
        return {item["itemIdentifier"] for item in self.response.get("batchItemFailures", [])}

    @property
    def message_ids(self) -> list[str]:
        return [record["messageId"] for record in self.event["Records"]]


class LambdaSqsDriver:
    def __init__(
        self, sqs: Any, queue_url: str, handler: Handler, *, batch_size: int = 10, timeout_s: float = 60.0
    ) -> None:
        self._sqs = sqs
        self.timeout_s = timeout_s
        self._queue_url = queue_url
        self._handler = handler
        self._batch_size = batch_size
        attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        self.queue_arn: str = attrs["QueueArn"]
        self._region: str = sqs.meta.region_name
        self.invocations: list[Invocation] = []

    def poll(self, wait_s: int = 0) -> Invocation | None:
        received = self._sqs.receive_message(
            QueueUrl=self._queue_url,
            MaxNumberOfMessages=self._batch_size,
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not received:
            return None
        event = {"Records": [to_lambda_record(m, self.queue_arn, self._region) for m in received]}
        try:
            response = self._handler(event, FakeLambdaContext(timeout_s=self.timeout_s))
        except Exception:  # a failed invocation: Lambda deletes nothing, SQS redelivers after the timeout
            every = [{"itemIdentifier": m["MessageId"]} for m in received]
            response = {"batchItemFailures": every, "errored": True}
        invocation = Invocation(event, response)
        self.invocations.append(invocation)
        acked = [m for m in received if m["MessageId"] not in invocation.failed_ids]
        if acked:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(acked)],
            )
        return invocation

    def pending(self) -> int:
        attrs = self._sqs.get_queue_attributes(
            QueueUrl=self._queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])

    def drain(self, timeout_s: float = 20.0) -> list[Invocation]:
        """Invoke until the queue is empty (retries included); fail loudly at the deadline."""
        deadline = time.monotonic() + timeout_s
        done: list[Invocation] = []
        while time.monotonic() < deadline:
            invocation = self.poll(wait_s=0)
            if invocation is not None:
                done.append(invocation)
                continue
            if self.pending() == 0:
                return done
            invocation = self.poll(wait_s=1)  # records wait out their visibility delay
            if invocation is not None:
                done.append(invocation)
        raise AssertionError(f"queue not drained within {timeout_s}s; {self.pending()} messages left")
