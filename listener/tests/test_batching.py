"""Batching, against moto server's SQS behind the proxy of ``tests/fakes/sqs_proxy.py``. Both the adaptive
strategy (the default) and natural batching send a lone event as soon as no send is in flight, and the events
submitted while one is in flight go together right after it; the adaptive one also holds a back-to-back burst
until it pauses and sends it in full batches of ten.

The proxy holds a request (``Gate.WAIT``) for as long as the test needs, so "while one is in flight"
is a state the test observes, not a timing it hopes for.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any, Callable

import boto3
import pytest
from devkit.moto_env import use_moto

from dataset_forwarder_listener.sender import BackgroundSender, Sender, SqsTransport
from tests.conftest import receive_all
from tests.fakes.sqs_proxy import Gate, SqsProxy

pytestmark = pytest.mark.integration

REGION = "us-east-1"
DEADLINE_S = 20.0  # only a failing test waits this long
NEVER_S = 600.0  # were the sender waiting for a pause in submits, it would wait this long


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[SqsProxy]:
    endpoint = SqsProxy(moto_endpoint)
    try:
        yield endpoint
    finally:
        endpoint.release()
        endpoint.close()


@pytest.fixture
def queue(monkeypatch: pytest.MonkeyPatch, moto_endpoint: str, proxy: SqsProxy, request: Any) -> Iterator[str]:
    """A fresh queue; the listener's boto3 reaches it through the proxy."""
    use_moto(monkeypatch, proxy.url)
    direct = boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint)
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[-60:]  # SQS: letters, digits, - and _; 80 at most
    url = direct.create_queue(QueueName=f"batching-{name}")["QueueUrl"]
    yield url
    direct.delete_queue(QueueUrl=url)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {DEADLINE_S:.0f}s waiting for {what}")
        time.sleep(0.01)


def started_sender(
    spool: Any,
    url: str,
    proxy: SqsProxy,
    make_envelope: Callable[..., dict[str, Any]],
    *,
    batching: str = "adaptive",
    burst_pause_s: float = NEVER_S,
) -> Any:
    """A background sender with its client built and its start-up catch-up done (one event sent)."""
    sending = BackgroundSender(
        Sender(SqsTransport(url), spool, budget_s=60.0),
        batching=batching,
        pause_s=NEVER_S,
        burst_pause_s=burst_pause_s,
        max_wait_s=NEVER_S,
        close_timeout_s=10.0,
    )
    sending.submit(make_envelope(uri="s3://bucket/warm-up"))
    wait_for(lambda: proxy.count(Gate.PASS) == 1 and spool.count() == 0, "the first event to be sent")
    return sending


@pytest.mark.parametrize("batching", ["adaptive", "natural"])
def test_a_lone_event_goes_at_once_and_those_submitted_meanwhile_go_together(
    *,
    queue: str,
    proxy: SqsProxy,
    spool: Any,
    make_envelope: Callable[..., dict[str, Any]],
    moto_endpoint: str,
    batching: str,
) -> None:
    # Every pause the sender could wait for (pause_s, burst_pause_s, max_wait_s) is NEVER_S: an event that
    # waited for one would never be in flight.
    sending = started_sender(spool, queue, proxy, make_envelope, batching=batching)
    proxy.set_gate(Gate.WAIT)
    first = make_envelope(second=1)

    sending.submit(first)  # nothing in flight: it goes at once, alone, with no pause in submits awaited
    wait_for(lambda: proxy.ids(Gate.WAIT) == [first["id"]], "the first event to be in flight")
    second, third = make_envelope(second=2), make_envelope(second=3)
    sending.submit(second)  # while the first is in flight: they wait for it, then go together
    sending.submit(third)
    proxy.set_gate(Gate.PASS)
    proxy.release()

    wait_for(lambda: spool.count() == 0 and len(proxy.requests) == 3, "everything to be sent")
    assert [request.event_ids for request in proxy.requests[1:]] == [(first["id"],), (second["id"], third["id"])]
    direct = boto3.client("sqs", region_name=REGION, endpoint_url=moto_endpoint)
    on_queue = {json.loads(message["Body"])["id"] for message in receive_all(direct, queue)}
    assert {first["id"], second["id"], third["id"]} <= on_queue
    assert len(on_queue) == 4
    sending.close()


