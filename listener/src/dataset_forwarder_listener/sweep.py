"""Airflow 2.9 to 2.11: the finished-run sweep, for outcomes no listener hook reports.

Airflow 2 calls no DAG-run hook when a run's state is set through the REST API or the UI ("mark
success/failed"). The scheduler therefore looks in the database every few seconds, in a daemon
thread with its own short session, for runs of the selected DAGs that are ``success`` or ``failed``
and were updated since the last look, and reports each as the hook would (``outcome_of`` and
``build_run``: the same envelope, so the same id). What the hook of this process reported already
(a bounded set of recent ids) is not submitted again; anything else reaching the forwarder twice
has one id and is delivered once.

Why ``updated_at`` and not ``end_date``: Airflow 2 stamps ``end_date`` only when a run goes from
unfinished to finished, so a finished run marked the other way keeps its old end; ``updated_at``
changes with every write of the row. The watermark is the newest ``updated_at`` seen, kept in the
spool directory (a private file, same safety rules as the spool's), so a restarted scheduler picks
up what changed while it was down; the first start begins now (no history is replayed). Each look
goes back ``overlap_s`` before the watermark, for a transaction that stamped its row earlier than
it committed; the recent ids keep that from sending twice. Each look reads at most ``batch`` rows;
a full batch is followed by the next page (keyset on ``updated_at``, ``id``) after ``catch_up_s``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Protocol

from dataset_forwarder_listener.config import Config
from dataset_forwarder_listener.dag_runs import outcome_of
from dataset_forwarder_listener.envelope import build_run, selected, utc
from dataset_forwarder_listener.sender import BackgroundSender
from dataset_forwarder_listener.spool import Spool

log = logging.getLogger(__name__)

FINISHED = ("success", "failed")
STATE_FILE = "dag_run_sweep.state"
BATCH = 500
OVERLAP_S = 60.0
CATCH_UP_S = 1.0
RECENT_IDS = 10_000
SCHEDULER_JOB = "SchedulerJob"
WAIT_FOR_JOB_TYPE_S = 60.0
FAILURE_LOG_EVERY_S = 300.0

Key = tuple[datetime, int]
"""Where a page of rows ends: (``updated_at``, ``id``) of its last row."""


class FinishedRuns(Protocol):
    """Reads finished runs from Airflow's database (``sweep_af2.SqlFinishedRuns``; a list in the tests)."""

    def batch(self, after: datetime | None, cursor: Key | None, limit: int) -> AbstractContextManager[Sequence[Any]]:
        """Within: at most ``limit`` runs in state success/failed, ordered by (``updated_at``, ``id``), updated
        after ``after`` or, with a ``cursor``, after that key; still bound to their session (lazy reads work)."""
        ...


class RecentIds:
    """The ids this process reported lately (hook or sweep), at most ``capacity``, oldest forgotten first."""

    def __init__(self, capacity: int = RECENT_IDS) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, envelope_id: str) -> bool:
        """Remember ``envelope_id``; True when it was not known."""
        with self._lock:
            if envelope_id in self._ids:
                self._ids.move_to_end(envelope_id)
                return False
            self._ids[envelope_id] = None
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
            return True

    def __contains__(self, envelope_id: object) -> bool:
        with self._lock:
            return envelope_id in self._ids

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)


class Watermark:
    """The newest ``updated_at`` the sweep has seen, in a private file of the spool directory."""

    def __init__(self, spool: Spool, name: str = STATE_FILE) -> None:
        self.spool = spool
        self.name = name

    def load(self) -> datetime | None:
        """The stored moment; None when there is none or it cannot be read (logged)."""
        data = self.spool.read_private(self.name)
        if data is None:
            return None
        try:
            stored = json.loads(data.decode("utf-8"))
            return utc(datetime.fromisoformat(stored["updated_at"]))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning("Ignoring the DAG-run sweep's watermark %s (%s): starting from now.", self.name, exc)
            return None

    def save(self, moment: datetime) -> bool:
        data = json.dumps({"version": 1, "updated_at": utc(moment).isoformat()}).encode("utf-8")
        return self.spool.write_private(self.name, data)


def like_patterns(globs: Sequence[str]) -> list[tuple[str, str]] | None:
    """The DAG-id globs as SQL conditions: ``("=", id)`` or ``("like", pattern)`` (escape character ``\\``);
    None when one cannot be said in SQL (a ``[...]`` class): then every DAG is read and the globs filter.

    SQL can match more than ``fnmatchcase`` (SQLite's LIKE ignores case): the rows are filtered again."""
    conditions: list[tuple[str, str]] = []
    for glob in globs:
        if "[" in glob:
            return None
        if "*" not in glob and "?" not in glob:
            conditions.append(("=", glob))
            continue
        escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        conditions.append(("like", escaped.replace("*", "%").replace("?", "_")))
    return conditions


@dataclass(frozen=True)
class Swept:
    read: int
    submitted: int
    full: bool


