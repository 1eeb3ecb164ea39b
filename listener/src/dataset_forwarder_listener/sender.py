"""Get envelopes from the spool onto the SQS queue within a hard time budget, in two modes.

``Sender`` is synchronous, for Airflow 2's task process (it ends with ``os._exit``, so nothing
may be left to a thread): spool, send, remove on success, keep on failure. ``BackgroundSender``
is for Airflow 3's api-server, where the hook must return at once: it spools and hands the
envelope to a daemon thread through a bounded queue. Either way a send is never retried forever
in the caller's path, and an envelope SQS has not accepted stays on disk for a later flush.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dataset_forwarder_listener.envelope import Envelope, dumps, message_attributes
from dataset_forwarder_listener.spool import Spool

log = logging.getLogger(__name__)

# Refusals that are about the message itself (too large, bad characters): sending it again can
# never succeed. Everything else (throttling, credentials, a missing queue, KMS) may heal.
PERMANENT_ERRORS = frozenset({"InvalidMessageContents", "InvalidParameterValue", "InvalidAttributeValue"})
_REGION_IN_URL = re.compile(r"^https?://(?:sqs[.-])?([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:queue\.)?amazonaws\.com", re.I)


class Outcome(enum.Enum):
    SENT = "sent"
    RETRY = "retry"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True)
class Flushed:
    sent: int
    remaining: int
    failed: bool


def region_from_queue_url(queue_url: str) -> str | None:
    """The AWS region named in a queue URL (``https://sqs.eu-west-1.amazonaws.com/…``), if any."""
    match = _REGION_IN_URL.match(queue_url)
    return match.group(1).lower() if match else None


def default_client_factory(queue_url: str) -> Callable[[], Any]:
    """A factory for the SQS client: short timeouts, two attempts, standard AWS configuration."""

    def create() -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()
        region = session.region_name or region_from_queue_url(queue_url) or "us-east-1"
        config = Config(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "max_attempts": 2})
        return session.client("sqs", region_name=region, config=config)

    return create


class SqsTransport:
    """Sends one envelope to the queue; bounded by a timeout whatever the network or credentials do."""

    def __init__(self, queue_url: str, client_factory: Callable[[], Any] | None = None) -> None:
        self.queue_url = queue_url
        self._factory = client_factory or default_client_factory(queue_url)
        self._client: Any = None
        self._lock = threading.Lock()

    def send(self, envelope: Envelope, timeout_s: float) -> Result:
        """Send ``envelope``; never raises, returns within ``timeout_s`` (the call may finish later)."""
        if timeout_s <= 0:
            return Result(Outcome.RETRY, "no time left in the budget")
        box: list[Result] = []
        done = threading.Event()

        def call() -> None:
            try:
                box.append(self._send_now(envelope))
            except Exception as exc:
                box.append(_classify(exc))
            finally:
                done.set()

        # botocore's timeouts do not cover DNS or fetching credentials, so the budget is enforced
        # here; a daemon thread never delays the interpreter's exit.
        threading.Thread(target=call, name="dataset-forwarder-send", daemon=True).start()
        if not done.wait(timeout_s):
            return Result(Outcome.RETRY, f"no answer from SQS within {timeout_s:.1f}s")
        return box[0]

    def _send_now(self, envelope: Envelope) -> Result:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            client = self._client
        client.send_message(
            QueueUrl=self.queue_url,
            MessageBody=dumps(envelope),
            MessageAttributes=message_attributes(envelope),
        )
        return Result(Outcome.SENT)


def _classify(exc: Exception) -> Result:
    error = getattr(exc, "response", None)
    code = str(((error or {}).get("Error") or {}).get("Code") or "")
    detail = f"{type(exc).__name__}: {exc}"
    if code.rsplit(".", 1)[-1] in PERMANENT_ERRORS:
        return Result(Outcome.REJECTED, detail)
    return Result(Outcome.RETRY, detail)


