"""Crash safety with real processes: an upstream process SIGKILLed mid-send or during a queue outage
loses no spooled event, and the process that replaces it sends every one of them, once.

The upstream processes run ``tests/crash_child.py``: the real plugin against the fake Airflow,
configured through the environment like a deployment, its hooks called by pluggy. SQS is moto
server behind ``tests/fakes/sqs_proxy.py``, which decides per request whether a send passes, hangs
before it reaches SQS, or reaches SQS without the sender ever hearing back. Every wait is a poll
of an observable condition (the spool directory, the proxy's requests, the child's output) with a
deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
from devkit.moto_env import aws_session, fake_aws_env

from dataset_forwarder_listener.spool import INFLIGHT, SUFFIX
from tests.conftest import receive_all
from tests.fakes.sqs_proxy import Gate, SqsProxy

pytestmark = pytest.mark.integration

LISTENER_DIR = Path(__file__).resolve().parents[1]
REGION = "us-east-1"
DEADLINE_S = 60.0  # only a failing test waits this long; a loaded 2-core machine can be slow
PATIENT_S = 60.0  # the largest send budget: a send held by the proxy stays in flight until the kill
QUICK_S = 0.5  # during an outage: each send gives up fast, so the child has tried before it is killed


@dataclass
class Upstream:
    """One upstream Airflow process (``tests/crash_child.py``) and its output files."""

    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def emitted(self) -> bool:
        """Its last hook call has returned."""
        return "emitted" in self.stdout.read_text(encoding="utf-8")

    def log(self) -> str:
        return self.stderr.read_text(encoding="utf-8")

    def failed_a_send(self) -> bool:
        """Its log says a send (of a new event, or of spooled ones) failed and the events stay spooled."""
        return any(line in self.log() for line in ("stays spooled", "Flushing the spool stopped"))

    def kill(self) -> None:
        self.process.kill()  # SIGKILL: no atexit, no finally, no exit-time drain
        self.process.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        """Let it exit the normal way (its stdin closes), as Airflow stops a process."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=DEADLINE_S) == 0, self.log()


StartUpstream = Callable[..., Upstream]


@pytest.fixture
def sqs(moto_endpoint: str, request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """A client straight to moto (never through the proxy) and a fresh standard queue."""
    client = aws_session(REGION).client("sqs", endpoint_url=moto_endpoint)
    url = client.create_queue(QueueName=f"crash-{request.node.name[:60]}".replace("[", "-").replace("]", ""))[
        "QueueUrl"
    ]
    yield client, url
    client.delete_queue(QueueUrl=url)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def start_upstream(tmp_path: Path, sqs: tuple[Any, str], spool_dir: Path) -> Iterator[StartUpstream]:
    """Start upstream processes sharing one spool; whatever still runs at the end is SIGKILLed."""
    started: list[Upstream] = []

    def start(airflow: str, first: int, count: int, *, endpoint: str, send_timeout_s: float) -> Upstream:
        name = f"upstream-{len(started)}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DATASET_FORWARDER_"))}
        env.update(fake_aws_env(endpoint, REGION))
        env.update(
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            DATASET_FORWARDER_QUEUE_URL=sqs[1],
            DATASET_FORWARDER_DEPLOYMENT="team-a-prod",
            DATASET_FORWARDER_SPOOL_DIR=str(spool_dir),
            DATASET_FORWARDER_SEND_TIMEOUT_S=str(send_timeout_s),
            PYTHONPATH=os.pathsep.join([str(LISTENER_DIR / "src"), str(LISTENER_DIR)]),
        )
        stdout, stderr = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.crash_child", airflow, str(first), str(count)],
                cwd=LISTENER_DIR,
                env=env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
            )
        upstream = Upstream(process, stdout, stderr)
        started.append(upstream)
        return upstream

    try:
        yield start
    finally:
        for upstream in started:
            if upstream.process.poll() is None:
                upstream.kill()


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[SqsProxy]:
    """The queue endpoint the upstream processes use; starts closed (connections refused) until ``open``."""
    endpoint = SqsProxy(moto_endpoint, listening=False)
    try:
        yield endpoint
    finally:
        endpoint.close()


def wait_for(condition: Callable[[], bool], what: str, spool_dir: Path, timeout_s: float = DEADLINE_S) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout_s``, saying what the spool held then."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            waiting, claimed = spool_state(spool_dir)
            pytest.fail(
                f"timed out after {timeout_s:.0f}s waiting for {what} (spool: {waiting} waiting, {claimed} claimed)"
            )
        time.sleep(0.02)


def spool_state(spool_dir: Path) -> tuple[int, int]:
    """(waiting, claimed) files in the spool."""

    def spooled(directory: Path) -> int:
        if not directory.is_dir():
            return 0
        return sum(1 for p in directory.glob(f"*{SUFFIX}") if not p.name.startswith("."))

    return spooled(spool_dir), spooled(spool_dir / INFLIGHT)


