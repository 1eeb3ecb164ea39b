"""Write-ahead spool: every envelope is on local disk before it is sent, and stays there until SQS accepts it.

Layout under the spool directory::

    <emitted-ns>-<id>.json           waiting to be sent (oldest first by name)
    inflight/<emitted-ns>-<id>.json  claimed by a process that is sending it right now
    rejected/<emitted-ns>-<id>.json  refused by SQS for good, or not sendable (kept for a person to look at;
                                     at most REJECTED_MAX_FILES files / REJECTED_MAX_BYTES, oldest pruned)

Files appear atomically (temporary file + ``os.replace``) and move between states with
``os.rename``, so several Airflow processes can share one spool without sending a file twice:
whoever renames it into ``inflight/`` first sends it. The claimer locks the file (``flock``)
before the rename and holds the lock until the file leaves ``inflight/``; the kernel drops the
lock when the process dies, so a claim left by a killed process is released at the next look
(a restarted process sends it at once). A claim whose lock cannot be checked, or whose live
sender is stuck, is released after ``stale_after_s``. No method raises: a spool problem is
logged and reported through the return value.

The spool holds event payloads, so it is private to the user Airflow runs as: directories are
made 0700 and files 0600 whatever the umask, files are opened with ``O_NOFOLLOW`` (and created
with ``O_EXCL``), and a spool directory that is a symbolic link or belongs to another user is
refused (``refused``): nothing is written to it or read from it, and the sender stays idle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Callable

from dataset_forwarder_listener.envelope import EnvelopeBody, epoch_ns

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
DIR_MODE = 0o700
FILE_MODE = 0o600
# rejected/ is for a person to look at, not an archive: beyond these the oldest rejections are deleted.
REJECTED_MAX_FILES = 1000
REJECTED_MAX_BYTES = 64 * 1024 * 1024
RECHECK_REFUSED_S = 60.0  # a refused spool directory is looked at again this often (it may have been fixed)
_OPEN_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_OPEN_READ = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


class UnsafeSpool(OSError):
    """The spool directory (or one under it) is not this user's own: it is not used at all."""


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
        self._fix_mode = False  # the umask would take FILE_MODE bits away: set the mode explicitly
        self._refused_at: float | None = None
        self.rejected_max_files = REJECTED_MAX_FILES
        self.rejected_max_bytes = REJECTED_MAX_BYTES

    @property
    def refused(self) -> bool:
        """The spool directory is unsafe (a symbolic link, or another user's): this process must not use it."""
        return self._refused_at is not None

    @property
    def inflight_dir(self) -> Path:
        return self.directory / INFLIGHT

    @property
    def rejected_dir(self) -> Path:
        return self.directory / REJECTED

    def write(self, envelope: EnvelopeBody, *, unique: bool = False) -> Path | None:
        """Persist ``envelope``; its path, or None when it could not be written (full or failing disk).

        ``unique``: the caller knows this id was never spooled before (its key is new to this call),
        so the look for an earlier copy is skipped. On Airflow 3 this runs in the api-server's request
        path, where every system call lets the sender thread take the GIL and may cost the caller a
        whole switch interval to get it back: the common path makes four (open, write, close, rename).
        """
        name = f"{epoch_ns(envelope.get('emitted_at')):020d}-{envelope['id']}{SUFFIX}"
        path = self.directory / name
        try:
            if not self._made and not self._ready(create=True):
                return None  # refused: said loudly by _ready
            if not unique and (path.exists() or (self.inflight_dir / name).exists()):
                return path  # the same event is already spooled: one file per id
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
                _write_file(tmp, data, self._fix_mode)
            except FileNotFoundError:  # the spool directory was removed under a running process
                self._made = False
                if not self._ready(create=True):
                    return None
                _write_file(tmp, data, self._fix_mode)
            except FileExistsError:  # a temporary file left by a crashed process that had our pid and thread id
                os.unlink(tmp)
                _write_file(tmp, data, self._fix_mode)
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

    def _ready(self, *, create: bool) -> bool:
        """Whether this process may use the spool directory, made (``create``) and checked once per process.

        False when it does not exist (and ``create`` is off) or is refused as unsafe; a refused
        directory is looked at again after RECHECK_REFUSED_S. Other OSErrors propagate.
        """
        if self._made:
            return True
        if self._refused_at is not None and self._clock() - self._refused_at < RECHECK_REFUSED_S:
            return False
        if not create and not os.path.lexists(self.directory):
            return False
        try:
            self._make_directories()
        except UnsafeSpool as exc:
            self._refused_at = self._clock()
            log.error(
                "Dataset forwarder: refusing to use the spool directory %s: %s. Dataset events from this process "
                "are NOT forwarded until it is fixed: set DATASET_FORWARDER_SPOOL_DIR to a directory of this "
                "user's own (the listener makes it, mode 0700, when it does not exist).",
                self.directory,
                exc,
            )
            return False
        self._refused_at = None
        return True

    def _make_directories(self) -> None:
        """Create the spool with ``inflight/`` (0700; ``rejected/`` at the first rejection) and check they are
        this user's own; once per process, again only if it disappears. Raises UnsafeSpool for a directory
        not to be used."""
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        for directory in (self.directory, self.inflight_dir):
            _private_directory(directory)
        self._fix_mode = bool(_umask() & FILE_MODE)
        self._made = True

    def pending(self) -> list[Path]:
        """Spooled files waiting to be sent, oldest first (claims of dead processes are released first)."""
        try:
            if not self._ready(create=False):
                return []
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
            if not self._ready(create=False):
                return 0
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
                self._made = False
                if not self._ready(create=True):
                    raise
                os.rename(path, claimed)
            # the claim's age starts now, whatever the event's age (of the link itself, should it be one)
            os.utime(claimed, follow_symlinks=os.utime not in os.supports_follow_symlinks)
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
            _private_directory(self.rejected_dir)
        except OSError as exc:
            log.warning("Cannot create %s: %s", self.rejected_dir, exc)
        else:
            self._move(path, self.rejected_dir / path.name)
        _unlock(_CLAIM_LOCKS.pop(str(path), None))
        self._prune_rejected()

    def _prune_rejected(self) -> None:
        """Keep the newest ``rejected_max_files`` rejections within ``rejected_max_bytes``; delete the rest."""
        try:
            entries = []
            for entry in os.scandir(self.rejected_dir):
                if _is_spooled(entry.name):
                    info = entry.stat(follow_symlinks=False)
                    entries.append((info.st_mtime, entry.name, info.st_size))
        except OSError as exc:
            log.warning("Cannot list %s: %s", self.rejected_dir, exc)
            return
        entries.sort(reverse=True)  # newest first (a rejected file's time is its claim's: when it was tried)
        kept = size = 0
        pruned = []
        for _, name, bytes_ in entries:
            if kept < self.rejected_max_files and size + bytes_ <= self.rejected_max_bytes:
                kept += 1
                size += bytes_
            else:
                pruned.append(name)
        for name in pruned:
            try:
                os.unlink(self.rejected_dir / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("Cannot prune %s: %s", self.rejected_dir / name, exc)
        if pruned:
            log.warning(
                "Deleted the %d oldest rejected events in %s (it keeps at most %d files, %d bytes).",
                len(pruned),
                self.rejected_dir,
                self.rejected_max_files,
                self.rejected_max_bytes,
            )

    def read(self, path: Path) -> EnvelopeBody | None:
        """The envelope stored in ``path``; None (and the file parked as rejected) when unreadable."""
        try:
            envelope = json.loads(_read_file(path))
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

    def read_private(self, name: str) -> bytes | None:
        """The content of the listener's own small file ``name`` in the spool directory (not an envelope: its name
        does not end in SUFFIX, so no flush ever sends it); None when it does not exist or cannot be read safely
        (a symbolic link, another user's directory: logged)."""
        path = self._private_path(name)
        try:
            if not self._ready(create=True):
                return None
            return _read_file(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("Cannot read %s: %s", path, exc)
            return None

    def write_private(self, name: str, data: bytes) -> bool:
        """Replace the listener's own file ``name`` with ``data`` (0600, atomically, never through a link); True
        when written."""
        path = self._private_path(name)
        tmp = os.path.join(self.directory, f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{name}")
        try:
            if not self._ready(create=True):
                return False
            try:
                _write_file(tmp, data, self._fix_mode)
            except FileExistsError:  # left by a crashed process that had our pid and thread id
                os.unlink(tmp)
                _write_file(tmp, data, self._fix_mode)
            os.replace(tmp, path)  # a link planted at ``path`` is replaced, never followed
            return True
        except OSError as exc:
            log.warning("Cannot write %s: %s", path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            return False

    def _private_path(self, name: str) -> Path:
        if name.endswith(SUFFIX) or name.startswith(".") or os.sep in name:
            raise ValueError(f"not a name for a private file of the spool: {name!r}")
        return self.directory / name

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


def _write_file(path: str, data: bytes, fix_mode: bool = False) -> None:
    """Write ``data`` to a new file at ``path`` (0600) with as few system calls as a file allows (no buffering layer).

    ``O_EXCL`` and ``O_NOFOLLOW``: never through a link or into a file someone else made. ``fix_mode``:
    the umask takes bits of FILE_MODE away, so the mode is set once more, explicitly.
    """
    fd = os.open(path, _OPEN_NEW, FILE_MODE)
    try:
        if fix_mode:
            os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def _read_file(path: Path) -> bytes:
    """The content of ``path``; OSError (ELOOP) when it is a symbolic link."""
    fd = os.open(path, _OPEN_READ)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def _private_directory(directory: Path) -> None:
    """Make ``directory`` (mode 0700, whatever the umask) unless it exists; UnsafeSpool when it is not ours."""
    try:
        os.mkdir(directory, DIR_MODE)
    except FileExistsError:
        pass
    else:
        os.chmod(directory, DIR_MODE)  # the umask may have taken bits away
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeSpool(f"{directory} is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{directory} is not a directory")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise UnsafeSpool(f"{directory} is owned by uid {info.st_uid}, not by this process's uid {os.geteuid()}")


def _umask() -> int:
    """This process's umask, read without changing it where the system allows (Linux), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


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
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))  # writable: NFS emulates flock with write locks
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
