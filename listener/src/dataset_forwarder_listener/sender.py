"""Get envelopes from the spool onto the SQS queue within a hard time budget, in two modes.

``Sender`` is synchronous, for Airflow 2's task process (it ends with ``os._exit``, so nothing
may be left to a thread): spool, send, remove on success, keep on failure. ``BackgroundSender``
is for Airflow 3's api-server, where the hook must return at once: it spools and hands the
envelope to a daemon thread through a bounded queue. Either way a send is never retried forever
in the caller's path, and an envelope SQS has not accepted stays on disk for a later flush.
The SQS calls themselves are ``sqs_transport``'s.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dataset_forwarder_listener.envelope import EnvelopeBody
from dataset_forwarder_listener.spool import Spool
from dataset_forwarder_listener.sqs_transport import (
    MAX_BATCH,
    Result,
    SendOutcome,
    SqsTransport,
    default_client_factory,
    region_from_queue_url,
    unsendable,
)

# Also the names the rest of the listener (and its tests) import from here.
__all__ = [
    "BATCHING",
    "BackgroundSender",
    "Flushed",
    "Result",
    "SendOutcome",
    "Sender",
    "SqsTransport",
    "default_client_factory",
    "region_from_queue_url",
    "unsendable",
]

log = logging.getLogger(__name__)

# BackgroundSender's strategies; "natural" and "pause" only to be measured against (bench/listener_cost.py)
BATCHING = ("adaptive", "natural", "pause")


@dataclass(frozen=True)
class Flushed:
    sent: int
    remaining: int
    failed: bool


class Sender:
    """Synchronous mode: every envelope is spooled first, then sent within the budget."""

    def __init__(self, transport: SqsTransport, spool: Spool, budget_s: float) -> None:
        self.transport = transport
        self.spool = spool
        self.budget_s = budget_s

    def send(self, envelope: EnvelopeBody, deadline: float | None = None) -> bool:
        """Spool and send one envelope; True when SQS accepted it. Never raises."""
        return self.send_one(envelope, self.spool.write(envelope), deadline) is SendOutcome.SENT

    def send_all(self, envelopes: Iterable[EnvelopeBody], flush_limit: int = 10) -> int:
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
            outcome = self.send_one(envelope, path, deadline)
            healthy = healthy and outcome is not SendOutcome.RETRY
            sent += outcome is SendOutcome.SENT
        if waiting:
            log.warning("%d more dataset events stay spooled in %s for a later send.", waiting, self.spool.directory)
        if healthy and sent:
            sent += self.flush(limit=flush_limit, deadline=deadline).sent
        return sent

    def send_one(self, envelope: EnvelopeBody, path: Path | None, deadline: float | None = None) -> SendOutcome:
        """Send an envelope already spooled at ``path`` (None: could not be spooled) and settle its file."""
        return self.send_batch([(envelope, path)], deadline)[0]

    def send_batch(
        self, items: Sequence[tuple[EnvelopeBody, Path | None]], deadline: float | None = None
    ) -> list[SendOutcome]:
        """``send_one`` for several envelopes in as few calls as SQS allows; one outcome per item.

        Each file is settled by its own entry's answer: removed when SQS accepted that entry,
        parked when it refused it for good, and otherwise left spooled for a later flush.
        """
        if self.spool.refused:  # an unsafe spool directory: this process forwards nothing (the spool said why)
            return [SendOutcome.RETRY] * len(items)
        outcomes = [SendOutcome.SENT] * len(items)  # a file another process took (or a flush sent) counts as sent
        todo: list[tuple[int, EnvelopeBody, Path | None]] = []
        for index, (envelope, path) in enumerate(items):
            claimed = None
            if path is not None:
                claimed = self.spool.claim(path)
                if claimed is None:
                    continue
            todo.append((index, envelope, claimed))
        if not todo:
            return outcomes
        try:
            results = self.transport.send_batch([envelope for _, envelope, _ in todo], self._timeout(deadline))
        except BaseException:
            self._release_all(claimed for _, _, claimed in todo)  # an unexpected error: give the files back
            raise
        for (index, envelope, claimed), result in zip(todo, results):
            self._settle(envelope, claimed, result)
            outcomes[index] = result.outcome
        return outcomes

    def _settle(self, envelope: EnvelopeBody, claimed: Path | None, result: Result) -> None:
        if result.outcome is SendOutcome.SENT:
            if claimed is not None:
                self.spool.remove(claimed)
        elif result.outcome is SendOutcome.REJECTED:
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

    def flush(self, limit: int | None = None, deadline: float | None = None) -> Flushed:
        """Send spooled envelopes oldest first, deleting each once SQS has it; stop at the first failure."""
        paths = self.spool.pending()
        todo = paths if limit is None else paths[:limit]
        sent = settled = 0
        failed = False
        for start in range(0, len(todo), MAX_BATCH):
            if deadline is not None and time.monotonic() >= deadline:
                break
            batch = self._claim(todo[start : start + MAX_BATCH])
            settled += len(todo[start : start + MAX_BATCH]) - len(batch)  # taken by another process, or parked
            if not batch:
                continue
            try:
                results = self.transport.send_batch([envelope for _, envelope in batch], self._timeout(deadline))
            except BaseException:
                self._release_all(claimed for claimed, _ in batch)  # an unexpected error: give the files back
                raise
            for (claimed, _), result in zip(batch, results):
                if result.outcome is SendOutcome.RETRY:
                    self.spool.release(claimed)
                    if not failed:
                        log.warning("Flushing the spool stopped: %s", result.detail)
                    failed = True
                    continue
                settled += 1
                if result.outcome is SendOutcome.SENT:
                    self.spool.remove(claimed)
                    sent += 1
                else:
                    self.spool.reject(claimed, result.detail)
            if failed:
                break
        if sent:
            log.info("Sent %d spooled dataset events to SQS.", sent)
        return Flushed(sent=sent, remaining=len(paths) - settled, failed=failed)

    def _claim(self, paths: Sequence[Path]) -> list[tuple[Path, EnvelopeBody]]:
        """Claim and read ``paths``: the ones this process now holds, with their envelopes."""
        batch: list[tuple[Path, EnvelopeBody]] = []
        for path in paths:
            claimed = self.spool.claim(path)
            envelope = self.spool.read(claimed) if claimed is not None else None
            if claimed is not None and envelope is not None:
                batch.append((claimed, envelope))
        return batch

    def _release_all(self, claims: Iterable[Path | None]) -> None:
        for claimed in claims:
            if claimed is not None:
                self.spool.release(claimed)

    def _timeout(self, deadline: float | None) -> float:
        if deadline is None:
            return self.budget_s
        return min(self.budget_s, deadline - time.monotonic())


@dataclass(frozen=True)
class _Item:
    envelope: EnvelopeBody
    path: Path | None


_STOP = object()


def _add(item: object, items: list[_Item]) -> bool:
    """Add a queued ``item`` to ``items``; True when it is the mark to stop instead."""
    if isinstance(item, _Item):
        items.append(item)
    return item is _STOP


class BackgroundSender:
    """Background mode: ``submit`` costs a spool write and a queue put; a daemon thread does the sending.

    The thread sends queued envelopes in batches, and catches up on older spooled files when it
    starts and after a success. After a failure it backs off (doubling, capped) and leaves new
    envelopes in the spool meanwhile, so a dead queue costs one bounded attempt per back-off period.

    Batching is adaptive (``batching="adaptive"``, the default). An envelope that comes alone (no other
    ``submit`` within ``lone_window_s`` of it) goes at once, as do envelopes submitted while a send was in
    flight once the submits have stopped: a lone event pays one round trip. While submits keep coming
    back to back (a burst), the thread holds them until the burst pauses for ``burst_pause_s`` (at most
    ``max_wait_s``), then sends them in batches of up to MAX_BATCH. The thread shares the GIL with the
    caller (Airflow 3's api-server), and building and signing a request is CPU work that can delay a
    system call the caller makes meanwhile by up to a switch interval (5 ms): in a burst it waits
    until the caller is done instead of competing with it. While it holds, it sleeps, waking only
    every ``burst_pause_s``, not at every submit.

    Two earlier strategies are kept to be measured against (bench/listener_cost.py). ``"natural"``:
    an envelope goes at once when no send is in flight, and envelopes submitted while one is in flight
    go together, up to MAX_BATCH, right after it (a burst is sent while it goes on). ``"pause"``: every
    send waits for a pause of ``pause_s`` in the submits, or until the oldest waiting envelope has
    waited ``max_wait_s`` (a lone event waits ``pause_s``). Whatever the strategy, the envelopes are
    on disk all the while.
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
        batching: str = "adaptive",
        pause_s: float = 0.05,
        max_wait_s: float = 1.0,
        lone_window_s: float = 0.002,
        burst_pause_s: float = 0.05,
    ) -> None:
        if batching not in BATCHING:
            raise ValueError(f"batching must be one of {BATCHING}, not {batching!r}")
        self.sender = sender
        self.batching = batching
        self.pause_s = pause_s
        self.max_wait_s = max_wait_s
        self.lone_window_s = lone_window_s
        self.burst_pause_s = burst_pause_s
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
        self._submitted_at = 0.0
        self._back_to_back = False  # the latest submit followed the one before within lone_window_s
        self._restarts = 0
        # Owned by the thread:
        self._backlog = True  # files left by an earlier process may be waiting
        self._retry_at = 0.0
        self._backoff = min_backoff_s

    def submit(self, envelope: EnvelopeBody, *, unique: bool = True) -> None:
        """Spool ``envelope`` and queue it for the thread; never blocks.

        ``unique``: this envelope was never spooled before (see ``Spool.write``); False when it may have been
        (the DAG-run sweep reports outcomes a hook may have reported already), so one id stays one file.
        """
        path = self.sender.spool.write(envelope, unique=unique)
        if self.sender.spool.refused:
            return  # an unsafe spool directory: nothing is forwarded from this process (the spool said why)
        now = time.monotonic()
        self._back_to_back = now - self._submitted_at < self.lone_window_s  # set first: read after _submitted_at
        self._submitted_at = now
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
        """Start the thread: the first time, in a forked child, and again should it have died."""
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and (thread.is_alive() or self._stopping.is_set()):
            return
        with self._lock:
            thread = self._thread
            if self._pid == os.getpid() and thread is not None:
                if thread.is_alive() or self._stopping.is_set():
                    return
                self._restarts += 1
                log.warning(
                    "The dataset forwarder's sender thread had stopped; started it again (%d time(s) so far).",
                    self._restarts,
                )
                self._backlog = True  # what it was sending went back to the spool, or is released when stale
            elif self._pid and self._pid != os.getpid():
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
        while True:
            item = self._next()
            if item is _STOP:
                return
            items = [item] if isinstance(item, _Item) else []
            try:
                stop = self._round(items)
            except Exception:
                # A bug or a file nobody foresaw must not end the sending for good: what it was sending went
                # back to the spool; try again after a back-off (unsendable files are parked, not retried).
                log.exception("The dataset forwarder's sender hit an unexpected error; unsent events stay spooled.")
                self._backlog = True
                self._back_off()
                stop = False
            if stop:
                return

    def _round(self, items: list[_Item]) -> bool:
        """Send ``items`` (and what joins them), then catch up on the spool if due; True when to stop."""
        if self.batching == "adaptive":
            stop = self._await_burst_end(items)
        elif self.batching == "pause":
            stop = self._await_pause(items)
        else:
            stop = self._drain(items, limit=MAX_BATCH)
        for start in range(0, len(items), MAX_BATCH):
            self._send_items(items[start : start + MAX_BATCH])  # after a failure: spooled ones wait
        if self._overflow:
            self._backlog, self._overflow = True, False
        if self._backlog and time.monotonic() >= self._retry_at:
            self._catch_up()  # also while closing: within the close budget, older files go out too
        return stop

    def _await_burst_end(self, items: list[_Item]) -> bool:
        """Adaptive batching: return at once when ``items`` came alone or the submits have stopped; while
        they come back to back, wait until they pause for ``burst_pause_s`` (at most ``max_wait_s``).
        Adds what is queued to ``items``; True when the thread is to stop after sending them."""
        if not items or self._stopping.is_set():
            return self._drain(items)  # a catch-up round, or closing: nothing to wait for
        started = time.monotonic()
        calm = started - self._submitted_at
        if calm >= self.lone_window_s:
            return self._drain(items)  # it came alone, or during a send and the submits have stopped since
        if not self._back_to_back or self._queue.empty():
            # Just submitted, and alone so far: what is queued came earlier, apart from it (the thread takes an
            # entry up late when it was busy, e.g. catching up). A burst only if another submit follows in the window.
            stop = self._await_follow_up(items, self.lone_window_s - calm)
            if stop is not None:
                return stop
        return self._hold_burst(items, started)  # submits coming back to back: a burst

    def _await_follow_up(self, items: list[_Item], timeout_s: float) -> bool | None:
        """Add what is queued to ``items``, then wait up to ``timeout_s`` for one more submit: None when one came
        (a burst starts), else True when the thread is to stop after sending ``items``."""
        if self._drain(items):
            return True
        try:
            follow_up = self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return False
        return _add(follow_up, items) or None

    def _hold_burst(self, items: list[_Item], started: float) -> bool:
        """Sleep until the submits pause for ``burst_pause_s`` (at most ``max_wait_s`` after ``started``),
        taking what they queued at each wake (so the queue stays short); True when the thread is to stop."""
        while True:
            if self._drain(items):
                return True
            now = time.monotonic()
            calm, waited = now - self._submitted_at, now - started
            if calm >= self.burst_pause_s or waited >= self.max_wait_s or len(items) >= self._queue_size:
                return False
            if self._stopping.wait(min(self.burst_pause_s - calm, self.max_wait_s - waited)):
                return self._drain(items)  # closing: send what is held now

    def _drain(self, items: list[_Item], limit: int | None = None) -> bool:
        """Add what is queued right now to ``items`` (up to ``limit`` in all) without waiting for more;
        True when the thread is to stop after sending them."""
        while limit is None or len(items) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return False
            if _add(item, items):
                return True
        return False

    def _await_pause(self, items: list[_Item]) -> bool:
        """Wait for a pause in the ``submit`` calls (at most ``max_wait_s``), adding what is queued
        meanwhile to ``items``; True when the thread is to stop after sending them."""
        started = time.monotonic()
        while len(items) < self._queue_size:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                now = time.monotonic()
                calm, waited = now - self._submitted_at, now - started
                if self._stopping.is_set() or calm >= self.pause_s or waited >= self.max_wait_s:
                    return False
                try:
                    item = self._queue.get(timeout=min(self.pause_s - calm, self.max_wait_s - waited))
                except queue.Empty:
                    continue
            if _add(item, items):
                return True
        return False

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

    def _send_items(self, items: list[_Item]) -> None:
        """Send one batch, unless backing off (then only what could not be spooled is tried)."""
        if time.monotonic() < self._retry_at:
            if any(item.path is not None for item in items):
                self._backlog = True  # spooled: it waits for the catch-up after the back-off
            items = [item for item in items if item.path is None]
            if not items:
                return
        deadline = self._stop_deadline if self._stopping.is_set() else None
        outcomes = self.sender.send_batch([(item.envelope, item.path) for item in items], deadline)
        if SendOutcome.RETRY in outcomes:
            self._backlog = True
            self._back_off()
        else:
            self._backoff = self.min_backoff_s

    def _catch_up(self) -> None:
        deadline = self._stop_deadline if self._stopping.is_set() else None
        flushed = self.sender.flush(limit=self.flush_batch, deadline=deadline)
        if flushed.failed:
            self._back_off()
        else:
            self._backoff = self.min_backoff_s
            self._backlog = flushed.remaining > 0

    def _back_off(self) -> None:
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, self.max_backoff_s)
