"""The parts of an SQS record the forwarder needs, independent of Powertools' data classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class InboundMessage:
    """The parts of an SQS record the forwarder needs (built from Powertools' `SQSRecord`)."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int
    queue_arn: str

    @classmethod
    def from_record(cls, record: Any) -> InboundMessage:
        return cls(
            message_id=record.message_id,
            receipt_handle=record.receipt_handle,
            body=record.body or "",
            receive_count=int(record.attributes.approximate_receive_count or 1),
            queue_arn=record.event_source_arn,
        )
