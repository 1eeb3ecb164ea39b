"""Chaos: thousands of events, several targets, every kind of fault; nothing lost, nothing twice.

The path is the product's: moto SQS, the local event source (`Poller`, several pollers at once) and the real
handler in execution-environment processes, which get SIGKILLed now and then, mid-delivery or after delivering but
before acknowledging. The fake downstreams inject 5xx, 429 with Retry-After, answers slower than the timeout (the
POST lands after we gave up), connection resets, and one target's token is revoked halfway. Some messages are
sent twice (two SQS messages, one event) and some are handed to two invocations at once (one message, received
twice). When the queue has drained, the operator fixes the token and redrives the dead letters, as the README says.

Accounting, for every (event, target) that should be delivered: the downstream received it exactly once, or it
is in the DLQ with a reason — never both, never neither, both after the first drain (except dead letters marked
"unconfirmed": a retry could not check whether an ambiguous try had landed) and after the redrive.
Seeded (the stream, subscriptions and faults; kill timing depends on scheduling), 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import boto3
import pytest

from dataset_forwarder.dead_letters import UNCONFIRMED
from dataset_forwarder_cli.dead_letter_box import DeadLetterBox
from dataset_forwarder_cli.local.poller import PENDING_COUNTS, EventSourceConfig, FunctionConfig, Poller, ProcessInvoker
from devkit.airflow_api import FakeAirflow, Fault
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.moto_env import moto_server
from tests.integration.conftest import wait_for

SEED = int(os.environ.get("CHAOS_SEED", "20261125"))  # another seed: other faults, other timings
EVENTS = int(os.environ.get("CHAOS_EVENTS", "5000"))  # about 4.5 min here; `make chaos CHAOS_EVENTS=N` for others
DATASETS = [f"s3://chaos/ds-{i:02d}" for i in range(24)]
CONCURRENCY = 4  # pollers, and execution environments
BACKLOG = 300  # the feeder keeps at most this many messages on the queue (moto's receive is O(queue size))
FUNCTION_TIMEOUT_S = 10  # deliveries start only while 3.5 s (2 calls + margin) are left
ROOT = Path(__file__).resolve().parents[2]
CHAOS_FUNCTION_DIR = ROOT / "tests" / "fakes" / "chaos_function"


class DuplicatingPoller(Poller):
    """Now and then makes a batch's messages visible again right after receiving them: SQS's at-least-once
    delivery, one message handed to two invocations at the same time."""

    def __init__(self, *args: Any, rng: random.Random, rate: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rng = rng
        self._rate = rate
        self.redelivered: set[str] = set()

    def receive_batch(self, wait_s: int | None = None) -> list[dict[str, Any]]:
        messages = super().receive_batch(wait_s)
        for message in messages:
            if self._rng.random() < self._rate:
                self.sqs.change_message_visibility(
                    QueueUrl=self.source.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
                )
                self.redelivered.add(str(message["MessageId"]))
        return messages


@pytest.fixture
def dynamodb_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """DynamoDB on a moto server of its own, so SQS and the ledger do not share one process's GIL."""
    with moto_server(tmp_path / "moto-dynamodb.log") as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
        yield endpoint


@pytest.fixture
def chaos_stack(aws_env: str, dynamodb_endpoint: str) -> ForwarderStack:
    return ForwarderStack.create(boto3.session.Session(), visibility_timeout_s=FUNCTION_TIMEOUT_S)


def function_environment(stack: ForwarderStack) -> dict[str, str]:
    inherited = (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
    )
    return {
        **{key: os.environ[key] for key in inherited},
        **stack.env(),
        "MAX_ATTEMPTS": "5",
        "CONFIG_TTL_S": "60",
        "ALLOW_HTTP_TARGETS": "true",
        "RETRY_BASE_DELAY_S": "1",  # the first retry comes after a slow POST has landed
        "RETRY_MAX_DELAY_S": "3",
        "MAX_WORKERS": "32",
        "POWERTOOLS_METRICS_NAMESPACE": "DatasetForwarderChaos",
        "POWERTOOLS_LOG_LEVEL": os.environ.get("CHAOS_LOG_LEVEL", "ERROR"),  # thousands of expected retries
        "CHAOS_FUNCTION_CODE_DIR": str(ROOT / "functions" / "forwarder"),
        "CHAOS_SEED": str(SEED),
        "CHAOS_KILL_DURING": "0.015",
        "CHAOS_KILL_BEFORE_ACK": "0.015",
    }


REDRIVE_ROUNDS = 3  # the operator redrives until the dead-letter queue is empty


