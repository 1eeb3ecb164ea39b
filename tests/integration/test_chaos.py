"""Chaos: thousands of events, several targets, every kind of fault; nothing lost, nothing twice.

For every (event, target) that should be delivered, the downstream received it exactly once, or
it is in the DLQ with a reason — never both, never neither. Seeded, bounded, 127.0.0.1 only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from tests.fakes.airflow_api import FakeAirflow, Fault
from tests.fakes.aws import ForwarderStack
from tests.fakes.envelopes import envelope
from tests.fakes.lambda_sqs import LambdaSqsDriver

SEED = 20261125
EVENTS = int(os.environ.get("CHAOS_EVENTS", "1000"))  # `make chaos` runs 5,000
DATASETS = [f"s3://chaos/ds-{i:02d}" for i in range(24)]


@pytest.fixture
def chaos_stack(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwarderStack]:
    from dataset_forwarder import runtime

    created = ForwarderStack.create(boto3.session.Session(), visibility_timeout_s=2)
    for key, value in {
        **created.env(),
        "MAX_ATTEMPTS": "5",
        "CONFIG_TTL_S": "60",
        "ALLOW_HTTP_TARGETS": "true",
        "RETRY_BASE_DELAY_S": "1",  # the first retry comes after a slow POST has landed
        "RETRY_MAX_DELAY_S": "3",
        "MAX_WORKERS": "32",
        "POWERTOOLS_METRICS_NAMESPACE": "DatasetForwarderChaos",
    }.items():
        monkeypatch.setenv(key, value)
    # thousands of expected retries: keep only errors in the captured log
    quiet = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("dataset_forwarder")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    runtime.reset()
    yield created
    runtime.reset()
    for lg, level in zip(quiet, levels, strict=True):
        lg.setLevel(level)


def register(stack: ForwarderStack, fake: FakeAirflow, name: str, datasets: list[str], auth: dict[str, Any]) -> None:
    stack.put_target(name, {"url": fake.url, "datasets": datasets, "timeout_s": 0.25, "auth": auth})


@pytest.mark.timeout(1200)
def test_chaos_every_event_reaches_each_target_exactly_once_or_is_dead_lettered(
    chaos_stack: ForwarderStack, airflow: Callable[..., FakeAirflow], capsys: pytest.CaptureFixture[str]
) -> None:
    import app

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
        "af2-basic": {"type": "basic", "username": "admin", "secret": stack.put_secret("a", "pw-2")},
        "af3-token": {"type": "airflow-token", "username": "admin", "secret": stack.put_secret("b", "pw-3")},
        "af3-bearer": {"type": "bearer", "secret": stack.put_secret("c", "bearer-1")},
        "af3-open": {"type": "none"},
        "af2-open": {"type": "none"},
        "af3-revoked": {"type": "bearer", "secret": stack.put_secret("d", "soon-revoked")},
    }
    for name, fake in fakes.items():
        for uri in DATASETS:
            fake.add_dataset(uri)
        register(stack, fake, name, subscriptions[name], auths[name])

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

    crashes = Counter[str]()

    def crashing_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        response: dict[str, Any] = app.lambda_handler(event, context)
        if rng.random() < 0.03:
            crashes["handler_killed_before_ack"] += 1
            raise RuntimeError("simulated: the Lambda was killed after delivering, before acknowledging")
        return response

    driver = LambdaSqsDriver(stack.sqs, stack.queue_url, crashing_handler)
    started = time.monotonic()
    half = len(bodies) // 2
    for part, chunk in enumerate((bodies[:half], bodies[half:])):
        inject_some()
        stack.send_many(chunk)
        if part == 1:
            fakes["af3-revoked"].set_token("rotated-but-not-in-ssm")  # the token is revoked midway
            faults["token_revoked_midway"] = 1
        for _ in range(6):
            inject_some()
            for _ in range(len(chunk) // 60):
                if driver.poll() is None:
                    break
    driver.drain(timeout_s=900)
    elapsed = time.monotonic() - started
    faults.update(crashes)

    expected = {
        (e["id"], name) for e in events for name, fake in fakes.items() if _matches(subscriptions[name], e["uri"])
    }
    delivered = Counter(
        (ev.extra["dataset_forwarder"]["id"], name) for name, fake in fakes.items() for ev in fake.events
    )
    letters = stack.dead_letters(expected=0, timeout_s=2)
    dead = {(json.loads(d.body)["id"], d.attributes["target"]) for d in letters}
    reasons = Counter(d.attributes["error"] for d in letters)

    twice = {pair: n for pair, n in delivered.items() if n > 1}
    unexpected = set(delivered) - expected
    both = set(delivered) & dead
    neither = expected - set(delivered) - dead
    with capsys.disabled():
        print(
            f"\n[chaos] events={EVENTS} (+{len(duplicates)} duplicate messages) targets={len(fakes)} "
            f"datasets={len(DATASETS)} expected_pairs={len(expected)} delivered={len(delivered)} "
            f"dead_lettered={len(dead)} {dict(reasons)} duplicates={len(twice)} lost={len(neither)} "
            f"both={len(both)} faults={dict(faults)} invocations={len(driver.invocations)} in {elapsed:.0f}s"
        )
    assert not twice, f"delivered more than once: {list(twice)[:5]}"
    assert not unexpected, f"delivered where nothing should go: {list(unexpected)[:5]}"
    assert not both, f"delivered and dead-lettered: {list(both)[:5]}"
    assert not neither, f"lost: {list(neither)[:5]}"
    assert reasons["auth"] > 0  # the revoked token produced reasoned dead letters
    assert all(d.attributes.get("detail") for d in letters)


def _matches(patterns: list[str], uri: str) -> bool:
    from fnmatch import fnmatchcase

    return any(p == uri or fnmatchcase(uri, p) for p in patterns)
