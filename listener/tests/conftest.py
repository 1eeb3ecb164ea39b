from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from devkit.moto_env import MotoServer
from jsonschema import Draft202012Validator, FormatChecker

from dataset_forwarder_listener.envelope import UpstreamEvent, build
from dataset_forwarder_listener.sender import Sender, SqsTransport
from dataset_forwarder_listener.spool import Spool
from tests.fakes.sqs import StubSqs

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "events" / "envelope.schema.json"
QUEUE_URL = "https://sqs.us-east-1.amazonaws.com/123456789012/dataset-forwarder"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto server on 127.0.0.1 (devkit's, as the project's other tiers run it), shared by the tests that talk SQS
    over real HTTP."""
    with MotoServer() as server:
        yield server.endpoint


def receive_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every message on the queue (each received once, then deleted)."""
    messages: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
        ).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)
        sqs.delete_message_batch(
            QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        )


@pytest.fixture(scope="session")
def envelope_validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


@pytest.fixture
def make_envelope() -> Callable[..., dict[str, Any]]:
    """Envelopes for distinct events; ``second`` orders them in time."""

    def make(uri: str = "s3://bucket/bears", second: int = 0, key: str | None = None, **fields: Any) -> dict[str, Any]:
        event = UpstreamEvent(
            uri=uri,
            extra={"rows": 42},
            dag_id="producer",
            task_id="get_bear",
            run_id="manual__2026-11-23",
            map_index=-1,
            event_key=key or f"{uri}-{second}",
            timestamp=datetime(2026, 11, 23, 23, 0, second, 123456, tzinfo=timezone.utc),
            **fields,
        )
        envelope = build(event, deployment="team-a-prod", airflow_version="3.3.2")
        assert envelope is not None
        return envelope

    return make


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", max_files=100)


@pytest.fixture
def stub_sqs() -> StubSqs:
    return StubSqs()


@pytest.fixture
def sender(spool: Spool, stub_sqs: StubSqs) -> Sender:
    return Sender(SqsTransport(QUEUE_URL, client_factory=lambda: stub_sqs), spool, budget_s=2.0)
