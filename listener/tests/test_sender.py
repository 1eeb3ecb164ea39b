from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from dataset_forwarder_listener.sender import Sender, SendOutcome, SqsTransport, region_from_queue_url
from dataset_forwarder_listener.spool import Spool
from tests.conftest import QUEUE_URL
from tests.fakes.sqs import StubSqs, client_error, connection_error


def make_sender(spool: Spool, client: StubSqs, budget_s: float = 2.0) -> Sender:
    return Sender(SqsTransport(QUEUE_URL, client_factory=lambda: client), spool, budget_s)


def test_accepted_event_is_sent_with_attributes_and_leaves_the_spool(sender, stub_sqs, spool, make_envelope):
    envelope = make_envelope()

    assert sender.send(envelope) is True

    [message] = stub_sqs.sent
    assert message["QueueUrl"] == QUEUE_URL
    assert json.loads(message["MessageBody"]) == envelope
    assert message["MessageAttributes"]["event_id"] == {"DataType": "String", "StringValue": envelope["id"]}
    assert spool.count() == 0


def test_failed_send_keeps_the_event_spooled(spool, make_envelope, caplog):
    sender = make_sender(spool, StubSqs(fail=connection_error()))
    envelope = make_envelope()

    with caplog.at_level(logging.WARNING):
        assert sender.send(envelope) is False

    [path] = spool.pending()
    assert spool.read(path) == envelope
    assert "stays spooled" in caplog.text


def test_message_sqs_refuses_for_good_is_parked_not_retried(spool, make_envelope):
    client = StubSqs(fail=client_error("InvalidParameterValue"))
    sender = make_sender(spool, client)

    assert sender.send(make_envelope()) is False

    assert spool.pending() == []
    assert len(list(spool.rejected_dir.iterdir())) == 1
    assert sender.flush().sent == 0
    assert client.calls == 1


@pytest.mark.parametrize("code", ["AccessDenied", "ThrottlingException", "AWS.SimpleQueueService.NonExistentQueue"])
def test_errors_that_may_heal_keep_the_event(spool, make_envelope, code):
    sender = make_sender(spool, StubSqs(fail=client_error(code)))

    assert sender.send(make_envelope()) is False

    assert len(spool.pending()) == 1


def test_client_that_cannot_even_be_created_is_a_retry(spool, make_envelope):
    def broken_factory():
        raise RuntimeError("no region, no credentials")

    sender = Sender(SqsTransport(QUEUE_URL, client_factory=broken_factory), spool, 1.0)

    assert sender.send(make_envelope()) is False
    assert len(spool.pending()) == 1


def test_hanging_client_is_cut_off_by_the_budget(spool, make_envelope):
    sender = make_sender(spool, StubSqs(delay_s=5.0), budget_s=0.3)

    started = time.monotonic()
    assert sender.send(make_envelope()) is False
    elapsed = time.monotonic() - started

    assert elapsed < 1.0
    assert len(spool.pending()) == 1


def test_flush_sends_oldest_first_and_empties_the_spool(spool, make_envelope):
    envelopes = [make_envelope(second=s) for s in (3, 1, 2)]
    for envelope in envelopes:
        spool.write(envelope)
    client = StubSqs()

    flushed = make_sender(spool, client).flush()

    assert (flushed.sent, flushed.remaining, flushed.failed) == (3, 0, False)
    assert [json.loads(body)["emitted_at"][17:19] for body in client.bodies] == ["01", "02", "03"]
    assert spool.count() == 0


def test_flush_stops_at_the_first_failure_and_keeps_the_rest(spool, make_envelope):
    for second in (1, 2, 3):
        spool.write(make_envelope(second=second))
    client = StubSqs(fail=connection_error(), fail_times=-1)

    flushed = make_sender(spool, client).flush()

    assert (flushed.sent, flushed.remaining, flushed.failed) == (0, 3, True)
    assert client.calls == 1
    assert len(spool.pending()) == 3


def test_flush_honours_its_limit(spool, make_envelope):
    for second in (1, 2, 3):
        spool.write(make_envelope(second=second))

    flushed = make_sender(spool, StubSqs()).flush(limit=2)

    assert (flushed.sent, flushed.remaining) == (2, 1)


def test_flush_after_an_outage_delivers_each_event_once(spool, make_envelope):
    client = StubSqs(fail=connection_error(), fail_times=1)
    sender = make_sender(spool, client)
    first = make_envelope(second=1)
    assert sender.send(first) is False

    assert sender.send(make_envelope(second=2)) is True
    assert sender.flush().sent == 1

    assert sorted(json.loads(b)["id"] for b in client.bodies) == sorted([first["id"], make_envelope(second=2)["id"]])
    assert spool.count() == 0


