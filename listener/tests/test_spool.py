from __future__ import annotations

import json
import logging
import os
import time

from dataset_forwarder_listener.spool import Spool


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


def test_claims_of_a_dead_process_are_released(tmp_path, make_envelope):
    spool = Spool(tmp_path / "spool", max_files=10, stale_after_s=30)
    path = spool.write(make_envelope())
    claimed = spool.claim(path)
    assert spool.pending() == []

    old = time.time() - 60
    os.utime(claimed, (old, old))

    assert spool.pending() == [path]


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
