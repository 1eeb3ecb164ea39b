"""The SQS side of the listener: envelopes onto the queue within a hard time budget, never raising.

``SqsTransport`` sends envelopes (one SendMessage, or SendMessageBatch for several) on one worker
thread, and returns a ``Result`` per envelope by the deadline whatever the network, DNS or
credentials do; SQS's answer is classified as sent, to retry later, or rejected for good. An
envelope whose body or attributes cannot even be built is rejected without a try.
"""

from __future__ import annotations

import enum
import os
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable

from dataset_forwarder_listener.envelope import EnvelopeBody, dumps, message_attributes

# Refusals that are about the message itself (too large, bad characters): sending it again can
# never succeed. Everything else (throttling, credentials, a missing queue, KMS) may heal.
PERMANENT_ERRORS = frozenset({"InvalidMessageContents", "InvalidParameterValue", "InvalidAttributeValue"})
# Errors about a SendMessageBatch request as a whole, not about its messages.
BATCH_ERRORS = frozenset(
    {"BatchRequestTooLong", "TooManyEntriesInBatchRequest", "BatchEntryIdsNotDistinct", "InvalidBatchEntryId"}
)
MAX_BATCH = 10  # entries SQS takes in one SendMessageBatch
MAX_BATCH_BYTES = 256 * 1024  # the request's size limit on every queue
_REGION_IN_URL = re.compile(r"^https?://(?:sqs[.-])?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\.com", re.I)


class SendOutcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Result:
    outcome: SendOutcome
    detail: str = ""
    code: str = ""


def region_from_queue_url(queue_url: str) -> str | None:
    """The AWS region named in a queue URL (``https://sqs.eu-west-1.amazonaws.com/…``), if any."""
    match = _REGION_IN_URL.match(queue_url)
    return match.group(1).lower() if match else None


def default_client_factory(queue_url: str) -> Callable[[], Any]:
    """A factory for the SQS client: short timeouts, two attempts, standard AWS configuration."""

    def create() -> Any:
        import boto3  # noqa: PLC0415 (boto3 is slow to import: only once a send needs it)
        from botocore.config import Config  # noqa: PLC0415

        session = boto3.session.Session()
        region = session.region_name or region_from_queue_url(queue_url) or "us-east-1"
        config = Config(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "max_attempts": 2})
        return session.client("sqs", region_name=region, config=config)

    return create