def take_queued(sqs: tuple[Any, str]) -> list[dict[str, Any]]:
    """The envelopes on the queue now (received and deleted)."""
    return [json.loads(message["Body"]) for message in receive_all(*sqs)]


def copies(envelopes: list[dict[str, Any]]) -> Counter[int]:
    """How many times each event (by its number, ``extra.n``) is there."""
    return Counter(envelope["extra"]["n"] for envelope in envelopes)


def ids(envelopes: list[dict[str, Any]]) -> set[str]:
    return {envelope["id"] for envelope in envelopes}


def restart_and_drain(start_upstream: StartUpstream, airflow: str, first: int, endpoint: str, spool_dir: Path) -> None:
    """A new process on the same spool emits one new event (what makes it look at its spool), sends
    everything, and exits normally."""
    restarted = start_upstream(airflow, first, 1, endpoint=endpoint, send_timeout_s=PATIENT_S)
    wait_for(
        lambda: restarted.emitted() and spool_state(spool_dir) == (0, 0),
        "the restarted process to empty the spool",
        spool_dir,
    )
    restarted.stop()
    assert not (spool_dir / "rejected").exists()


def settled_and_one_request_stuck(gate: Gate, proxy: SqsProxy, spool_dir: Path, events: int, requests: int = 1) -> bool:
    """``requests`` sends (batches) are stuck at ``gate``, their events claimed; what passed is off
    the spool and the rest is waiting."""
    passed, stuck = len(proxy.ids(Gate.PASS)), len(proxy.ids(gate))
    return proxy.count(gate) == requests and spool_state(spool_dir) == (events - passed - stuck, stuck)


def kill_with_one_send_stuck(
    start_upstream: StartUpstream,
    proxy: SqsProxy,
    spool_dir: Path,
    *,
    events: int,
    sends_before_kill: int,
    gate: Gate,
    what: str,
) -> None:
    """An Airflow 3 upstream emits ``events`` events; its first ``sends_before_kill`` sends pass, the next one is
    stuck at ``gate``; once that is so (``what``), it is killed."""
    proxy.open()
    proxy.set_gate(gate, after=sends_before_kill)
    upstream = start_upstream("3", 0, events, endpoint=proxy.url, send_timeout_s=PATIENT_S)
    wait_for(
        lambda: upstream.emitted() and settled_and_one_request_stuck(gate, proxy, spool_dir, events), what, spool_dir
    )
    upstream.kill()


def test_airflow_3_killed_while_a_send_hangs_before_sqs_restart_sends_every_event_exactly_once(
    proxy: SqsProxy, sqs: tuple[Any, str], spool_dir: Path, start_upstream: StartUpstream
) -> None:
    """Killed with two sends (batches) of 50 events done, the third in flight (it never reached SQS)
    and the rest waiting: after a restart all 51 events are on the queue exactly once, the
    interrupted ones included.

    "None twice" holds strictly here because the kill cut the in-flight request before SQS had
    it; see the next tests for a send that landed right before the kill."""
    events = 50
    kill_with_one_send_stuck(
        start_upstream, proxy, spool_dir, events=events, sends_before_kill=2, gate=Gate.HOLD,
        what="two sends done and settled, the third in flight",
    )  # fmt: skip
    interrupted = proxy.ids(Gate.HOLD)
    before = take_queued(sqs)
    assert len(before) == len(proxy.ids(Gate.PASS)) > 0
    assert not ids(before) & set(interrupted)
    proxy.set_gate(Gate.PASS)
    restart_and_drain(start_upstream, "3", events, proxy.url, spool_dir)

    after = take_queued(sqs)
    assert copies(before + after) == Counter(range(events + 1))
    assert set(interrupted) <= ids(after)


def test_airflow_3_two_api_server_workers_killed_mid_send_restart_sends_every_event_exactly_once(
    proxy: SqsProxy, sqs: tuple[Any, str], spool_dir: Path, start_upstream: StartUpstream
) -> None:
    """Two api-server workers share one spool (20 events each) and are killed together, each with a
    send in flight (neither reached SQS): a restarted worker releases both dead claims and all 41
    events are on the queue exactly once."""
    per_worker = 20
    proxy.open()
    proxy.set_gate(Gate.HOLD)
    workers = [
        start_upstream("3", first, per_worker, endpoint=proxy.url, send_timeout_s=PATIENT_S)
        for first in (0, per_worker)
    ]

    wait_for(
        lambda: (
            all(worker.emitted() for worker in workers)
            and settled_and_one_request_stuck(Gate.HOLD, proxy, spool_dir, 2 * per_worker, requests=2)
        ),
        "one send in flight in each worker",
        spool_dir,
    )
    for worker in workers:
        worker.kill()
    assert take_queued(sqs) == []
    proxy.set_gate(Gate.PASS)
    restart_and_drain(start_upstream, "3", 2 * per_worker, proxy.url, spool_dir)

    assert copies(take_queued(sqs)) == Counter(range(2 * per_worker + 1))


