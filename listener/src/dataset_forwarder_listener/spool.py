"""Write-ahead spool: every envelope is on local disk before it is sent, and stays there until SQS accepts it.

Layout under the spool directory::

    <emitted-ns>-<id>.json           waiting to be sent (oldest first by name)
    inflight/<emitted-ns>-<id>.json  claimed by a process that is sending it right now
    rejected/<emitted-ns>-<id>.json  refused by SQS for good (kept for a person to look at)

Files appear atomically (temporary file + ``os.replace``) and move between states with
``os.rename``, so several Airflow processes can share one spool without sending a file twice:
whoever renames it into ``inflight/`` first sends it. The claimer locks the file (``flock``)
before the rename and holds the lock until the file leaves ``inflight/``; the kernel drops the
lock when the process dies, so a claim left by a killed process is released at the next look
(a restarted process sends it at once). A claim whose lock cannot be checked, or whose live
sender is stuck, is released after ``stale_after_s``. No method raises: a spool problem is
logged and reported through the return value.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from dataset_forwarder_listener.envelope import Envelope, epoch_ns

try:
    import fcntl
except ImportError:  # not POSIX: a dead process's claim is recognised by its age only
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SUFFIX = ".json"
INFLIGHT = "inflight"
REJECTED = "rejected"
TMP_PREFIX = ".tmp-"
LOUD_EVERY_S = 60.0
RECOUNT_EVERY_S = 5.0


class Spool:
    def __init__(
        self,
        directory: Path,
        max_files: int,
        *,
        stale_after_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = Path(directory)
        self.max_files = max_files
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._loud_at: float | None = None
        self._not_written = 0
        self._estimate = 0
        self._counted_at: float | None = None
        self._made = False

    @property
    def inflight_dir(self) -> Path:
        return self.directory / INFLIGHT

    @property
    def rejected_dir(self) -> Path:
        return self.directory / REJECTED

    def write(self, envelope: Envelope, *, unique: bool = False) -> Path | None:
        """Persist ``envelope``; its path, or None when it could not be written (full or failing disk).

        ``unique``: the caller knows this id was never spooled before (its key is new to this call),
        so the look for an earlier copy is skipped. On Airflow 3 this runs in the api-server's request
        path, where every system call lets the sender thread take the GIL and may cost the caller a
        whole switch interval to get it back: the common path makes four (open, write, close, rename).
        """
        name = f"{epoch_ns(envelope.get('emitted_at')):020d}-{envelope['id']}{SUFFIX}"
        path = self.directory / name
        try:
            if not unique and (path.exists() or (self.inflight_dir / name).exists()):
                return path  # the same event is already spooled: one file per id
            if not self._made:
                self._make_directories()
            held = self._held()
            if held >= self.max_files:
                self._loudly(
                    "Dataset forwarder spool %s is full (%d files, DATASET_FORWARDER_SPOOL_MAX=%d): event %s "
                    "for %s was NOT written and is lost unless the send that follows succeeds; nothing already "
                    "spooled was dropped. Check that SQS is reachable.",
                    self.directory,
                    held,
                    self.max_files,
                    envelope["id"],
                    envelope.get("uri"),
                )
                return None
            tmp = os.path.join(self.directory, f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{name}")
            data = json.dumps(envelope, separators=(",", ":")).encode("utf-8")
            try:
                _write_file(tmp, data)
            except FileNotFoundError:  # the spool directory was removed under a running process
                self._make_directories()
                _write_file(tmp, data)
            os.replace(tmp, path)
            self._estimate += 1
            return path
        except OSError as exc:
            self._loudly(
                "Dataset forwarder cannot write to its spool %s (%s): event %s for %s was NOT spooled.",
                self.directory,
                exc,
                envelope.get("id"),
                envelope.get("uri"),
            )
            return None

    def _make_directories(self) -> None:
        """Create the spool (with ``inflight/``); once per process, again only if it disappears."""
        self.inflight_dir.mkdir(parents=True, exist_ok=True)
        self._made = True

    def pending(self) -> list[Path]:
        """Spooled files waiting to be sent, oldest first (claims of dead processes are released first)."""
        if not self.directory.is_dir():
            return []
        try:
            self._release_stale_claims()
            return sorted(p for p in self.directory.glob(f"*{SUFFIX}") if _is_spooled(p.name))
        except OSError as exc:
            log.warning("Cannot list the dataset forwarder spool %s: %s", self.directory, exc)
            return []

    def count(self) -> int:
        """Files held (waiting or being sent); the bound DATASET_FORWARDER_SPOOL_MAX applies to this.

        Counted by name, over three listings (sending, waiting, sending again): a file claimed (moved to
        ``inflight/``) or released (moved back) while the directories are listed is seen at least once,
        and a file seen twice is counted once.
        """
        try:
            sending = _spooled_names(self.inflight_dir)
            waiting = _spooled_names(self.directory)
            sending |= _spooled_names(self.inflight_dir)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("Cannot count the dataset forwarder spool %s: %s", self.directory, exc)
            return 0
        return len(waiting | sending)

    def _held(self) -> int:
        """``count()`` without listing a large directory on every write.

        Listing 10,000 files takes milliseconds, too long for Airflow 3's request path. The estimate
        counts this process's writes since the last listing; the directory is listed again every few
        seconds and always before an event is refused, so other processes' writes can overshoot the
        bound only by what they wrote in those few seconds.
        """
        now = self._clock()
        stale = self._counted_at is None or now - self._counted_at >= RECOUNT_EVERY_S
        if stale or self._estimate >= self.max_files:
            self._estimate, self._counted_at = self.count(), now
        return self._estimate

    def claim(self, path: Path) -> Path | None:
        """Take ``path`` for sending; the claimed path, or None when another process already has it."""
        claimed = self.inflight_dir / path.name
        try:
            lock = _lock(path)  # before the rename, so no one ever sees a live claim unlocked
        except OSError:  # gone, or being claimed by another process right now
            return None
        try:
            try:
                os.rename(path, claimed)
            except FileNotFoundError:  # gone, or inflight/ removed under a running process: one more try
                self._make_directories()
                os.rename(path, claimed)
            os.utime(claimed)  # the claim's age starts now, whatever the event's age
        except OSError as exc:
            _unlock(lock)
            if not isinstance(exc, FileNotFoundError):
                log.warning("Cannot claim spooled event %s: %s", path, exc)
            return None
        if lock is not None:
            _CLAIM_LOCKS[str(claimed)] = lock
        return claimed

    def release(self, claimed: Path) -> None:
        """Give a claimed file back to the waiting list (the send failed; a later flush retries it)."""
        self._move(claimed, self.directory / claimed.name)
        _unlock(_CLAIM_LOCKS.pop(str(claimed), None))

    def remove(self, path: Path) -> None:
        """Forget a file whose envelope SQS accepted."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("Cannot remove sent event %s from the spool (it may be sent again): %s", path, exc)
        _unlock(_CLAIM_LOCKS.pop(str(path), None))

    def reject(self, path: Path, reason: str) -> None:
        """Park a file SQS refused for good, so it no longer blocks the others."""
        log.error(
            "SQS refused spooled event %s for good (%s); it was moved to %s and will not be retried.",
            path.name,
            reason,
            self.rejected_dir,
        )
        try:
            self.rejected_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning("Cannot create %s: %s", self.rejected_dir, exc)
        self._move(path, self.rejected_dir / path.name)
        _unlock(_CLAIM_LOCKS.pop(str(path), None))

    def read(self, path: Path) -> Envelope | None:
        """The envelope stored in ``path``; None (and the file parked as rejected) when unreadable."""
        try:
            envelope = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            _unlock(_CLAIM_LOCKS.pop(str(path), None))  # a claim taken away meanwhile
            return None
        except (OSError, ValueError) as exc:
            self.reject(path, f"unreadable: {exc}")
            return None
        if not isinstance(envelope, dict) or not envelope.get("id") or not envelope.get("uri"):
            self.reject(path, "not an envelope")
            return None
        return envelope

    def _release_stale_claims(self) -> None:
        if not self.inflight_dir.is_dir():
            return
        now = time.time()
        for entry in os.scandir(self.inflight_dir):
            if not _is_spooled(entry.name):
                continue
            claim = Path(entry.path)
            try:
                lock = _lock(claim)
            except FileNotFoundError:
                continue  # sent or released meanwhile
            except BlockingIOError:
                lock = None  # locked: its sender is alive
            if lock is not None:
                log.warning("Releasing spooled event %s: the process that was sending it is gone.", entry.name)
                self._move(claim, self.directory / entry.name)
                _unlock(lock)
                continue
            try:
                age = now - entry.stat().st_mtime
            except FileNotFoundError:
                continue
            if age > self.stale_after_s:
                log.warning("Releasing spooled event %s: its sender stopped %.0fs ago.", entry.name, age)
                self._move(claim, self.directory / entry.name)
        for entry in os.scandir(self.directory):
            if entry.name.startswith(TMP_PREFIX):
                try:
                    if now - entry.stat().st_mtime > self.stale_after_s:
                        os.unlink(entry.path)  # a write cut short by a crash; the event was never spooled
                except FileNotFoundError:
                    continue

    def _move(self, source: Path, target: Path) -> None:
        try:
            os.rename(source, target)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("Cannot move %s to %s: %s", source, target, exc)

    def _loudly(self, message: str, *args: object) -> None:
        """Log an ERROR at most once a minute, counting what happened in between."""
        with self._lock:
            self._not_written += 1
            now = self._clock()
            if self._loud_at is not None and now - self._loud_at < LOUD_EVERY_S:
                return
            skipped, self._not_written = self._not_written - 1, 0
            self._loud_at = now
        if skipped:
            message += " (%d more events were not spooled since the last message.)"
            args = (*args, skipped)
        log.error(message, *args)


def _write_file(path: str, data: bytes) -> None:
    """Write ``data`` to a new file at ``path`` with as few system calls as a file allows (no buffering layer)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _spooled_names(directory: Path) -> set[str]:
    return {e.name for e in os.scandir(directory) if _is_spooled(e.name)}


def _is_spooled(name: str) -> bool:
    return name.endswith(SUFFIX) and not name.startswith(".")


# This process's claims: claimed path -> the descriptor holding the file's lock.
_CLAIM_LOCKS: dict[str, int] = {}


def _lock(path: Path) -> int | None:
    """A descriptor of ``path`` holding its exclusive lock; None where this filesystem cannot lock.

    Raises FileNotFoundError when ``path`` is gone and BlockingIOError when another process (or
    another descriptor in this one) holds the lock.
    """
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDWR)  # writable: NFS emulates flock with write locks
    except FileNotFoundError:
        raise
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _forget_claims_in_child() -> None:
    """A forked child must not keep its parent's claims locked: closing its copies leaves the parent's locks."""
    for fd in list(_CLAIM_LOCKS.values()):
        _unlock(fd)
    _CLAIM_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_claims_in_child)
