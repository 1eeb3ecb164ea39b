"""Partition keys (Airflow 3.2+): in the request where the downstream takes one, else only in the lineage block."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from dataset_forwarder.envelope import parse_envelope
from dataset_forwarder.targets import Target
from dataset_forwarder.transport import Transport
from dataset_forwarder.ways_in.https import HttpsWayIn
from devkit.airflow_api import FakeAirflow, Fault
from devkit.downstream import AirflowClient
from devkit.envelopes import envelope

ORDERS = "s3://lake/orders"


class NoSecrets:
    def get(self, name: str, *, fresh: bool = False) -> str:
        raise AssertionError("no secret is needed")

    def known_values(self) -> list[str]:
        return []


@pytest.fixture
def client() -> Iterator[AirflowClient]:
    with Transport(pool_size=4, max_hosts=8) as http:
        yield AirflowClient(http, NoSecrets())


def partitioned(event_id: str = "e1", key: str | None = "2026-12-06") -> str:
    fields = {} if key is None else {"partition_key": key}
    return json.dumps(envelope(ORDERS, event_id=event_id, extra={"rows": 3}, trail=["team-a"], **fields))


def target(url: str, airflow: str = "3") -> Target:
    return Target(name="team-b", way_in=HttpsWayIn(url), airflow=airflow, datasets=(ORDERS,))


def test_airflow_3_2_or_later_gets_the_partition_key_in_the_request(client: AirflowClient) -> None:
    with FakeAirflow("3", datasets=[ORDERS], release="3.2.2") as fake:
        client.downstreams.get(target(fake.url)).deliver(parse_envelope(partitioned()))

        [event] = fake.events
        assert event.partition_key == "2026-12-06"
        assert event.extra["dataset_forwarder"]["partition_key"] == "2026-12-06"


def test_airflow_3_1_gets_the_key_only_in_the_lineage_block_and_the_log_says_so_once(
    client: AirflowClient, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeAirflow("3", datasets=[ORDERS], release="3.1.8") as fake, caplog.at_level(logging.WARNING):
        downstream = client.downstreams.get(target(fake.url))
        downstream.deliver(parse_envelope(partitioned("e1")))
        downstream.deliver(parse_envelope(partitioned("e2")))

        assert [e.partition_key for e in fake.events] == [None, None]
        assert [e.extra["dataset_forwarder"]["partition_key"] for e in fake.events] == ["2026-12-06"] * 2
        assert fake.count("POST", "/api/v2/assets/events") == 2  # never a 422 first
        assert fake.count("GET", "/api/v2/version") == 1
        warnings = [r for r in caplog.records if "partition keys" in r.getMessage()]
        assert len(warnings) == 1


def test_a_refusal_naming_the_partition_key_is_sent_once_more_without_it_and_remembered(
    client: AirflowClient,
) -> None:
    with FakeAirflow("3", datasets=[ORDERS], release="3.3.2") as fake:
        fake.inject(Fault(status=422, method="POST", body='{"detail": "partition_key: not a partitioned Dag"}'))
        downstream = client.downstreams.get(target(fake.url))

        posted = downstream.deliver(parse_envelope(partitioned("e1")))
        downstream.deliver(parse_envelope(partitioned("e2")))

        assert posted.status == 200
        assert [e.partition_key for e in fake.events] == [None, None]
        assert fake.count("POST", "/api/v2/assets/events") == 3  # 422, then without the key; then without at once


def test_an_event_without_a_partition_key_never_asks_the_version(client: AirflowClient) -> None:
    with FakeAirflow("3", datasets=[ORDERS], release="3.1.8") as fake:
        client.downstreams.get(target(fake.url)).deliver(parse_envelope(partitioned(key=None)))

        [event] = fake.events
        assert "partition_key" not in event.extra["dataset_forwarder"]
        assert fake.count("GET", "/api/v2/version") == 0


def test_airflow_2_keeps_the_key_in_the_lineage_block(client: AirflowClient) -> None:
    with FakeAirflow("2", datasets=[ORDERS]) as fake:
        client.downstreams.get(target(fake.url, airflow="2")).deliver(parse_envelope(partitioned()))

        [event] = fake.events
        assert event.extra["dataset_forwarder"]["partition_key"] == "2026-12-06"
