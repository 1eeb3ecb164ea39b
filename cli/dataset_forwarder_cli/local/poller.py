"""A local stand-in for Lambda's SQS event source mapping: it polls the queue and invokes the handler.

What it reproduces, because the forwarder relies on it:

- long polling (`WaitTimeSeconds`, 20 s like Lambda's pollers), at most `BatchSize` records per invocation,
  gathered for up to `MaximumBatchingWindowInSeconds` (and at most 6 MB of payload);
- the event Lambda hands the function (`Records` with `messageId`, `receiptHandle`, `body`, system
  `attributes` incl. `ApproximateReceiveCount`, `messageAttributes`, `eventSourceARN`, ...) and a context
  whose remaining time counts down from the function's `Timeout`;
- `ReportBatchItemFailures`: only acknowledged records are deleted; reported ones stay on the queue, so SQS's
  visibility timeout (as the handler changed it) and the queue's redrive policy decide what happens next; an
  invalid response, a handler exception or a timeout leaves the whole batch, as Lambda does;
- concurrency: several pollers, each invoking one batch at a time, at most `MaximumConcurrency` invocations at
  once; with `ProcessInvoker` every invocation runs in an execution environment (a process) of its own, reused
  for later invocations like a warm Lambda container, so module-level state is never shared between concurrent
  invocations.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .bootstrap import LambdaContext

log = logging.getLogger(__name__)

SQS_MAX_MESSAGES_PER_CALL = 10
# What `pending` adds up: visible, in flight (received or backing off) and delayed (sent with DelaySeconds).
PENDING_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
LAMBDA_LONG_POLL_S = 20
LAMBDA_MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
POLL_SLICE_S = 2  # longest single receive call: bounds how long `Poller.stop` waits for an idle poller

Handler = Callable[[dict[str, Any], Any], Any]


# --------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class EventSourceConfig:
    """The event source mapping's settings that shape invocations (read from the deployed stack)."""

    queue_url: str
    queue_arn: str
    region: str
    batch_size: int = 10
    batching_window_s: float = 0.0
    maximum_concurrency: int = 2
    report_batch_item_failures: bool = True
    wait_time_s: int = LAMBDA_LONG_POLL_S

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"BatchSize must be at least 1, got {self.batch_size}")
        if self.maximum_concurrency < 1:
            raise ValueError(f"MaximumConcurrency must be at least 1, got {self.maximum_concurrency}")
        if not 0 <= self.wait_time_s <= LAMBDA_LONG_POLL_S:
            raise ValueError(f"WaitTimeSeconds must be 0..20, got {self.wait_time_s}")

    @classmethod
    def for_queue(cls, sqs: Any, queue_url: str, **settings: Any) -> EventSourceConfig:
        """Settings for a queue that is not part of a deployed stack (tests)."""
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]
        return cls(queue_url=queue_url, queue_arn=attributes["QueueArn"], region=sqs.meta.region_name, **settings)


@dataclass(frozen=True)
class FunctionConfig:
    """What an execution environment needs to load and run the function."""

    name: str
    handler: str  # "module.function", as in the template
    code_dir: Path  # the function's CodeUri
    timeout_s: float = 60.0
    memory_mb: int = 512
    arn: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)

    def runtime_environment(self) -> dict[str, str]:
        """The function's variables plus those the Lambda runtime sets itself."""
        region = self.environment.get("AWS_REGION") or self.environment.get("AWS_DEFAULT_REGION", "")
        runtime = {
            "AWS_LAMBDA_FUNCTION_NAME": self.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.name}",
            "LAMBDA_TASK_ROOT": str(self.code_dir),
            "_HANDLER": self.handler,
        }
        if region:
            runtime["AWS_REGION"] = region
        return {**runtime, **self.environment}


