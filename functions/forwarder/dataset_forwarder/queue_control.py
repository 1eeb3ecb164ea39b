"""Pushes back the visibility of a record that will be retried (SQS's own delay between tries)."""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class QueueControl:
    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {}

    def queue_url(self, queue_arn: str) -> str:
        with self._lock:
            url = self._urls.get(queue_arn)
        if url:
            return url
        parts = queue_arn.split(":")
        if len(parts) != 6 or parts[2] != "sqs":
            raise ValueError(f"not an SQS queue ARN: {queue_arn!r}")
        url = self._sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])["QueueUrl"]
        with self._lock:
            self._urls[queue_arn] = url
        return str(url)

    def delay(self, queue_arn: str, receipt_handle: str, seconds: int) -> bool:
        """Make the record visible again in `seconds`; a failure only costs the backoff, so it is logged."""
        try:
            self._sqs.change_message_visibility(
                QueueUrl=self.queue_url(queue_arn), ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
        except Exception as exc:
            log.warning(
                "cannot change the visibility of a record to retry; the queue's own timeout applies",
                extra={"error": f"{type(exc).__name__}: {exc}", "queue_arn": queue_arn},
            )
            return False
        return True
