from __future__ import annotations

import json
import logging
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dataset_forwarder_listener.sender import Sender, SqsTransport
from dataset_forwarder_listener.spool import REJECTED_MAX_BYTES, REJECTED_MAX_FILES, TMP_PREFIX, Spool
from tests.conftest import QUEUE_URL
from tests.fakes.sqs import StubSqs

SRC = Path(__file__).resolve().parents[1] / "src"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_write_is_atomic_and_named_by_time_and_id(spool, make_envelope):
    envelope = make_envelope()

    path = spool.write(envelope)

    assert path.parent == spool.directory
    assert path.name == f"{1795474800123456000:020d}-{envelope['id']}.json"
    assert json.loads(path.read_text()) == envelope
    assert [p.name for p in spool.directory.iterdir() if p.is_file()] == [path.name]  # no temporary file left


def test_pending_is_oldest_first_whatever_the_write_order(spool, make_envelope):
    late, early, middle = make_envelope(second=30), make_envelope(second=1), make_envelope(second=10)
    for envelope in (late, early, middle):
        spool.write(envelope)

    assert [spool.read(p)["id"] for p in spool.pending()] == [early["id"], middle["id"], late["id"]]


def test_the_same_event_is_spooled_once(spool, make_envelope):
    envelope = make_envelope()

    first = spool.write(envelope)
    claimed = spool.claim(first)
    again = spool.write(envelope)  # while another process is sending it

    assert again == first
    assert spool.count() == 1
    spool.release(claimed)
    assert spool.write(envelope) == first
    assert spool.pending() == [first]


def test_full_spool_keeps_what_it_has_and_says_so_loudly_once_a_minute(tmp_path, make_envelope, caplog):
    clock = FakeClock()
    spool = Spool(tmp_path / "spool", max_files=2, clock=clock)
    kept = [spool.write(make_envelope(second=s)) for s in (1, 2)]

    with caplog.at_level(logging.ERROR):
        assert spool.write(make_envelope(second=3)) is None
        assert spool.write(make_envelope(second=4)) is None
        clock.now += 61
        assert spool.write(make_envelope(second=5)) is None

    assert spool.pending() == kept
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "is full" in errors[0].getMessage()
    assert "DATASET_FORWARDER_SPOOL_MAX=2" in errors[0].getMessage()
    assert "NOT written" in errors[0].getMessage()
    assert "1 more events were not spooled" in errors[1].getMessage()


def test_claim_is_exclusive(spool, make_envelope):
    path = spool.write(make_envelope())

    claimed = spool.claim(path)

    assert claimed is not None
    assert spool.claim(path) is None
    assert spool.pending() == []
    assert spool.count() == 1
    spool.remove(claimed)
    assert spool.count() == 0


def test_claim_of_a_stuck_sender_is_released_after_stale_after_s(tmp_path, make_envelope):
    spool = Spool(tmp_path / "spool", max_files=10, stale_after_s=30)
    path = spool.write(make_envelope())
    claimed = spool.claim(path)
    assert spool.pending() == []

    old = time.time() - 60
    os.utime(claimed, (old, old))

    assert spool.pending() == [path]


def test_claim_of_a_killed_process_is_released_at_once(spool, make_envelope):
    path = spool.write(make_envelope())
    claim_and_die = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from dataset_forwarder_listener.spool import Spool\n"
        "assert Spool(Path(sys.argv[1]), 10).claim(Path(sys.argv[2]))\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )

    killed = subprocess.run(
        [sys.executable, "-c", claim_and_die, str(spool.directory), str(path)],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        timeout=30,
        check=False,
    )

    assert killed.returncode == -signal.SIGKILL
    assert (spool.inflight_dir / path.name).exists()
    assert spool.pending() == [path]  # long before stale_after_s: its lock died with the process


def test_claim_of_a_live_sender_is_left_alone(tmp_path, make_envelope):
    sending = Spool(tmp_path / "spool", max_files=10)
    looking = Spool(tmp_path / "spool", max_files=10)  # another process, as far as the lock is concerned
    path = sending.write(make_envelope())
    claimed = sending.claim(path)

    assert looking.pending() == []
    assert looking.claim(path) is None
    sending.release(claimed)
    assert looking.pending() == [path]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_does_not_keep_its_parent_s_claims_locked(spool, make_envelope):
    path = spool.write(make_envelope())
    claimed = spool.claim(path)
    started_r, started_w = os.pipe()
    leave_r, leave_w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child says it runs, waits, and leaves without cleanup)
        os.close(leave_w)
        os.write(started_w, b"!")
        os.read(leave_r, 1)
        os._exit(0)
    os.close(started_w)
    os.close(leave_r)
    try:
        assert os.read(started_r, 1) == b"!"  # the child runs (and has inherited the claim's descriptor)
        spool.release(claimed)  # the send failed

        assert spool.claim(path) is not None
    finally:
        os.close(leave_w)  # the child leaves
        os.waitpid(child, 0)
        os.close(started_r)


