"""A stand-in for boto3's SQS client: records what was sent, fails or hangs on request."""

from __future__ import annotations

import threading
import time
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "SendMessage")


def connection_error() -> EndpointConnectionError:
    return EndpointConnectionError(endpoint_url="https://sqs.example.invalid")


class StubSqs:
    def __init__(self, *, fail: BaseException | None = None, fail_times: int = -1, delay_s: float = 0.0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.calls = 0
        self.fail = fail
        self.fail_times = fail_times  # -1: every call fails while `fail` is set
        self.delay_s = delay_s
        self._lock = threading.Lock()

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            failing = self.fail is not None and (self.fail_times < 0 or self.calls <= self.fail_times)
        if self.delay_s:
            time.sleep(self.delay_s)
        if failing:
            raise self.fail  # type: ignore[misc]
        with self._lock:
            self.sent.append(kwargs)
        return {"MessageId": f"m-{len(self.sent)}"}

    @property
    def bodies(self) -> list[str]:
        return [message["MessageBody"] for message in self.sent]