class Sender:
    """Synchronous mode: every envelope is spooled first, then sent within the budget."""

    def __init__(self, transport: SqsTransport, spool: Spool, budget_s: float) -> None:
        self.transport = transport
        self.spool = spool
        self.budget_s = budget_s

    def send(self, envelope: Envelope, deadline: float | None = None) -> bool:
        """Spool and send one envelope; True when SQS accepted it. Never raises."""
        return self.deliver(envelope, self.spool.write(envelope), deadline) is Outcome.SENT

    def send_all(self, envelopes: Iterable[Envelope], flush_limit: int = 10) -> int:
        """Spool all, send them in order within one budget, then catch up on older ones; how many were sent.

        After the first failure the rest are only spooled: a queue that just failed would spend
        the budget again for nothing.
        """
        deadline = time.monotonic() + self.budget_s
        spooled = [(envelope, self.spool.write(envelope)) for envelope in envelopes]
        sent = waiting = 0
        healthy = True
        for envelope, path in spooled:
            if not healthy and path is not None:
                waiting += 1
                continue
            outcome = self.deliver(envelope, path, deadline)
            healthy = healthy and outcome is not Outcome.RETRY
            sent += outcome is Outcome.SENT
        if waiting:
            log.warning("%d more dataset events stay spooled in %s for a later send.", waiting, self.spool.directory)
        if healthy and sent:
            sent += self.flush(limit=flush_limit, deadline=deadline).sent
        return sent

    def deliver(self, envelope: Envelope, path: Path | None, deadline: float | None = None) -> Outcome:
        """Send an envelope already spooled at ``path`` (None: could not be spooled) and settle its file."""
        claimed = None
        if path is not None:
            claimed = self.spool.claim(path)
            if claimed is None:
                return Outcome.SENT  # another process took it, or a flush already sent it
        result = self.transport.send(envelope, self._timeout(deadline))
        if result.outcome is Outcome.SENT:
            if claimed is not None:
                self.spool.remove(claimed)
        elif result.outcome is Outcome.REJECTED:
            if claimed is not None:
                self.spool.reject(claimed, result.detail)
            else:
                log.error("SQS refused event %s for %s for good: %s", envelope["id"], envelope["uri"], result.detail)
        elif claimed is not None:
            self.spool.release(claimed)
            log.warning(
                "Could not send event %s for %s to SQS (%s); it stays spooled in %s and is sent later.",
                envelope["id"],
                envelope["uri"],
                result.detail,
                self.spool.directory,
            )
        else:
            log.error(
                "Could not send event %s for %s to SQS (%s) and it could not be spooled: it is LOST.",
                envelope["id"],
                envelope["uri"],
                result.detail,
            )
        return result.outcome

    def flush(self, limit: int | None = None, deadline: float | None = None) -> Flushed:
        """Send spooled envelopes oldest first, deleting each once SQS has it; stop at the first failure."""
        paths = self.spool.pending()
        todo = paths if limit is None else paths[:limit]
        sent = settled = 0
        failed = False
        for path in todo:
            if deadline is not None and time.monotonic() >= deadline:
                break
            claimed = self.spool.claim(path)
            envelope = self.spool.read(claimed) if claimed is not None else None
            if claimed is None or envelope is None:
                settled += 1
                continue
            result = self.transport.send(envelope, self._timeout(deadline))
            if result.outcome is Outcome.RETRY:
                self.spool.release(claimed)
                log.warning("Flushing the spool stopped: %s", result.detail)
                failed = True
                break
            settled += 1
            if result.outcome is Outcome.SENT:
                self.spool.remove(claimed)
                sent += 1
            else:
                self.spool.reject(claimed, result.detail)
        if sent:
            log.info("Sent %d spooled dataset events to SQS.", sent)
        return Flushed(sent=sent, remaining=len(paths) - settled, failed=failed)

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.budget_s
        return min(self.budget_s, deadline - time.monotonic())


@dataclass(frozen=True)
class _Item:
    envelope: Envelope
    path: Path | None


_STOP = object()


