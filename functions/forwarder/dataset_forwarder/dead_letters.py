"""Dead letters: one DLQ message per failed (event, target), with the reason (docs/operate.md, "Dead letters")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .envelope import sqs_text
from .outcomes import MAX_DETAIL

NO_TARGET = "-"
# The String message attributes of a dead letter: this module writes and reads them, nobody else.
TARGET, ERROR, DETAIL, ATTEMPTS, FAILED_AT, UNCONFIRMED = (
    "target",
    "error",
    "detail",
    "attempts",
    "failed_at",
    "unconfirmed",
)


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

    def attribute_values(self) -> dict[str, str]:
        values = {
            TARGET: self.target,
            ERROR: self.error,
            DETAIL: self.detail or "-",
            ATTEMPTS: str(self.attempts),
            FAILED_AT: self.failed_at,
        }
        if self.unconfirmed:
            values[UNCONFIRMED] = "true"
        return values

    def message_attributes(self) -> dict[str, dict[str, str]]:
        return {key: {"DataType": "String", "StringValue": value} for key, value in self.attribute_values().items()}

    @classmethod
    def from_message(cls, body: str, attributes: Mapping[str, str]) -> DeadLetter:
        """A letter read back from the DLQ (`attributes`: name → StringValue); unknown values read as `?`/empty."""
        try:
            attempts = int(attributes.get(ATTEMPTS, "0"))
        except ValueError:
            attempts = 0
        detail = attributes.get(DETAIL, "")
        return cls(
            body=body,
            target=attributes.get(TARGET, "?"),
            error=attributes.get(ERROR, "?"),
            detail="" if detail == "-" else detail,
            attempts=attempts,
            failed_at=attributes.get(FAILED_AT, ""),
            unconfirmed=attributes.get(UNCONFIRMED) == "true",
        )


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
