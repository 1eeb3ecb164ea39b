"""Dead letters (DESIGN.md §6): one DLQ message per failed (event, target), with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .envelope import sqs_text
from .outcomes import MAX_DETAIL

NO_TARGET = "-"
UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class DeadLetter:
    """What goes to the DLQ: the body to replay and the String attributes that explain it."""

    body: str
    target: str
    error: str
    detail: str
    attempts: int
    failed_at: str
    unconfirmed: bool = False  # the target may already hold the pair; a redrive checks before posting

    @classmethod
    def now(
        cls, *, body: str, target: str, error: str, detail: str, attempts: int, unconfirmed: bool = False
    ) -> DeadLetter:
        failed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        # the target may be a name from the upstream's only_targets: any character at all
        return cls(
            sqs_text(body), sqs_text(target), error, sqs_text(detail)[:MAX_DETAIL], attempts, failed_at, unconfirmed
        )

    def message_attributes(self) -> dict[str, dict[str, str]]:
        values = {
            "target": self.target,
            "error": self.error,
            "detail": self.detail or "-",
            "attempts": str(self.attempts),
            "failed_at": self.failed_at,
        }
        if self.unconfirmed:
            values[UNCONFIRMED] = "true"
        return {key: {"DataType": "String", "StringValue": value} for key, value in values.items()}


class DeadLetterQueue:
    """Sends dead letters with an SQS client created by the caller (lazily, in the runtime)."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url

    def send(self, letter: DeadLetter) -> str:
        response = self._sqs.send_message(
            QueueUrl=self._queue_url,
            MessageBody=letter.body,
            MessageAttributes=letter.message_attributes(),
        )
        return str(response["MessageId"])
