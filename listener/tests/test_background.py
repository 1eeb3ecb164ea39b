from __future__ import annotations

import json
import logging
import time

import pytest

from dataset_forwarder_listener.sender import BackgroundSender, Sender, SqsTransport
from dataset_forwarder_listener.spool import Spool
from tests.conftest import QUEUE_URL
from tests.fakes.sqs import StubSqs, connection_error


def background(spool, client, budget_s=2.0, **kwargs) -> BackgroundSender:
    sender = Sender(SqsTransport(QUEUE_URL, client_factory=lambda: client), spool, budget_s)
    return BackgroundSender(sender, **kwargs)


def wait_for(condition, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def submit_all_and_see_each_sent_once(sending, spool, client, envelopes):
    """Submit ``envelopes``: the spool empties and SQS has each of them exactly once."""
    for envelope in envelopes:
        sending.submit(envelope)

    assert wait_for(lambda: spool.count() == 0)
    assert sorted(json.loads(b)["id"] for b in client.bodies) == sorted(e["id"] for e in envelopes)


def test_submit_returns_at_once_even_when_sqs_is_slow(spool, make_envelope):
    sending = background(spool, StubSqs(delay_s=0.5))

    started = time.monotonic()
    for second in range(5):
        sending.submit(make_envelope(second=second))
    elapsed = time.monotonic() - started

    assert elapsed < 0.1
    assert spool.count() == 5  # durable before the hook returns
    sending.close(timeout_s=0)


def test_close_drains_what_was_submitted(spool, make_envelope):
    client = StubSqs(delay_s=0.01)
    sending = background(spool, client)
    envelopes = [make_envelope(second=s) for s in range(10)]

    for envelope in envelopes:
        sending.submit(envelope)
    sending.close(timeout_s=5)

    assert sorted(json.loads(b)["id"] for b in client.bodies) == sorted(e["id"] for e in envelopes)
    assert spool.count() == 0


def test_older_spooled_events_are_sent_when_the_thread_starts(spool, make_envelope):
    left_by_an_earlier_process = make_envelope(second=1)
    spool.write(left_by_an_earlier_process)
    client = StubSqs()
    sending = background(spool, client)

    sending.submit(make_envelope(second=2))

    assert wait_for(lambda: len(client.sent) == 2)
    assert left_by_an_earlier_process["id"] in {json.loads(b)["id"] for b in client.bodies}
    assert wait_for(lambda: spool.count() == 0)
    sending.close()


def test_events_wait_in_the_spool_during_an_outage_and_go_out_once_after(spool, make_envelope):
    client = StubSqs(fail=connection_error(), fail_times=1)
    sending = background(spool, client, min_backoff_s=0.2)
    envelopes = [make_envelope(second=s) for s in range(3)]

    submit_all_and_see_each_sent_once(sending, spool, client, envelopes)
    sending.close()


def test_close_gives_up_on_a_hanging_queue_within_its_timeout(spool, make_envelope):
    sending = background(spool, StubSqs(delay_s=10), budget_s=5)
    sending.submit(make_envelope())

    started = time.monotonic()
    sending.close(timeout_s=0.3)

    assert time.monotonic() - started < 1.0
    assert spool.count() == 1  # still held (claimed by the stuck send, or waiting)


def test_full_queue_leaves_events_in_the_spool_for_the_thread(spool, make_envelope):
    client = StubSqs(delay_s=0.05)
    sending = background(spool, client, queue_size=1)
    envelopes = [make_envelope(second=s) for s in range(6)]

    submit_all_and_see_each_sent_once(sending, spool, client, envelopes)
    sending.close()


def test_sending_waits_for_a_pause_in_submits_then_goes_in_batches(spool, make_envelope):
    client = StubSqs()
    sending = background(spool, client, pause_s=1.0, max_wait_s=30.0, batching="pause")

    for second in range(12):
        sending.submit(make_envelope(second=second))
        time.sleep(0.02)  # pacing, well under pause_s even on a loaded machine
        assert client.calls == 0  # submits keep coming: the caller's process is busy, nothing is sent yet

    assert wait_for(lambda: spool.count() == 0)
    assert client.batch_calls == [10, 2]
    sending.close()


def test_a_steady_stream_of_submits_is_still_sent_within_max_wait(spool, make_envelope):
    client = StubSqs()
    sending = background(spool, client, pause_s=1.0, max_wait_s=0.2, batching="pause")

    started = time.monotonic()
    second = 0
    while not client.sent and time.monotonic() - started < 10.0:  # a stream with no pause of pause_s in it
        sending.submit(make_envelope(second=second % 60, key=str(second)))
        second += 1
        time.sleep(0.01)

    assert client.sent  # sent while the stream went on
    assert wait_for(lambda: spool.count() == 0)
    sending.close()


@pytest.mark.parametrize("batching", ["adaptive", "natural", "pause"])
def test_close_sends_at_once_without_waiting_for_a_pause(spool, make_envelope, batching):
    client = StubSqs()
    sending = background(spool, client, pause_s=10.0, max_wait_s=10.0, batching=batching)
    for second in range(3):
        sending.submit(make_envelope(second=second))

    started = time.monotonic()
    sending.close(timeout_s=2)

    assert time.monotonic() - started < 1.0
    assert len(client.sent) == 3
    assert spool.count() == 0


@pytest.mark.parametrize("batching", ["adaptive", "natural", "pause"])
def test_close_right_after_a_submit_still_sends_what_an_earlier_process_left(spool, make_envelope, batching):
    left = make_envelope(second=1)
    spool.write(left)  # an earlier process spooled it and died (Airflow 3: `dags test`, then exit)
    client = StubSqs()
    sending = background(spool, client, pause_s=10.0, max_wait_s=10.0, batching=batching)

    new = make_envelope(second=2)
    sending.submit(new)
    sending.close(timeout_s=2)

    assert sorted(json.loads(b)["id"] for b in client.bodies) == sorted([left["id"], new["id"]])
    assert spool.count() == 0


def test_unsafe_spool_directory_leaves_the_background_sender_idle(tmp_path, make_envelope):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "spool").symlink_to(elsewhere)
    client = StubSqs()
    sending = background(Spool(tmp_path / "spool", max_files=10), client)

    for second in range(3):
        sending.submit(make_envelope(second=second))
    sending.close(timeout_s=2)

    assert sending._thread is None  # no thread was started for nothing
    assert client.calls == 0
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize(
    "poison",
    [{"uri": 42}, {"uri": ["s3://bucket/a"]}, {"source": "not an object"}, {"id": {"not": "a string"}}],
    ids=["uri-number", "uri-list", "source-string", "id-object"],
)
def test_a_poison_file_in_the_spool_is_parked_and_the_sender_keeps_sending(spool, make_envelope, poison):
    bad = {**make_envelope(second=1), **poison}
    spool.directory.mkdir(parents=True)
    name = f"{1:020d}-poison.json"
    (spool.directory / name).write_text(json.dumps(bad))  # a hand edit, or a bug in another version
    client = StubSqs()
    sending = background(spool, client)
    first, later = make_envelope(second=2), make_envelope(second=3)

    sending.submit(first)  # the thread starts, sends it, and catches up on the spool: the poison file
    assert wait_for((spool.rejected_dir / name).exists)
    sending.submit(later)

    assert wait_for(lambda: len(client.sent) == 2 and spool.count() == 0)
    assert sorted(json.loads(b)["id"] for b in client.bodies) == sorted([first["id"], later["id"]])
    assert sending._thread.is_alive()
    assert sending._restarts == 0  # it survived rather than being replaced
    assert [p.name for p in spool.rejected_dir.iterdir()] == [name]
    sending.close()