def test_a_lone_event_is_not_taken_for_a_burst_with_one_the_sender_takes_up_late(
    queue: str, proxy: SqsProxy, spool: Any, make_envelope: Callable[..., dict[str, Any]]
) -> None:
    # Adaptive. The start-up catch-up sends the earlier event from the spool, so its queue entry waits until the
    # send is over; a lone event submitted meanwhile (well apart from the earlier one) is in the queue with it
    # when the sender takes that entry up, within the lone window of the lone event. Two queued entries, but
    # not back to back: no burst, and the lone event is not held (a held one waits NEVER_S).
    lone_window_s = 0.2  # wide, so that the sender takes the earlier entry up within it
    sending = BackgroundSender(
        Sender(SqsTransport(queue), spool, budget_s=60.0),
        lone_window_s=lone_window_s,
        burst_pause_s=NEVER_S,
        max_wait_s=NEVER_S,
        close_timeout_s=10.0,
    )
    proxy.set_gate(Gate.WAIT)
    earlier = make_envelope(second=1)
    sending.submit(earlier)
    submitted = time.monotonic()
    wait_for(lambda: proxy.ids(Gate.WAIT) == [earlier["id"]], "the earlier event to be in flight")
    wait_for(lambda: time.monotonic() - submitted > lone_window_s, "the lone window to pass")  # the input's gap

    lone = make_envelope(second=2)
    sending.submit(lone)
    proxy.set_gate(Gate.PASS)
    proxy.release()

    wait_for(lambda: spool.count() == 0 and len(proxy.requests) == 2, "the lone event to be sent")
    assert [request.event_ids for request in proxy.requests] == [(earlier["id"],), (lone["id"],)]
    sending.close()


@pytest.mark.parametrize("batching", ["adaptive", "natural"])
def test_a_burst_during_a_send_goes_in_full_batches(
    queue: str, proxy: SqsProxy, spool: Any, make_envelope: Callable[..., dict[str, Any]], batching: str
) -> None:
    sending = started_sender(spool, queue, proxy, make_envelope, batching=batching)
    proxy.set_gate(Gate.WAIT)
    first = make_envelope(second=0, key="first")
    sending.submit(first)
    wait_for(lambda: proxy.ids(Gate.WAIT) == [first["id"]], "the first event to be in flight")

    burst = [make_envelope(second=n % 60, key=f"burst-{n}") for n in range(25)]
    for envelope in burst:
        sending.submit(envelope)
    proxy.set_gate(Gate.PASS)
    proxy.release()

    wait_for(lambda: spool.count() == 0 and len(proxy.requests) == 5, "everything to be sent")
    assert [len(request.event_ids) for request in proxy.requests[1:]] == [1, 10, 10, 5]
    assert [i for request in proxy.requests[2:] for i in request.event_ids] == [e["id"] for e in burst]
    sending.close()


def test_a_back_to_back_burst_is_held_until_it_pauses_then_goes_in_full_batches(
    queue: str, proxy: SqsProxy, spool: Any, make_envelope: Callable[..., dict[str, Any]]
) -> None:
    # Adaptive: nothing in flight, and the burst's first event is not sent alone (natural batching would:
    # 1, then 10, 10, 4) but held with the rest until the submits pause. After the warm-up, any submit that
    # follows another counts as the same burst (the lone window is NEVER_S), so how fast this test's loop runs
    # cannot split it; the burst ends after a 1 s pause in submits.
    sending = started_sender(spool, queue, proxy, make_envelope, burst_pause_s=1.0)
    sending.lone_window_s = NEVER_S

    burst = [make_envelope(second=n % 60, key=f"burst-{n}") for n in range(25)]
    for envelope in burst:
        sending.submit(envelope)

    wait_for(lambda: spool.count() == 0, "everything to be sent")  # a request is recorded before its answer
    assert [len(request.event_ids) for request in proxy.requests[1:]] == [10, 10, 5]
    assert [i for request in proxy.requests[1:] for i in request.event_ids] == [e["id"] for e in burst]
    sending.close()


def test_a_lone_event_after_a_burst_goes_at_once(
    queue: str, proxy: SqsProxy, spool: Any, make_envelope: Callable[..., dict[str, Any]]
) -> None:
    # Adaptive: once a burst is sent, the next event that comes alone is not held (burst pause NEVER_S).
    sending = started_sender(spool, queue, proxy, make_envelope, burst_pause_s=0.2)
    for n in range(12):
        sending.submit(make_envelope(second=n, key=f"burst-{n}"))
    wait_for(lambda: spool.count() == 0, "the burst to be sent")
    sending.burst_pause_s = NEVER_S
    proxy.set_gate(Gate.WAIT)

    lone = make_envelope(second=30, key="lone")
    sending.submit(lone)

    wait_for(lambda: proxy.ids(Gate.WAIT) == [lone["id"]], "the lone event to be in flight")
    proxy.set_gate(Gate.PASS)
    proxy.release()
    wait_for(lambda: spool.count() == 0, "the lone event to be sent")
    sending.close()