class _Worker:
    """One daemon thread that runs the SQS calls handed to it, one after the other.

    A thread per call would cost a thread start (and the GIL hand-offs that go with it) per event,
    in the process whose request path the listener must not slow down.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        threading.Thread(target=self._run, name="dataset-forwarder-send", daemon=True).start()

    def run(self, call: Callable[[], None]) -> None:
        self._calls.put(call)

    def retire(self) -> None:
        """Stop after the calls already handed over (the current one may be stuck for a while)."""
        self._calls.put(None)

    def _run(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            call()


class SqsTransport:
    """Sends envelopes to the queue; bounded by a timeout whatever the network or credentials do."""

    def __init__(self, queue_url: str, client_factory: Callable[[], Any] | None = None) -> None:
        self.queue_url = queue_url
        self._factory = client_factory or default_client_factory(queue_url)
        self._client: Any = None
        self._client_pid = 0
        self._worker: _Worker | None = None
        self._lock = threading.Lock()

    def send(self, envelope: EnvelopeBody, timeout_s: float) -> Result:
        """Send ``envelope``; never raises, returns within ``timeout_s`` (the call may finish later)."""
        answer = self._call(lambda client: self._send_one(client, envelope), timeout_s)
        return answer if isinstance(answer, Result) else Result(SendOutcome.RETRY, f"unexpected answer {answer!r}")

    def send_batch(self, envelopes: Sequence[EnvelopeBody], timeout_s: float) -> list[Result]:
        """Send ``envelopes`` in as few calls as SQS allows; one result per envelope, in order.

        Never raises and returns within ``timeout_s``. Each envelope keeps its own body and
        attributes; SQS accepts or refuses each entry on its own. After a call that failed as a
        whole and may heal, the envelopes not tried yet get the same answer without a try.
        """
        deadline = time.monotonic() + timeout_s
        answers: list[Result | None] = [None] * len(envelopes)
        sendable: list[int] = []
        for index, envelope in enumerate(envelopes):
            problem = unsendable(envelope)
            if problem is None:
                sendable.append(index)
            else:  # e.g. a spooled file edited by hand: SQS could never take it, so it must not block the others
                answers[index] = Result(SendOutcome.REJECTED, f"not a sendable envelope: {problem}")
        results: list[Result] = []
        for chunk in _chunks([envelopes[index] for index in sendable]):
            if results and results[-1].outcome is SendOutcome.RETRY:
                results.extend([results[-1]] * len(chunk))  # the queue just failed: no point trying again now
                continue
            results.extend(self._send_chunk(chunk, deadline))
        for index, result in zip(sendable, results):
            answers[index] = result
        return [answer or Result(SendOutcome.RETRY, "not tried") for answer in answers]

    def _send_chunk(self, chunk: Sequence[EnvelopeBody], deadline: float) -> list[Result]:
        if len(chunk) == 1:
            return [self.send(chunk[0], deadline - time.monotonic())]
        answer = self._call(lambda client: self._send_batch_now(client, chunk), deadline - time.monotonic())
        if isinstance(answer, list):
            return answer
        if answer.outcome is SendOutcome.REJECTED or answer.code.rsplit(".", 1)[-1] in BATCH_ERRORS:
            # Refused as a batch: that says nothing sure about each message, so each gets its own answer.
            return [self.send(envelope, deadline - time.monotonic()) for envelope in chunk]
        return [answer] * len(chunk)

    def _call(self, call: Callable[[Any], Any], timeout_s: float) -> Any:
        """``call(client)`` on the worker thread: its return value, or a Result for an error or no answer."""
        if timeout_s <= 0:
            return Result(SendOutcome.RETRY, "no time left in the budget")
        box: list[Any] = []
        done = threading.Event()

        def run() -> None:
            try:
                box.append(call(self._client_now()))
            except Exception as exc:
                box.append(_classify(exc))
            finally:
                done.set()

        # botocore's timeouts do not cover DNS or fetching credentials, so the budget is enforced
        # here; a daemon thread never delays the interpreter's exit.
        worker = self._current_worker()
        worker.run(run)
        if not done.wait(timeout_s):
            self._retire(worker)  # stuck: later calls go to a new worker
            return Result(SendOutcome.RETRY, f"no answer from SQS within {timeout_s:.1f}s")
        return box[0]

    def _current_worker(self) -> _Worker:
        with self._lock:
            if self._worker is None or self._worker.pid != os.getpid():
                self._worker = _Worker()  # first call, or a forked child: the parent's thread is not here
            return self._worker

    def _retire(self, worker: _Worker) -> None:
        with self._lock:
            if self._worker is worker:
                self._worker = None
        worker.retire()

    def _client_now(self) -> Any:
        with self._lock:
            if self._client is None or self._client_pid != os.getpid():
                # A forked child does not share its parent's client (its pooled connections are the parent's).
                self._client, self._client_pid = self._factory(), os.getpid()
            return self._client

    def _send_one(self, client: Any, envelope: EnvelopeBody) -> Result:
        client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=dumps(envelope),
            MessageAttributes=message_attributes(envelope),
        )
        return Result(SendOutcome.SENT)

    def _send_batch_now(self, client: Any, chunk: Sequence[EnvelopeBody]) -> list[Result]:
        # Entry ids are positions: envelope ids are unique per event, but one batch could hold a copy twice.
        answer = client.send_message_batch(
            QueueUrl=self.queue_url,
            Entries=[
                {"Id": str(index), "MessageBody": dumps(envelope), "MessageAttributes": message_attributes(envelope)}
                for index, envelope in enumerate(chunk)
            ],
        )
        results = [Result(SendOutcome.RETRY, "SQS did not answer for this entry")] * len(chunk)
        for entry in answer.get("Successful") or ():
            results[int(entry["Id"])] = Result(SendOutcome.SENT)
        for entry in answer.get("Failed") or ():
            code = str(entry.get("Code") or "")
            detail = f"{code}: {entry.get('Message') or ''}"
            outcome = SendOutcome.REJECTED if _is_permanent(code) else SendOutcome.RETRY
            results[int(entry["Id"])] = Result(outcome, detail, code)
        return results


def unsendable(envelope: Any) -> str | None:
    """Why ``envelope`` can never be sent (its body or attributes cannot be built); None when it can.

    Envelopes the listener builds always can; a spooled file can hold anything (a hand edit, a bug in
    another version). Such a file must be parked, not retried: it would fail the same way every time.
    """
    if not isinstance(envelope, dict):
        return f"a {type(envelope).__name__}, not an object"
    try:
        dumps(envelope)
        attributes = message_attributes(envelope)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    for name, value in attributes.items():
        if not isinstance(value["StringValue"], str) or not value["StringValue"]:
            return f"{name} is {value['StringValue']!r}, not a non-empty string"
    return None


def _chunks(envelopes: Sequence[EnvelopeBody]) -> Iterator[list[EnvelopeBody]]:
    """Envelopes in groups SQS takes in one SendMessageBatch: at most 10, and under its size limit."""
    chunk: list[EnvelopeBody] = []
    size = 0
    for envelope in envelopes:
        weight = _weight(envelope)
        if chunk and (len(chunk) == MAX_BATCH or size + weight > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(envelope)
        size += weight
    if chunk:
        yield chunk


def _weight(envelope: EnvelopeBody) -> int:
    """What an envelope counts against a batch's size limit: its body and its attributes, in bytes."""
    attributes = message_attributes(envelope)
    return len(dumps(envelope)) + sum(
        len(name) + len(value["DataType"]) + len(value["StringValue"].encode("utf-8"))
        for name, value in attributes.items()
    )


def _classify(exc: Exception) -> Result:
    error = getattr(exc, "response", None)
    code = str(((error or {}).get("Error") or {}).get("Code") or "")
    detail = f"{type(exc).__name__}: {exc}"
    if _is_permanent(code) or type(exc).__name__ == "ParamValidationError":  # botocore refused to build the request
        return Result(SendOutcome.REJECTED, detail, code)
    return Result(SendOutcome.RETRY, detail, code)


def _is_permanent(code: str) -> bool:
    return code.rsplit(".", 1)[-1] in PERMANENT_ERRORS