def context_for(function: FunctionConfig | None, timeout_s: float | None = None) -> LambdaContext:
    if function is None:
        return LambdaContext(timeout_s=timeout_s or 60.0)
    return LambdaContext(
        timeout_s=timeout_s or function.timeout_s,
        function_name=function.name,
        memory_limit_in_mb=function.memory_mb,
        invoked_function_arn=function.arn,
    )


# --------------------------------------------------------------------------------------------- the event


def to_lambda_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
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
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": attributes,
        "md5OfBody": message.get("MD5OfBody"),
        "md5OfMessageAttributes": message.get("MD5OfMessageAttributes"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def _record_size(message: Mapping[str, Any]) -> int:
    return len(json.dumps(message, default=str).encode("utf-8"))


def failed_message_ids(
    response: Any, message_ids: Sequence[str], *, report_batch_item_failures: bool
) -> tuple[set[str], str | None]:
    """Which records stay on the queue after a successful invocation, and why the whole batch did if it did.

    Lambda's rules for ReportBatchItemFailures: a null/empty response or an empty `batchItemFailures` is complete
    success; listed identifiers are retried; a response that is not a JSON object of that shape, or an identifier
    that is null, empty or not in the batch, fails the whole batch.
    """
    everything = set(message_ids)
    if not report_batch_item_failures or response is None or response in ({}, ""):
        return set(), None
    if not isinstance(response, Mapping):
        return everything, f"invalid response type {type(response).__name__}"
    failures = response.get("batchItemFailures")
    if failures is None:
        return set(), None
    if not isinstance(failures, list):
        return everything, "batchItemFailures is not a list"
    failed: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, Mapping) else None
        if not isinstance(identifier, str) or not identifier or identifier not in everything:
            return everything, f"invalid itemIdentifier {identifier!r}"
        failed.add(identifier)
    return failed, None


# --------------------------------------------------------------------------------------------- invokers


@dataclass
class InvokeResult:
    """What one invocation returned: the handler's response, or the error Lambda would report."""

    response: Any = None
    error: str | None = None  # "Runtime.HandlerError: ...", "Task timed out after 60.00 seconds", ...
    duration_s: float = 0.0
    init_duration_s: float | None = None  # set on a cold start


class Invoker(Protocol):
    def invoke(self, event: dict[str, Any]) -> InvokeResult: ...

    def close(self) -> None: ...


class InProcessInvoker:
    """Calls a handler in this process: one execution environment, so one invocation at a time.

    For tests that look inside the handler's process (log capture, monkeypatched environment). The handler's
    time limit is only visible to it through the context; it is not enforced.
    """

    def __init__(self, handler: Handler, function: FunctionConfig | None = None, timeout_s: float | None = None):
        self.handler = handler
        self.function = function
        self.timeout_s = timeout_s or (function.timeout_s if function else 60.0)
        self._lock = threading.Lock()

    def invoke(self, event: dict[str, Any]) -> InvokeResult:
        with self._lock:
            started = time.monotonic()
            context = context_for(self.function, self.timeout_s)
            try:
                response = self.handler(event, context)
            except Exception as exc:
                log.exception("handler raised; the whole batch stays on the queue")
                return InvokeResult(error=f"{type(exc).__name__}: {exc}", duration_s=time.monotonic() - started)
            return InvokeResult(response=response, duration_s=time.monotonic() - started)

    def close(self) -> None:
        return None


# What an execution environment keeps of its parent's environment; the rest comes from the function, as on Lambda.
_INHERITED_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SYSTEMROOT")
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # where dataset_forwarder_cli lives, for the bootstrap