class DagRunSweep:
    """Finds finished runs no hook reported and submits their envelopes to the background sender."""

    def __init__(
        self,
        config: Config,
        airflow_version: str,
        sender: BackgroundSender,
        runs: FinishedRuns,
        *,
        recent: RecentIds,
        watermark: Watermark,
        interval_s: float,
        batch: int = BATCH,
        overlap_s: float = OVERLAP_S,
        catch_up_s: float = CATCH_UP_S,
        now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
    ) -> None:
        self.config = config
        self.airflow_version = airflow_version
        self.sender = sender
        self.runs = runs
        self.recent = recent
        self.watermark = watermark
        self.interval_s = interval_s
        self.batch = batch
        self.overlap_s = overlap_s
        self.catch_up_s = catch_up_s
        self._now = now
        self._mark: datetime | None = None
        self._floor: datetime | None = None
        self._resume: Key | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._failure_logged_at = 0.0

    # -- one look

    def sweep(self) -> Swept:
        """Read one page of finished runs and submit the outcomes not reported yet. Raises on a database error
        (the thread logs it); the watermark moves only past rows that were read."""
        mark = self._mark if self._mark is not None else self._load()
        after: datetime | None = None
        if self._resume is None:
            after = mark - timedelta(seconds=self.overlap_s)
            if self._floor is not None and after < self._floor:
                after = self._floor
        submitted = read = 0
        last: Key | None = None
        with self.runs.batch(after, self._resume, self.batch) as rows:
            for row in rows:
                read += 1
                submitted += self._report(row)
                last = (utc(row.updated_at), int(row.id))
        full = read >= self.batch
        self._resume = last if full else None
        if last is not None and last[0] > mark:
            self._mark = last[0]
            self.watermark.save(last[0])
        return Swept(read=read, submitted=submitted, full=full)

    def _load(self) -> datetime:
        stored = self.watermark.load()
        if stored is None:  # the first start: from now on, no history
            stored = self._floor = utc(self._now())
            self.watermark.save(stored)
        self._mark = stored
        return stored

    def _report(self, dag_run: Any) -> bool:
        """Submit the outcome of ``dag_run`` unless it is not selected, looped, or reported already; True when
        submitted. A run that cannot be read is logged and skipped, never stops the others."""
        try:
            if not selected(dag_run.dag_id, self.config.dag_runs):
                return False
            state = str(getattr(dag_run.state, "value", dag_run.state))
            if state not in FINISHED:
                return False
            envelope = build_run(
                outcome_of(dag_run, state), deployment=self.config.deployment, airflow_version=self.airflow_version
            )
            if envelope is None or not self.recent.add(envelope["id"]):
                return False
            self.sender.submit(envelope, unique=False)
            log.info(
                "Dataset forwarder: run %s of %s is %s and no hook of this process reported it (a state set "
                "through the REST API or the UI, another scheduler's outcome, or one from before a restart): "
                "forwarded by the sweep.",
                dag_run.run_id,
                dag_run.dag_id,
                state,
            )
            return True
        except Exception:
            log.warning(
                "Dataset forwarder: the sweep could not report the run with row id %s; it goes on with the others.",
                _row_id(dag_run),
                exc_info=True,
            )
            return False

    # -- the thread

    def start(self, is_scheduler: Callable[[], bool | None]) -> None:
        """Start the thread (once per process); it sweeps only once ``is_scheduler()`` says True (None: not
        known yet, asked again), and ends at once when it says False."""
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._pid == os.getpid():
                return
            if self._pid == 0:
                atexit.register(self.stop)
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(is_scheduler,), name="dataset-forwarder-dag-run-sweep", daemon=True
            )
            self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the thread (a look in progress finishes its page first, within ``timeout_s``)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and self._pid == os.getpid():
            thread.join(timeout_s)

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _run(self, is_scheduler: Callable[[], bool | None]) -> None:
        if not self._await_scheduler(is_scheduler):
            return
        log.info(
            "Dataset forwarder: this scheduler looks every %g s for finished runs of %s whose outcome no listener "
            "hook reported (Airflow 2 calls none for a state set through the REST API or the UI).",
            self.interval_s,
            ", ".join(self.config.dag_runs),
        )
        delay = self.interval_s
        while not self._stop.wait(delay):
            delay = self.interval_s
            try:
                swept = self.sweep()
            except Exception:
                self._failed()
                continue
            self._recovered()
            if swept.full:
                delay = min(self.catch_up_s, self.interval_s)

    def _await_scheduler(self, is_scheduler: Callable[[], bool | None]) -> bool:
        deadline = time.monotonic() + WAIT_FOR_JOB_TYPE_S
        while True:
            try:
                answer = is_scheduler()
            except Exception:
                log.debug("Dataset forwarder: cannot tell whether this process is the scheduler.", exc_info=True)
                return False
            if answer is not None:
                return answer
            if time.monotonic() >= deadline or self._stop.wait(0.1):
                return False

    def _failed(self) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failure_logged_at < FAILURE_LOG_EVERY_S:
            return
        self._failure_logged_at = now
        log.warning(
            "Dataset forwarder: the DAG-run sweep failed (tried again every %g s; said again at most every %g s). "
            "The scheduler is not affected; outcomes set through the REST API or UI wait until it works again.",
            self.interval_s,
            FAILURE_LOG_EVERY_S,
            exc_info=True,
        )

    def _recovered(self) -> None:
        if self._failing_since is not None:
            log.info(
                "Dataset forwarder: the DAG-run sweep works again after %.0f s.", time.monotonic() - self._failing_since
            )
            self._failing_since = None


def _row_id(dag_run: Any) -> str:
    try:
        return str(dag_run.id)
    except Exception:
        return "?"