def test_send_all_only_spools_the_rest_after_a_failure(spool, make_envelope):
    client = StubSqs(fail=connection_error())
    sender = make_sender(spool, client)

    assert sender.send_all([make_envelope(second=s) for s in (1, 2, 3)]) == 0

    assert client.calls == 1
    assert len(spool.pending()) == 3


def test_send_all_catches_up_on_older_events_after_a_success(spool, make_envelope):
    older = make_envelope(second=1)
    spool.write(older)
    client = StubSqs()

    assert make_sender(spool, client).send_all([make_envelope(second=5)]) == 2

    assert json.loads(client.bodies[1])["id"] == older["id"]
    assert spool.count() == 0


def test_send_all_shares_one_budget(spool, make_envelope):
    sender = make_sender(spool, StubSqs(delay_s=0.2), budget_s=0.5)

    started = time.monotonic()
    sender.send_all([make_envelope(second=s) for s in range(5)])

    assert time.monotonic() - started < 1.0
    assert spool.count() >= 2


def test_event_that_cannot_be_spooled_is_still_sent(tmp_path, make_envelope):
    spool = Spool(tmp_path / "spool", max_files=1)
    spool.write(make_envelope(second=1))
    client = StubSqs()

    assert make_sender(spool, client).send(make_envelope(second=2)) is True
    assert len(client.sent) == 1


def test_event_neither_spooled_nor_sent_is_reported_lost(tmp_path, make_envelope, caplog):
    spool = Spool(tmp_path / "spool", max_files=1)
    spool.write(make_envelope(second=1))
    sender = make_sender(spool, StubSqs(fail=connection_error()))

    with caplog.at_level(logging.ERROR):
        assert sender.send_one(make_envelope(second=2), None) is SendOutcome.RETRY

    assert "LOST" in caplog.text


@pytest.mark.parametrize(
    ("url", "region"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/q", "eu-west-1"),
        ("https://eu-central-1.queue.amazonaws.com/123456789012/q", "eu-central-1"),
        ("https://sqs.us-gov-west-1.amazonaws.com/123456789012/q", "us-gov-west-1"),
        ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1"),
        ("http://127.0.0.1:5000/123456789012/q", None),
    ],
)
def test_region_is_read_from_the_queue_url(url, region):
    assert region_from_queue_url(url) == region


def test_batch_partial_failure_settles_each_envelope_by_its_own_entry(spool, make_envelope):
    accepted, throttled, refused = (make_envelope(second=s) for s in (1, 2, 3))
    client = StubSqs(refuse_entries={throttled["id"]: "ThrottlingException", refused["id"]: "InvalidMessageContents"})
    sender = make_sender(spool, client)
    items = [(envelope, spool.write(envelope)) for envelope in (accepted, throttled, refused)]

    outcomes = sender.send_batch(items)

    assert outcomes == [SendOutcome.SENT, SendOutcome.RETRY, SendOutcome.REJECTED]
    assert client.batch_calls == [3]
    assert [json.loads(body)["id"] for body in client.bodies] == [accepted["id"]]
    [waiting] = spool.pending()
    assert spool.read(waiting) == throttled  # kept for a later send
    assert [p.name for p in spool.rejected_dir.iterdir()] == [items[2][1].name]


def test_each_batch_entry_keeps_its_own_body_and_attributes(sender, stub_sqs, spool, make_envelope):
    envelopes = [make_envelope(uri=f"s3://bucket/{n}", second=n) for n in range(3)]

    assert sender.send_batch([(e, spool.write(e)) for e in envelopes]) == [SendOutcome.SENT] * 3

    for envelope, message in zip(envelopes, stub_sqs.sent):
        assert json.loads(message["MessageBody"]) == envelope
        assert message["MessageAttributes"]["event_id"]["StringValue"] == envelope["id"]
        assert message["MessageAttributes"]["uri"]["StringValue"] == envelope["uri"]
    assert spool.count() == 0


def test_flush_sends_in_batches_of_at_most_ten(spool, make_envelope):
    for second in range(21):
        spool.write(make_envelope(second=second))
    client = StubSqs()

    flushed = make_sender(spool, client).flush()

    assert (flushed.sent, flushed.remaining, flushed.failed) == (21, 0, False)
    assert client.batch_calls == [10, 10]  # and the last one alone, as a plain SendMessage
    assert client.calls == 3
    assert [json.loads(body)["emitted_at"][17:19] for body in client.bodies] == [f"{s:02d}" for s in range(21)]