class ExecutionEnvironment:
    """One process that imported the function and runs its invocations one after the other (a Lambda container).

    The process runs `bootstrap.py` with the function's environment only; requests and answers are JSON lines on
    a pipe pair, the handler's stdout/stderr go where this process's go.
    """

    def __init__(self, function: FunctionConfig, init_timeout_s: float = 30.0, python: str | None = None) -> None:
        self.function = function
        self.init_timeout_s = init_timeout_s
        self.init_duration_s: float | None = None
        self._ready = False
        request_read, request_write = os.pipe()
        answer_read, answer_write = os.pipe()
        env = {key: os.environ[key] for key in _INHERITED_VARIABLES if key in os.environ}
        env |= function.runtime_environment()
        env |= {"PYTHONPATH": str(_PACKAGE_ROOT), "PYTHONUNBUFFERED": "1", "ADF_LOCAL_FUNCTION_ARN": function.arn}
        fds = [str(request_read), str(answer_write)]
        try:
            self.process = subprocess.Popen(  # noqa: S603 - an interpreter running our bootstrap module, no shell
                [python or sys.executable, "-m", "dataset_forwarder_cli.local.bootstrap", *fds],
                pass_fds=(request_read, answer_write),
                env=env,
                cwd=str(function.code_dir),
                stdin=subprocess.DEVNULL,
            )
        finally:
            os.close(request_read)
            os.close(answer_write)
        self._requests = os.fdopen(request_write, "w", encoding="utf-8")
        self._answers = os.fdopen(answer_read, "r", encoding="utf-8")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _read(self, timeout_s: float) -> dict[str, Any] | str:
        """The next answer; "timeout" when none came in time, "exited" when the process closed its end."""
        readable, _, _ = select.select([self._answers], [], [], max(0.0, timeout_s))
        if not readable:
            return "timeout"
        line = self._answers.readline()
        if not line:
            return "exited"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def await_ready(self) -> str | None:
        """None once the handler is loaded, else the init error (as Lambda names it)."""
        if self._ready:
            return None
        answer = self._read(self.init_timeout_s)
        if isinstance(answer, str):
            self.kill()
            if answer == "timeout":
                return f"Runtime.InitError: not ready within {self.init_timeout_s:g} s"
            return f"Runtime.ExitError: exited during init (exit code {self.process.returncode})"
        if answer.get("type") != "ready":
            self.kill()
            return str(answer.get("error"))
        self._ready = True
        self.init_duration_s = float(answer["init_s"])
        return None

    def invoke(self, event: dict[str, Any], timeout_s: float) -> InvokeResult:
        cold = not self._ready
        init_error = self.await_ready()
        if init_error:
            return InvokeResult(error=init_error)
        init = self.init_duration_s if cold else None
        started = time.monotonic()
        request = {"event": event, "timeout_s": timeout_s, "request_id": str(uuid.uuid4())}
        try:
            self._requests.write(json.dumps(request, separators=(",", ":")) + "\n")
            self._requests.flush()
            answer = self._read(timeout_s)
        except (OSError, ValueError) as exc:
            self.kill()
            return InvokeResult(error=f"Runtime.ExitError: {exc}", init_duration_s=init)
        duration = time.monotonic() - started
        if isinstance(answer, str):
            self.kill()  # Lambda ends the environment after a timeout: the next invocation starts a fresh one
            if answer == "timeout":
                return InvokeResult(error=f"Task timed out after {timeout_s:.2f} seconds", duration_s=duration)
            error = f"Runtime.ExitError: the environment exited (exit code {self.process.returncode})"
            return InvokeResult(error=error, duration_s=duration, init_duration_s=init)
        if answer.get("type") == "ok":
            return InvokeResult(response=answer.get("response"), duration_s=duration, init_duration_s=init)
        return InvokeResult(error=str(answer.get("error")), duration_s=duration, init_duration_s=init)

    def close(self, timeout_s: float = 5.0) -> None:
        """End the environment: EOF on its request pipe lets it exit on its own."""
        with contextlib.suppress(OSError, ValueError):
            self._requests.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_s)
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for channel in (self._requests, self._answers):
            with contextlib.suppress(OSError, ValueError):
                channel.close()


