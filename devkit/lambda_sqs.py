"""What Lambda's SQS event source does, for tests: the product's local poller with the handler in this process.

`dataset_forwarder_cli.local.poller.Poller` (the event source behind `dataset-forwarder local up`) receives a batch,
calls the handler and deletes only the acknowledged records; records reported in `batchItemFailures` (or the whole
batch, when the handler raises) stay on the queue, so SQS's visibility timeout (as changed by the handler) and
redrive policy decide what happens next. Here the handler runs in the test's own process (`InProcessInvoker`), so
tests can capture its logs and change its environment, and each `poll` is one synchronous invocation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dataset_forwarder_cli.local.poller import (
    EventSourceConfig,
    InProcessInvoker,
    Invocation,
    LambdaContext,
    Poller,
    to_lambda_record,
)

__all__ = ["FakeLambdaContext", "Handler", "Invocation", "LambdaSqsDriver", "to_lambda_record"]

Handler = Callable[[dict[str, Any], Any], Any]
FakeLambdaContext = LambdaContext  # the context a Lambda handler gets; remaining time counts down from timeout_s


class LambdaSqsDriver:
    """One synchronous event-source cycle per `poll`; `drain` until the queue is empty."""

    def __init__(
        self, sqs: Any, queue_url: str, handler: Handler, *, batch_size: int = 10, timeout_s: float = 60.0
    ) -> None:
        self._invoker = InProcessInvoker(handler, timeout_s=timeout_s)
        source = EventSourceConfig.for_queue(sqs, queue_url, batch_size=batch_size, wait_time_s=0)
        self.poller = Poller(sqs, source, self._invoker, keep_invocations=None)
        self.queue_arn = source.queue_arn

    @property
    def timeout_s(self) -> float:
        """The function timeout the handler's context counts down from (tests change it between polls)."""
        return self._invoker.timeout_s

    @timeout_s.setter
    def timeout_s(self, value: float) -> None:
        self._invoker.timeout_s = value

    @property
    def invocations(self) -> list[Invocation]:
        return list(self.poller.invocations)

    def poll(self, wait_s: int = 0) -> Invocation | None:
        return self.poller.poll_once(wait_s)

    def pending(self) -> int:
        return self.poller.pending()

    def drain(self, timeout_s: float = 20.0) -> list[Invocation]:
        """Invoke until the queue is empty (retries included); fail loudly at the deadline."""
        try:
            return self.poller.drain(timeout_s)
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None