def test_flush_stops_after_a_batch_with_a_failed_entry_and_keeps_it(spool, make_envelope):
    envelopes = [make_envelope(second=second) for second in range(15)]
    for envelope in envelopes:
        spool.write(envelope)
    client = StubSqs(refuse_entries={envelopes[3]["id"]: "InternalError"})

    flushed = make_sender(spool, client).flush()

    assert (flushed.sent, flushed.remaining, flushed.failed) == (9, 6, True)
    assert client.batch_calls == [10]
    kept = [*envelopes[10:], envelopes[3]]
    assert sorted(spool.read(p)["id"] for p in spool.pending()) == sorted(e["id"] for e in kept)


def test_batch_refused_as_a_whole_is_sent_one_by_one(spool, make_envelope):
    class NoBatches(StubSqs):
        def send_message_batch(self, **kwargs):
            raise client_error("AWS.SimpleQueueService.BatchRequestTooLong")

    client = NoBatches()
    envelopes = [make_envelope(second=s) for s in range(3)]

    outcomes = make_sender(spool, client).send_batch([(e, spool.write(e)) for e in envelopes])

    assert outcomes == [SendOutcome.SENT] * 3
    assert len(client.sent) == 3
    assert spool.count() == 0


def test_batch_that_fails_as_a_whole_keeps_every_envelope_spooled(spool, make_envelope):
    client = StubSqs(fail=connection_error())
    envelopes = [make_envelope(second=s) for s in range(12)]

    outcomes = make_sender(spool, client).send_batch([(e, spool.write(e)) for e in envelopes])

    assert outcomes == [SendOutcome.RETRY] * 12
    assert client.calls == 1  # the second batch is not tried against a queue that just failed
    assert len(spool.pending()) == 12


def test_large_envelopes_are_split_under_the_batch_size_limit(spool, make_envelope):
    envelopes = [make_envelope(second=s) for s in range(5)]
    for envelope in envelopes:
        envelope["extra"] = {"blob": "x" * 100_000}
    client = StubSqs()

    make_sender(spool, client).send_batch([(e, spool.write(e)) for e in envelopes])

    assert len(client.sent) == 5
    assert client.batch_calls == [2, 2]  # two fit in SQS's 256 KiB, three do not; the fifth goes alone
    assert spool.count() == 0


def test_sends_reuse_one_worker_thread(spool, make_envelope):
    threads: set[int] = set()

    class Recording(StubSqs):
        def send_message(self, **kwargs):
            threads.add(threading.get_ident())
            return super().send_message(**kwargs)

    sender = make_sender(spool, Recording())
    for second in range(5):
        assert sender.send(make_envelope(second=second)) is True

    assert len(threads) == 1


def test_a_send_stuck_past_its_budget_does_not_block_the_next_one(spool, make_envelope):
    calls = []

    class FirstHangs(StubSqs):
        def send_message(self, **kwargs):
            calls.append(kwargs)
            if len(calls) == 1:
                time.sleep(2.0)
            return super().send_message(**kwargs)

    sender = make_sender(spool, FirstHangs(), budget_s=0.3)
    assert sender.send(make_envelope(second=1)) is False

    started = time.monotonic()
    assert sender.send(make_envelope(second=2)) is True
    assert time.monotonic() - started < 1.0


def test_unsafe_spool_directory_makes_the_sender_forward_nothing(tmp_path, make_envelope):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "spool").symlink_to(elsewhere)
    client = StubSqs()
    sender = make_sender(Spool(tmp_path / "spool", max_files=10), client)

    assert sender.send(make_envelope(second=1)) is False
    assert sender.send_all([make_envelope(second=2), make_envelope(second=3)]) == 0

    assert client.calls == 0
    assert list(elsewhere.iterdir()) == []


def test_flush_parks_an_unsendable_file_and_sends_the_others(spool, make_envelope, caplog):
    good = [make_envelope(second=s) for s in (1, 3)]
    for envelope in good:
        spool.write(envelope)
    name = f"{2:020d}-poison.json"
    (spool.directory / name).write_text(json.dumps({**make_envelope(second=2), "uri": 42}))
    client = StubSqs()

    with caplog.at_level(logging.ERROR):
        flushed = make_sender(spool, client).flush()

    assert (flushed.sent, flushed.remaining, flushed.failed) == (2, 0, False)
    assert sorted(json.loads(b)["id"] for b in client.bodies) == sorted(e["id"] for e in good)
    assert [p.name for p in spool.rejected_dir.iterdir()] == [name]
    assert "not a sendable envelope" in caplog.text
    assert spool.count() == 0