@pytest.mark.timeout(max(900, int(EVENTS * 0.4)))
def test_chaos_every_event_reaches_each_target_exactly_once_or_is_dead_lettered(
    chaos_stack: ForwarderStack, airflow: Callable[..., FakeAirflow], capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(SEED)
    stack = chaos_stack
    fakes = {
        "af2-basic": airflow("2", auth="basic", password="pw-2"),
        "af3-token": airflow("3", auth="airflow-token", password="pw-3"),
        "af3-bearer": airflow("3", auth="bearer", token="bearer-1"),
        "af3-open": airflow("3"),
        "af2-open": airflow("2"),
        "af3-revoked": airflow("3", auth="bearer", token="soon-revoked"),
    }
    subscriptions = {
        "af2-basic": DATASETS[:12],
        "af3-token": ["s3://chaos/ds-1*"],
        "af3-bearer": DATASETS[6:20],
        "af3-open": ["s3://chaos/*"],
        "af2-open": DATASETS[::3],
        "af3-revoked": DATASETS[10:],
    }
    auths = {
        "af2-basic": {"type": "basic", "username": "admin", "secret": stack.put_secret("af2-basic", "pw-2")},
        "af3-token": {"type": "airflow-token", "username": "admin", "secret": stack.put_secret("af3-token", "pw-3")},
        "af3-bearer": {"type": "bearer", "secret": stack.put_secret("af3-bearer", "bearer-1")},
        "af3-open": {"type": "none"},
        "af2-open": {"type": "none"},
        "af3-revoked": {"type": "bearer", "secret": stack.put_secret("af3-revoked", "soon-revoked")},
    }
    for name, fake in fakes.items():
        for uri in DATASETS:
            fake.add_dataset(uri)
        stack.put_target(
            name, {"url": fake.url, "datasets": subscriptions[name], "timeout_s": 0.25, "auth": auths[name]}
        )

    faults = Counter[str]()

    def inject_some() -> None:
        for fake in fakes.values():
            kind = rng.choice(["503", "429", "slow", "reset", "500", "none", "none"])
            times = rng.randint(1, 4)
            if kind == "503":
                fake.inject(Fault(status=503, method="POST"), times=times)
            elif kind == "500":
                fake.inject(Fault(status=500), times=times)
            elif kind == "429":
                fake.inject(Fault(status=429, retry_after="1", method="POST"), times=times)
            elif kind == "slow":
                fake.inject(Fault(delay_s=0.5, method="POST"), times=times)
            elif kind == "reset":
                fake.inject(Fault(reset=True), times=times)
            if kind != "none":
                faults[kind] += times

    events = [envelope(rng.choice(DATASETS), extra={"n": n}) for n in range(EVENTS)]
    duplicates = rng.sample(events, k=EVENTS // 50)
    bodies = [json.dumps(e) for e in events] + [json.dumps(e) for e in duplicates]
    rng.shuffle(bodies)
    faults["duplicate_sqs_message"] = len(duplicates)

    function = FunctionConfig(
        name="dataset-forwarder-chaos",
        handler="chaos_handler.lambda_handler",
        code_dir=CHAOS_FUNCTION_DIR,
        timeout_s=FUNCTION_TIMEOUT_S,
        environment=function_environment(stack),
    )
    source = EventSourceConfig.for_queue(
        stack.sqs, stack.queue_url, batch_size=10, maximum_concurrency=CONCURRENCY, wait_time_s=1
    )
    poller = DuplicatingPoller(
        stack.sqs,
        source,
        ProcessInvoker(function, size=CONCURRENCY),
        keep_invocations=None,
        poll_slice_s=1,
        rng=random.Random(SEED + 1),
        rate=0.01,
    )
    box = DeadLetterBox(stack.sqs, stack.dlq_url)

    def drained() -> bool:
        return poller.pending() == 0

    started = time.monotonic()
    poller.start()
    try:
        sent = 0
        for chunk_index, start in enumerate(range(0, len(bodies), 100)):
            wait_for(lambda: poller.pending() < BACKLOG, timeout_s=120, what="the backlog to shrink")
            chunk = bodies[start : start + 100]
            stack.send_many(chunk)
            sent += len(chunk)
            if chunk_index % 3 == 0:
                inject_some()
            if sent >= len(bodies) // 2 and "token_revoked_midway" not in faults:
                fakes["af3-revoked"].set_token("rotated-but-not-in-ssm")  # the token is revoked midway
                faults["token_revoked_midway"] = 1
        wait_for(drained, timeout_s=max(600, EVENTS * 0.25), what="the queue to drain")
        first_pass_s = time.monotonic() - started

        expected = {(e["id"], name) for e in events for name in fakes if _matches(subscriptions[name], e["uri"])}
        letters = box.peek()
        dead = {(json.loads(d.body)["id"], d.target) for d in letters}
        reasons = Counter(d.error for d in letters)
        delivered = _delivered(fakes)
        both = set(delivered) & dead
        unconfirmed = {(json.loads(d.body)["id"], d.target) for d in letters if d.attributes.get(UNCONFIRMED) == "true"}
        first = _summary(expected, delivered, dead)
        lost = expected - set(delivered) - dead
        queues = {name: _depth(stack.sqs, url) for name, url in (("events", stack.queue_url), ("dlq", stack.dlq_url))}

        # The operator puts the new token into SSM and redrives the dead letters, again while some come back
        # (a redrive of thousands at once can overload a target, and 'unconfirmed' letters are checked first).
        stack.put_secret("af3-revoked", "rotated-but-not-in-ssm")
        redriven = box.redrive(stack.queue_url)
        late = Counter(f"{d.target}/{d.error}" for d in redriven if (json.loads(d.body).get("id"), d.target) in lost)
        wait_for(drained, timeout_s=300, what="the redriven letters to drain")
        rounds = [len(redriven)]
        while len(rounds) < REDRIVE_ROUNDS and box.peek():
            rounds.append(len(box.redrive(stack.queue_url)))
            wait_for(drained, timeout_s=300, what="the redriven letters to drain")
    finally:
        poller.stop(timeout_s=30)
    elapsed = time.monotonic() - started

    final_letters = box.peek()
    final_dead = {(json.loads(d.body)["id"], d.target) for d in final_letters}
    final_delivered = _delivered(fakes)
    final = _summary(expected, final_delivered, final_dead)
    invocations = list(poller.invocations)
    killed = Counter(
        "killed_mid_delivery_or_before_ack"
        for i in invocations
        if i.batch_error and i.batch_error.startswith("Runtime.ExitError")
    )
    faults.update(killed)
    faults["same_message_received_twice"] = len(poller.redelivered)
    with capsys.disabled():
        print(
            f"\n[chaos] seed={SEED} events={EVENTS} (+{len(duplicates)} duplicate messages) targets={len(fakes)} "
            f"datasets={len(DATASETS)} pollers={CONCURRENCY} expected_pairs={len(expected)}"
            f"\n[chaos] first drain in {first_pass_s:.0f}s: {first} dead-letter reasons={dict(reasons)} "
            f"unconfirmed={len(unconfirmed)} queues={queues} lost_then_found_in_redrive={dict(late)}"
            f"\n[chaos] after fixing the token and redriving {' + '.join(map(str, rounds))}: {final} "
            f"lost={sorted(lost)[:10]}"
            f"\n[chaos] faults={dict(faults)} invocations={len(invocations)} in {elapsed:.0f}s"
        )
    assert first == {**first, "twice": 0, "unexpected": 0, "lost": 0}, first
    assert both <= unconfirmed, f"delivered and dead-lettered: {sorted(both - unconfirmed)[:5]}"
    assert reasons["auth"] > 0  # the revoked token produced reasoned dead letters
    assert all(d.attributes.get("detail") for d in letters)
    assert killed
    assert poller.redelivered
    assert final == {**final, "twice": 0, "unexpected": 0, "both": 0, "lost": 0}, final


def _depth(sqs: Any, url: str) -> dict[str, str]:
    return sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(PENDING_COUNTS))["Attributes"]  # type: ignore[no-any-return]


def _delivered(fakes: Mapping[str, FakeAirflow]) -> Counter[tuple[str, str]]:
    return Counter((ev.extra["dataset_forwarder"]["id"], name) for name, fake in fakes.items() for ev in fake.events)


def _summary(
    expected: set[tuple[str, str]], delivered: Counter[tuple[str, str]], dead: set[tuple[str, str]]
) -> dict[str, int]:
    return {
        "delivered": len(delivered),
        "dead_lettered": len(dead),
        "twice": sum(1 for n in delivered.values() if n > 1),
        "unexpected": len(set(delivered) - expected),
        "both": len(set(delivered) & dead),
        "lost": len(expected - set(delivered) - dead),
    }


def _matches(patterns: Sequence[str], uri: str) -> bool:
    from fnmatch import fnmatchcase

    return any(p == uri or fnmatchcase(uri, p) for p in patterns)