class ProcessInvoker:
    """Execution environments (processes) created on demand up to `size`, idle ones reused first."""

    def __init__(self, function: FunctionConfig, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self.function = function
        self.size = size
        self._idle: list[ExecutionEnvironment] = []
        self._count = 0
        self._closed = False
        self._condition = threading.Condition()

    def warm(self, count: int = 1) -> None:
        """Start `count` environments now and wait until they loaded the handler (a provisioned start)."""
        for _ in range(min(count, self.size)):
            environment = self._acquire()
            try:
                error = environment.await_ready()
            finally:
                self._release(environment, keep=True)
            if error:
                raise RuntimeError(f"the function cannot start: {error}")

    def _acquire(self) -> ExecutionEnvironment:
        with self._condition:
            while True:
                if self._closed:
                    raise RuntimeError("invoker is closed")
                while self._idle:
                    environment = self._idle.pop()
                    if environment.alive:
                        return environment
                    self._count -= 1
                if self._count < self.size:
                    self._count += 1
                    break
                self._condition.wait()
        try:
            return ExecutionEnvironment(self.function)
        except BaseException:
            with self._condition:
                self._count -= 1
                self._condition.notify()
            raise

    def _release(self, environment: ExecutionEnvironment, *, keep: bool) -> None:
        with self._condition:
            if keep and environment.alive and not self._closed:
                self._idle.append(environment)
            else:
                self._count -= 1
                environment.kill()
            self._condition.notify()

    def invoke(self, event: dict[str, Any]) -> InvokeResult:
        environment = self._acquire()
        try:
            result = environment.invoke(event, self.function.timeout_s)
        except Exception as exc:  # a broken answer on the pipe: end this environment, fail the batch
            self._release(environment, keep=False)
            return InvokeResult(error=f"Runtime.Unknown: {type(exc).__name__}: {exc}")
        # a timed-out or crashed environment is gone; Lambda starts a fresh one for the next invocation
        self._release(environment, keep=environment.alive)
        return result

    @property
    def environments(self) -> int:
        with self._condition:
            return self._count

    def close(self) -> None:
        with self._condition:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._condition.notify_all()
        for environment in idle:
            environment.close()


# --------------------------------------------------------------------------------------------- the poller


@dataclass
class Invocation:
    """One batch handed to the function, and what became of its records."""

    event: dict[str, Any]
    result: InvokeResult
    failed_ids: set[str]  # left on the queue (reported failures, or all of them when the batch failed)
    batch_error: str | None = None  # why the whole batch stays, if it does
    started_at: float = field(default_factory=time.time)

    @property
    def response(self) -> Any:
        return self.result.response

    @property
    def message_ids(self) -> list[str]:
        return [record["messageId"] for record in self.event["Records"]]

    @property
    def deleted_ids(self) -> list[str]:
        return [message_id for message_id in self.message_ids if message_id not in self.failed_ids]


class Poller:
    """Polls one queue and invokes the function with batches, like a Lambda SQS event source mapping.

    `poll_once` runs one receive-invoke-delete cycle in the caller's thread (tests); `start` runs
    `maximum_concurrency` pollers in threads until `stop`.
    """

    def __init__(
        self,
        sqs: Any,
        source: EventSourceConfig,
        invoker: Invoker,
        *,
        on_invocation: Callable[[Invocation], None] | None = None,
        keep_invocations: int | None = 1000,
        poll_slice_s: int = POLL_SLICE_S,
    ) -> None:
        self.sqs = sqs
        self.poll_slice_s = poll_slice_s
        self.source = source
        self.invoker = invoker
        self.on_invocation = on_invocation
        self.invocations: deque[Invocation] = deque(maxlen=keep_invocations)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()

    # -- one cycle

    def _receive(self, count: int, wait_s: int) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = self.sqs.receive_message(
            QueueUrl=self.source.queue_url,
            MaxNumberOfMessages=max(1, min(SQS_MAX_MESSAGES_PER_CALL, count)),
            WaitTimeSeconds=wait_s,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        return messages

    def _long_poll(self, count: int, wait_s: float) -> list[dict[str, Any]]:
        """Receive with long polling for up to `wait_s`, as consecutive polls of at most `poll_slice_s`.

        A record that arrives is returned at once either way; the slices only bound how long `stop` waits.
        """
        deadline = time.monotonic() + wait_s
        while True:
            left = deadline - time.monotonic()  # SQS waits whole seconds: round, or a 1 s wait would ask for 0
            messages = self._receive(count, max(0, min(self.poll_slice_s, round(left))))
            if messages or self._stopping.is_set() or deadline - time.monotonic() < 1:
                return messages

    def receive_batch(self, wait_s: int | None = None) -> list[dict[str, Any]]:
        """One batch as the event source would assemble it: long poll, then fill it for the batching window."""
        batch = self._long_poll(self.source.batch_size, self.source.wait_time_s if wait_s is None else wait_s)
        if not batch:
            return batch
        size = sum(_record_size(m) for m in batch)
        deadline = time.monotonic() + self.source.batching_window_s
        while len(batch) < self.source.batch_size and size < LAMBDA_MAX_PAYLOAD_BYTES:
            left = deadline - time.monotonic()
            if left <= 0 or self._stopping.is_set():
                break
            more = self._receive(self.source.batch_size - len(batch), max(0, min(self.poll_slice_s, int(left))))
            overflow: list[dict[str, Any]] = []
            for message in more:
                record_size = _record_size(message)
                if size + record_size > LAMBDA_MAX_PAYLOAD_BYTES:
                    overflow.append(message)
                else:
                    batch.append(message)
                    size += record_size
            if overflow:
                self.release(overflow)
                break
            if not more:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return batch

    def release(self, messages: Sequence[Mapping[str, Any]]) -> None:
        """Make received but never invoked messages visible again at once."""
        for start in range(0, len(messages), SQS_MAX_MESSAGES_PER_CALL):
            chunk = messages[start : start + SQS_MAX_MESSAGES_PER_CALL]
            with contextlib.suppress(Exception):
                self.sqs.change_message_visibility_batch(
                    QueueUrl=self.source.queue_url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                        for i, m in enumerate(chunk)
                    ],
                )

    def invoke(self, messages: Sequence[Mapping[str, Any]]) -> Invocation:
        """Invoke the function with these messages, then delete the records it acknowledged."""
        event = {"Records": [to_lambda_record(m, self.source.queue_arn, self.source.region) for m in messages]}
        started_at = time.time()
        result = self.invoker.invoke(event)
        ids = [str(m["MessageId"]) for m in messages]
        batch_error: str | None
        if result.error is not None:
            failed, batch_error = set(ids), result.error
        else:
            failed, batch_error = failed_message_ids(
                result.response, ids, report_batch_item_failures=self.source.report_batch_item_failures
            )
        invocation = Invocation(event, result, failed, batch_error, started_at)
        self._delete([m for m in messages if m["MessageId"] not in failed])
        self.invocations.append(invocation)
        self._log(invocation)
        if self.on_invocation is not None:
            try:
                self.on_invocation(invocation)
            except Exception:
                log.exception("on_invocation callback failed")
        return invocation

    def _delete(self, messages: Sequence[Mapping[str, Any]]) -> None:
        for start in range(0, len(messages), SQS_MAX_MESSAGES_PER_CALL):
            chunk = messages[start : start + SQS_MAX_MESSAGES_PER_CALL]
            response = self.sqs.delete_message_batch(
                QueueUrl=self.source.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            for failure in response.get("Failed", []):
                log.warning("could not delete an acknowledged record", extra={"failure": failure})

    def _log(self, invocation: Invocation) -> None:
        records = []
        for record in invocation.event["Records"]:
            attributes = record.get("attributes", {})
            event_id = (record.get("messageAttributes", {}).get("event_id") or {}).get("stringValue")
            records.append(
                {
                    "message_id": record["messageId"],
                    "event_id": event_id,
                    "sent_at_ms": int(attributes.get("SentTimestamp", 0)) or None,
                    "receive_count": int(attributes.get("ApproximateReceiveCount", 0)) or None,
                    "acknowledged": record["messageId"] not in invocation.failed_ids,
                }
            )
        details = {
            "invocation": True,
            "records": records,
            "failed": len(invocation.failed_ids),
            "duration_ms": round(invocation.result.duration_s * 1000, 1),
            "init_duration_ms": (
                round(invocation.result.init_duration_s * 1000, 1)
                if invocation.result.init_duration_s is not None
                else None
            ),
            "started_at": invocation.started_at,
        }
        if invocation.batch_error:
            log.warning(f"invocation failed, the batch stays on the queue: {invocation.batch_error}", extra=details)
        else:
            log.info(
                f"invoked with {len(records)} record(s), {len(invocation.failed_ids)} left on the queue", extra=details
            )

    def poll_once(self, wait_s: int | None = None) -> Invocation | None:
        """Receive one batch (waiting up to `wait_s`, default the long-poll time) and invoke; None if empty."""
        messages = self.receive_batch(wait_s)
        return self.invoke(messages) if messages else None

    # -- continuous

    def start(self) -> Poller:
        if self._threads:
            raise RuntimeError("already started")
        self._stopping.clear()
        for index in range(self.source.maximum_concurrency):
            thread = threading.Thread(target=self._run, name=f"sqs-poller-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                messages = self.receive_batch()
            except Exception as exc:
                if self._stopping.is_set():
                    return
                log.warning(f"receive failed, polling again in {backoff:g} s: {exc}")
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            if not messages:
                continue
            with self._busy_lock:  # checked under the lock `stop` reads `busy` with: no batch slips past a stop
                stopping = self._stopping.is_set()
                if not stopping:
                    self._busy += 1
            if stopping:
                self.release(messages)
                return
            try:
                self.invoke(messages)
            except Exception:
                log.exception("invocation bookkeeping failed; the records reappear after their visibility timeout")
            finally:
                with self._busy_lock:
                    self._busy -= 1

    @property
    def busy(self) -> int:
        """Invocations running now."""
        with self._busy_lock:
            return self._busy

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop polling; let running invocations finish (at most `timeout_s`), then end the execution environments.

        An idle poller ends within `poll_slice_s`; a batch it receives after the stop is made visible again at
        once, never invoked. Once this returns, no poller thread receives anything any more.
        """
        with self._busy_lock:
            self._stopping.set()
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 90.0) + self.poll_slice_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads = [thread for thread in self._threads if thread.is_alive()]
        if self._threads:
            log.warning(f"{len(self._threads)} poller(s) still busy after the stop timeout")
        self.invoker.close()

    # -- for tests and scripts

    def pending(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.source.queue_url,
            AttributeNames=list(PENDING_COUNTS),
        )["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in PENDING_COUNTS)

    def drain(self, timeout_s: float = 20.0) -> list[Invocation]:
        """Invoke in this thread until the queue is empty (retries included); TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout_s
        done: list[Invocation] = []
        while time.monotonic() < deadline:
            invocation = self.poll_once(wait_s=0)
            if invocation is not None:
                done.append(invocation)
                continue
            if self.pending() == 0:
                # The visible and in-flight counts are read one after the other: a record whose visibility ends
                # between the two readings is in neither. By now it is visible, so one more receive settles it.
                invocation = self.poll_once(wait_s=0)
                if invocation is None:
                    return done
                done.append(invocation)
                continue
            invocation = self.poll_once(wait_s=1)  # records wait out their visibility delay
            if invocation is not None:
                done.append(invocation)
        raise TimeoutError(f"queue not drained within {timeout_s}s; {self.pending()} messages left")