def test_unreadable_file_is_parked_as_rejected(spool, make_envelope, caplog):
    path = spool.write(make_envelope())
    path.write_text("{not json")

    with caplog.at_level(logging.ERROR):
        assert spool.read(path) is None

    assert spool.pending() == []
    assert (spool.rejected_dir / path.name).exists()
    assert "unreadable" in caplog.text


def test_spool_problems_never_raise(tmp_path, make_envelope, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    spool = Spool(blocker / "spool", max_files=10)

    with caplog.at_level(logging.ERROR):
        assert spool.write(make_envelope()) is None

    assert spool.pending() == []
    assert spool.count() == 0
    assert "cannot write" in caplog.text
    spool.remove(blocker / "spool" / "x.json")
    spool.release(blocker / "spool" / "inflight" / "x.json")


def test_missing_directory_is_an_empty_spool(tmp_path):
    spool = Spool(tmp_path / "nowhere", max_files=10)

    assert spool.pending() == []
    assert spool.count() == 0


def test_bound_counts_what_other_processes_wrote(tmp_path, make_envelope):
    clock = FakeClock()
    here = Spool(tmp_path / "spool", max_files=3, clock=clock)
    elsewhere = Spool(tmp_path / "spool", max_files=3, clock=clock)
    assert here.write(make_envelope(second=1)) is not None
    for second in (2, 3):
        assert elsewhere.write(make_envelope(second=second)) is not None

    clock.now += 5  # the writer lists the directory again every few seconds

    assert here.write(make_envelope(second=4)) is None
    assert here.count() == 3


@pytest.mark.parametrize("after_listing", [1, 2, 3])
@pytest.mark.parametrize("move", ["claim", "release"])
def test_count_sees_a_file_moved_while_it_lists_once(spool, make_envelope, monkeypatch, move, after_listing):
    spool.write(make_envelope(second=1))
    spool.write(make_envelope(second=2))
    first, _ = spool.pending()
    claimed = spool.claim(first)
    if move == "claim":
        spool.release(claimed)
    real_scandir = os.scandir
    listed: list[str] = []

    def scandir_then_move(directory):
        entries = list(real_scandir(directory))
        listed.append(str(directory))
        if len(listed) == after_listing:  # a sender claims the file, or gives it back, right now
            if move == "claim":
                assert spool.claim(first) is not None
            else:
                spool.release(claimed)
        return iter(entries)

    monkeypatch.setattr("dataset_forwarder_listener.spool.os.scandir", scandir_then_move)

    assert spool.count() == 2
    assert len(listed) == 3


def test_write_of_a_new_id_skips_the_lookups_but_is_the_same_file(spool, make_envelope):
    envelope = make_envelope()

    path = spool.write(envelope, unique=True)

    assert path == spool.directory / f"{1795474800123456000:020d}-{envelope['id']}.json"
    assert json.loads(path.read_text()) == envelope
    assert [p.name for p in spool.directory.iterdir() if p.is_file()] == [path.name]


def test_spool_directory_removed_under_a_running_process_is_made_again(spool, make_envelope):
    spool.write(make_envelope(second=1))
    for path in [*spool.inflight_dir.iterdir(), *spool.directory.iterdir()]:
        if path.is_file():
            path.unlink()
    spool.inflight_dir.rmdir()
    spool.directory.rmdir()

    path = spool.write(make_envelope(second=2), unique=True)

    assert path is not None
    assert path.is_file()
    assert spool.claim(path) == spool.inflight_dir / path.name


# ---------------------------------------------------------------------------------------- a private spool


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o277])
def test_spool_is_private_whatever_the_umask(tmp_path, make_envelope, umask):
    previous = os.umask(umask)
    try:
        spool = Spool(tmp_path / "spool", max_files=10)
        path = spool.write(make_envelope(second=1))
        claimed = spool.claim(spool.write(make_envelope(second=2)))
        spool.reject(claimed, "refused for the test")
    finally:
        os.umask(previous)

    assert mode(spool.directory) == 0o700
    assert mode(spool.inflight_dir) == 0o700
    assert mode(spool.rejected_dir) == 0o700
    assert mode(path) == 0o600
    assert mode(spool.rejected_dir / claimed.name) == 0o600
    assert spool.claim(path) is not None  # still claimable (the lock opens it for writing)


