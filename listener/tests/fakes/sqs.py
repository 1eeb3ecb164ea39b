"""A stand-in for boto3's SQS client: records what was sent, fails or hangs on request."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from botocore.exceptions import ClientError, EndpointConnectionError


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "SendMessage")


def connection_error() -> EndpointConnectionError:
    return EndpointConnectionError(endpoint_url="https://sqs.example.invalid")


class StubSqs:
    def __init__(
        self,
        *,
        fail: BaseException | None = None,
        fail_times: int = -1,
        delay_s: float = 0.0,
        refuse_entries: dict[str, str] | None = None,
    ) -> None:
        self.sent: list[dict[str, Any]] = []
        self.calls = 0
        self.batch_calls: list[int] = []  # entries per SendMessageBatch call
        self.fail = fail
        self.fail_times = fail_times  # -1: every call fails while `fail` is set
        self.delay_s = delay_s
        self.refuse_entries = refuse_entries or {}  # envelope id -> error code of its batch entry
        self._lock = threading.Lock()

    def send_message(self, **kwargs: Any) -> dict[str, Any]:
        self._call()
        with self._lock:
            self.sent.append(kwargs)
        return {"MessageId": f"m-{len(self.sent)}"}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        assert 1 <= len(Entries) <= 10
        assert len({entry["Id"] for entry in Entries}) == len(Entries)
        self._call()
        successful, failed = [], []
        with self._lock:
            self.batch_calls.append(len(Entries))
            for entry in Entries:
                code = self.refuse_entries.get(json.loads(entry["MessageBody"])["id"])
                if code:
                    failed.append({"Id": entry["Id"], "SenderFault": True, "Code": code, "Message": code})
                    continue
                message = {key: value for key, value in entry.items() if key != "Id"}
                self.sent.append({"QueueUrl": QueueUrl, **message})
                successful.append({"Id": entry["Id"], "MessageId": f"m-{len(self.sent)}"})
        return {"Successful": successful, "Failed": failed}

    def _call(self) -> None:
        with self._lock:
            self.calls += 1
            failing = self.fail is not None and (self.fail_times < 0 or self.calls <= self.fail_times)
        if self.delay_s:
            time.sleep(self.delay_s)
        if failing:
            raise self.fail  # type: ignore[misc]

    @property
    def bodies(self) -> list[str]:
        return [message["MessageBody"] for message in self.sent]
