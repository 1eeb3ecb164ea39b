"""Against moto server's SQS over real HTTP: what arrives, and what happens when SQS is unreachable."""

from __future__ import annotations

import json
import socket
import time

import boto3
import pytest
from devkit.moto_env import free_port, use_moto

from dataset_forwarder_listener.sender import BackgroundSender, Sender, SqsTransport
from dataset_forwarder_listener.spool import Spool
from tests.conftest import receive_all

pytestmark = pytest.mark.integration

REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch, moto_endpoint):
    use_moto(monkeypatch, moto_endpoint)
    return monkeypatch


@pytest.fixture
def queue(aws, request):
    sqs = boto3.client("sqs", region_name=REGION)
    name = f"forwarder-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    yield sqs, url
    sqs.delete_queue(QueueUrl=url)


def test_event_arrives_on_the_queue_with_its_attributes(queue, tmp_path, make_envelope, envelope_validator):
    sqs, url = queue
    spool = Spool(tmp_path / "spool", max_files=100)
    envelope = make_envelope()

    assert Sender(SqsTransport(url), spool, budget_s=5).send(envelope) is True

    [message] = receive_all(sqs, url)
    body = json.loads(message["Body"])
    envelope_validator.validate(body)
    assert body == envelope
    attributes = {k: (v["DataType"], v["StringValue"]) for k, v in message["MessageAttributes"].items()}
    assert attributes == {
        "uri": ("String", "s3://bucket/bears"),
        "event_id": ("String", envelope["id"]),
        "source_deployment": ("String", "team-a-prod"),
    }
    assert spool.count() == 0


def test_unreachable_queue_keeps_the_event_until_a_flush_delivers_it_once(queue, tmp_path, make_envelope):
    sqs, url = queue
    spool = Spool(tmp_path / "spool", max_files=100)
    envelope = make_envelope()
    budget_s = 3.0

    with pytest.MonkeyPatch.context() as outage:
        outage.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        started = time.monotonic()
        assert Sender(SqsTransport(url), spool, budget_s=budget_s).send(envelope) is False
        assert time.monotonic() - started < budget_s + 0.5
    [spooled] = spool.pending()
    assert spool.read(spooled) == envelope

    flushed = Sender(SqsTransport(url), spool, budget_s=budget_s).flush()

    assert (flushed.sent, flushed.remaining, flushed.failed) == (1, 0, False)
    [message] = receive_all(sqs, url)
    assert json.loads(message["Body"])["id"] == envelope["id"]
    assert spool.count() == 0


def test_endpoint_that_never_answers_costs_no_more_than_the_budget(queue, tmp_path, make_envelope):
    _, url = queue
    spool = Spool(tmp_path / "spool", max_files=100)
    with socket.socket() as silent, pytest.MonkeyPatch.context() as outage:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        outage.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")

        started = time.monotonic()
        assert Sender(SqsTransport(url), spool, budget_s=1.0).send(make_envelope()) is False
        elapsed = time.monotonic() - started

    assert 0.9 < elapsed < 1.5
    assert spool.count() == 1


def test_background_sender_parks_a_poison_file_and_keeps_sending(queue, tmp_path, make_envelope):
    sqs, url = queue
    spool = Spool(tmp_path / "spool", max_files=100)
    spool.directory.mkdir()
    poison = f"{1:020d}-poison.json"
    (spool.directory / poison).write_text(json.dumps({**make_envelope(second=1), "uri": 42}))
    sending = BackgroundSender(Sender(SqsTransport(url), spool, budget_s=10))
    envelopes = [make_envelope(second=s) for s in (2, 3)]

    sending.submit(envelopes[0])  # the thread starts and catches up on the spool, poison file included
    deadline = time.monotonic() + 30
    while not (spool.rejected_dir / poison).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    sending.submit(envelopes[1])
    while spool.count() and time.monotonic() < deadline:
        time.sleep(0.02)
    sending.close(timeout_s=10)

    assert sorted(json.loads(m["Body"])["id"] for m in receive_all(sqs, url)) == sorted(e["id"] for e in envelopes)
    assert [p.name for p in spool.rejected_dir.iterdir()] == [poison]
    assert spool.count() == 0