def test_airflow_3_killed_after_sqs_took_a_send_but_before_the_answer_resends_only_that_one(
    proxy: SqsProxy, sqs: tuple[Any, str], spool_dir: Path, start_upstream: StartUpstream
) -> None:
    """The one unavoidable kind of duplicate, and nothing more: SQS accepted the second send (a
    batch), the process died before it heard so, and the batch's spool files still say "not sent".
    A standard queue has no send-side deduplication, so after the restart the events of that one
    batch are on the queue twice, with the same envelope ids and bodies (the forwarder delivers
    each (id, target) once); every other event exactly once."""
    events = 20
    kill_with_one_send_stuck(
        start_upstream, proxy, spool_dir, events=events, sends_before_kill=1, gate=Gate.SWALLOW,
        what="one send done and settled, the second on the queue but unanswered",
    )  # fmt: skip
    landed = proxy.ids(Gate.SWALLOW)
    before = take_queued(sqs)
    assert len(before) == len(proxy.ids(Gate.PASS)) + len(landed)
    assert set(landed) <= ids(before)
    proxy.set_gate(Gate.PASS)
    restart_and_drain(start_upstream, "3", events, proxy.url, spool_dir)

    everything = before + take_queued(sqs)
    seen = copies(everything)
    assert set(seen) == set(range(events + 1))
    assert sorted(seen.values()) == [1] * (events + 1 - len(landed)) + [2] * len(landed)
    for event_id in landed:
        first_copy, second_copy = [envelope for envelope in everything if envelope["id"] == event_id]
        assert first_copy == second_copy  # the same envelope, id included: the forwarder delivers it once


@pytest.mark.parametrize("outage", ["refused", "hanging"])
def test_airflow_3_killed_during_a_queue_outage_restart_sends_every_spooled_event_exactly_once(
    outage: str, proxy: SqsProxy, sqs: tuple[Any, str], spool_dir: Path, start_upstream: StartUpstream
) -> None:
    """While the queue endpoint refuses connections, or accepts them and never answers, 20 events
    are spooled and at least one send fails; then the process is killed. Once the queue is back, a
    restarted process sends all 21 events exactly once. (The hanging sends never reached SQS.)"""
    events = 20
    if outage == "hanging":
        proxy.open()
        proxy.set_gate(Gate.HOLD)
    upstream = start_upstream("3", 0, events, endpoint=proxy.url, send_timeout_s=QUICK_S)

    wait_for(
        lambda: (
            upstream.emitted()
            and upstream.failed_a_send()
            and sum(spool_state(spool_dir)) == events
            and (outage == "refused" or len(proxy.ids(Gate.HOLD)) > 0)
        ),
        "every event spooled and a send failed",
        spool_dir,
    )
    upstream.kill()
    assert take_queued(sqs) == []
    if outage == "refused":
        assert proxy.requests == []
        proxy.open()
    proxy.set_gate(Gate.PASS)
    restart_and_drain(start_upstream, "3", events, proxy.url, spool_dir)

    assert copies(take_queued(sqs)) == Counter(range(events + 1))


def test_airflow_2_task_killed_while_a_send_hangs_next_try_sends_every_event_exactly_once(
    proxy: SqsProxy, sqs: tuple[Any, str], spool_dir: Path, start_upstream: StartUpstream
) -> None:
    """Airflow 2 sends in the task's process, inside the hook: a try with 12 events is killed with 3
    sent and the 4th in flight (never reached SQS). The next try on that machine sends its own event
    and then catches up on up to 10 older ones: all 13 are on the queue exactly once."""
    events, sent_before_kill = 12, 3
    proxy.open()
    proxy.set_gate(Gate.HOLD, after=sent_before_kill)
    upstream = start_upstream("2", 0, events, endpoint=proxy.url, send_timeout_s=PATIENT_S)

    wait_for(
        lambda: len(proxy.ids(Gate.HOLD)) == 1 and spool_state(spool_dir) == (events - sent_before_kill - 1, 1),
        "3 sends done and settled, the 4th in flight",
        spool_dir,
    )
    upstream.kill()
    assert not upstream.emitted()  # killed inside the hook
    before = take_queued(sqs)
    assert len(before) == sent_before_kill
    proxy.set_gate(Gate.PASS)
    restart_and_drain(start_upstream, "2", events, proxy.url, spool_dir)

    assert copies(before + take_queued(sqs)) == Counter(range(events + 1))