class BackgroundSender:
    """Background mode: ``submit`` costs a spool write and a queue put; a daemon thread does the sending.

    The thread sends each queued envelope, and catches up on older spooled files when it starts
    and after a success. After a failure it backs off (doubling, capped) and leaves new envelopes
    in the spool meanwhile, so a dead queue costs one bounded attempt per back-off period.
    """

    def __init__(
        self,
        sender: Sender,
        *,
        queue_size: int = 1000,
        close_timeout_s: float = 2.0,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        flush_batch: int = 100,
    ) -> None:
        self.sender = sender
        self.close_timeout_s = close_timeout_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.flush_batch = flush_batch
        self._queue_size = queue_size
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._stopping = threading.Event()
        self._stop_deadline = 0.0
        self._overflow = False
        # Owned by the thread:
        self._backlog = True  # files left by an earlier process may be waiting
        self._retry_at = 0.0
        self._backoff = min_backoff_s

    def submit(self, envelope: Envelope) -> None:
        """Spool ``envelope`` and queue it for the thread; never blocks."""
        path = self.sender.spool.write(envelope)
        self._ensure_started()
        try:
            self._queue.put_nowait(_Item(envelope, path))
        except queue.Full:
            self._overflow = True  # the thread picks it up from the spool
            if path is None:
                log.error(
                    "Dataset forwarder queue and spool are both full: event %s for %s is LOST.",
                    envelope["id"],
                    envelope["uri"],
                )

    def close(self, timeout_s: float | None = None) -> None:
        """Send what is queued for at most ``timeout_s`` seconds, then stop; the rest stays spooled."""
        thread = self._thread
        if thread is None or not thread.is_alive() or self._pid != os.getpid():
            return
        timeout = self.close_timeout_s if timeout_s is None else timeout_s
        self._stop_deadline = time.monotonic() + timeout
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # when full, the thread sees _stopping after its current item
            self._queue.put(_STOP, timeout=timeout)
        thread.join(max(0.0, self._stop_deadline - time.monotonic()))

    def _ensure_started(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid and self._pid != os.getpid():
                # A forked child (e.g. an api-server worker) inherits no thread and a queue whose lock
                # may be held: start afresh. Files queued in the parent are still in the spool.
                self._queue = queue.Queue(self._queue_size)
                self._stopping = threading.Event()
            else:
                atexit.register(self.close)
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="dataset-forwarder", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                item = self._next()
                if item is _STOP:
                    return
                if isinstance(item, _Item):
                    self._deliver(item)
                if self._overflow:
                    self._backlog, self._overflow = True, False
                if self._backlog and not self._stopping.is_set() and time.monotonic() >= self._retry_at:
                    self._catch_up()
        except Exception:
            log.exception("The dataset forwarder's sender thread stopped; unsent events stay spooled.")

    def _next(self) -> object:
        """The next queued item; None when it is time to catch up; _STOP when closing time is over."""
        now = time.monotonic()
        if self._stopping.is_set():
            if now >= self._stop_deadline:
                return _STOP
            wait: float | None = self._stop_deadline - now
        elif self._backlog:
            wait = max(0.0, self._retry_at - now)
        else:
            wait = None
        try:
            return self._queue.get(timeout=wait)
        except queue.Empty:
            return None

    def _deliver(self, item: _Item) -> None:
        if item.path is not None and time.monotonic() < self._retry_at:
            self._backlog = True  # backing off: it waits in the spool
            return
        deadline = self._stop_deadline if self._stopping.is_set() else None
        if self.sender.deliver(item.envelope, item.path, deadline) is Outcome.RETRY:
            self._backlog = True
            self._back_off()
        else:
            self._backoff = self.min_backoff_s

    def _catch_up(self) -> None:
        flushed = self.sender.flush(limit=self.flush_batch)
        if flushed.failed:
            self._back_off()
        else:
            self._backoff = self.min_backoff_s
            self._backlog = flushed.remaining > 0

    def _back_off(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)