def test_an_unexpected_error_does_not_stop_the_sender(spool, make_envelope, caplog):
    client = StubSqs()
    sending = background(spool, client, min_backoff_s=0.1)
    real_flush = sending.sender.flush
    failures = []

    def flush_failing_once(*args, **kwargs):
        if not failures:
            failures.append(1)
            raise RuntimeError("a bug nobody foresaw")
        return real_flush(*args, **kwargs)

    sending.sender.flush = flush_failing_once
    with caplog.at_level(logging.ERROR):
        sending.submit(make_envelope(second=1))
        assert wait_for(lambda: failures and len(client.sent) == 1)
        sending.submit(make_envelope(second=2))
        assert wait_for(lambda: len(client.sent) == 2 and spool.count() == 0)

    assert "unexpected error" in caplog.text
    assert sending._restarts == 0
    sending.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's death is the point
def test_a_dead_sender_thread_is_replaced_at_the_next_submit(spool, make_envelope, caplog):
    client = StubSqs()
    sending = background(spool, client)
    real_flush = sending.sender.flush

    def flush_killing_the_thread(*args, **kwargs):
        sending.sender.flush = real_flush
        raise SystemExit  # ends a thread silently, past any `except Exception`

    sending.sender.flush = flush_killing_the_thread
    sending.submit(make_envelope(second=1))  # the thread's first catch-up on the spool kills it
    assert wait_for(lambda: not sending._thread.is_alive())
    spool.write(make_envelope(second=2))  # written meanwhile, by another process

    with caplog.at_level(logging.WARNING):
        sending.submit(make_envelope(second=3))

    assert wait_for(lambda: len(client.sent) == 3 and spool.count() == 0)
    assert sending._thread.is_alive()
    assert sending._restarts == 1
    assert "started it again" in caplog.text
    sending.close()