def test_symlinked_spool_directory_is_refused_and_nothing_is_read_or_written_there(tmp_path, make_envelope, caplog):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    planted = make_envelope(second=1)
    (elsewhere / f"{1:020d}-{planted['id']}.json").write_text(json.dumps(planted))
    (tmp_path / "spool").symlink_to(elsewhere)
    spool = Spool(tmp_path / "spool", max_files=10)

    with caplog.at_level(logging.ERROR):
        assert spool.pending() == []  # the planted file is not read
        assert spool.write(make_envelope(second=2)) is None
        assert spool.write(make_envelope(second=3)) is None

    assert spool.refused
    assert spool.count() == 0
    assert sorted(p.name for p in elsewhere.iterdir()) == [f"{1:020d}-{planted['id']}.json"]
    refusals = [r.getMessage() for r in caplog.records if "refusing to use the spool directory" in r.getMessage()]
    assert len(refusals) == 1  # said once, not per event
    assert "symbolic link" in refusals[0]
    assert "NOT forwarded" in refusals[0]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_spool_directory_of_another_user_is_refused(tmp_path, make_envelope, caplog):
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o777)
    os.chown(directory, 12345, 12345)
    spool = Spool(directory, max_files=10)

    with caplog.at_level(logging.ERROR):
        assert spool.write(make_envelope()) is None

    assert spool.refused
    assert list(directory.iterdir()) == []
    assert "owned by uid 12345" in caplog.text


def test_refused_spool_is_used_once_it_is_fixed(tmp_path, make_envelope):
    clock = FakeClock()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "spool").symlink_to(elsewhere)
    spool = Spool(tmp_path / "spool", max_files=10, clock=clock)
    assert spool.write(make_envelope(second=1)) is None

    (tmp_path / "spool").unlink()
    assert spool.write(make_envelope(second=2)) is None  # looked at again only once a minute
    clock.now += 61

    assert spool.write(make_envelope(second=3)) is not None
    assert not spool.refused


def test_a_link_planted_at_the_temporary_name_is_not_written_through(spool, make_envelope):
    envelope = make_envelope()
    name = f"{1795474800123456000:020d}-{envelope['id']}.json"
    spool.write(make_envelope(second=9))  # the directory exists
    target = spool.directory.parent / "precious"
    target.write_text("keep me")
    (spool.directory / f"{TMP_PREFIX}{os.getpid()}-{threading.get_ident()}-{name}").symlink_to(target)

    path = spool.write(envelope, unique=True)

    assert target.read_text() == "keep me"
    assert path is not None
    assert not path.is_symlink()
    assert json.loads(path.read_text()) == envelope


def test_a_spooled_link_is_parked_as_rejected_not_followed(spool, make_envelope):
    spool.write(make_envelope(second=1))
    secret = spool.directory.parent / "secret.json"
    secret.write_text(json.dumps(make_envelope(second=2)))
    link = spool.directory / f"{2:020d}-link.json"
    link.symlink_to(secret)
    client = StubSqs()

    flushed = Sender(SqsTransport(QUEUE_URL, client_factory=lambda: client), spool, 2.0).flush()

    assert flushed.sent == 1
    assert [json.loads(body)["emitted_at"][17:19] for body in client.bodies] == ["01"]  # not the link's target
    assert (spool.rejected_dir / link.name).is_symlink()
    assert spool.pending() == []


def _reject_files(spool: Spool, make_envelope, count: int) -> list[str]:
    names = []
    for second in range(count):
        claimed = spool.claim(spool.write(make_envelope(second=second)))
        moment = time.time() - 100 + second  # the later the rejection, the newer
        os.utime(claimed, (moment, moment))
        spool.reject(claimed, "refused for the test")
        names.append(claimed.name)
    return names


def test_rejected_keeps_only_the_newest_files(spool, make_envelope, caplog):
    assert REJECTED_MAX_FILES >= 100  # the documented default
    spool.rejected_max_files = 3

    with caplog.at_level(logging.WARNING):
        names = _reject_files(spool, make_envelope, 5)

    assert sorted(p.name for p in spool.rejected_dir.iterdir()) == sorted(names[-3:])
    assert "Deleted the 1 oldest rejected events" in caplog.text


def test_rejected_keeps_only_the_newest_bytes(spool, make_envelope):
    assert REJECTED_MAX_BYTES >= 1024 * 1024  # the documented default
    one = len(json.dumps(make_envelope(second=1), separators=(",", ":")))
    spool.rejected_max_bytes = 2 * one + one // 2

    names = _reject_files(spool, make_envelope, 4)

    assert sorted(p.name for p in spool.rejected_dir.iterdir()) == sorted(names[-2:])
