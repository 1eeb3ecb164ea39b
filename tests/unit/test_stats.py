"""Stats: thread-safe counters and latencies, flushed as CloudWatch EMF documents per target."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from dataset_forwarder.stats import (
    DEAD_LETTERED,
    DELIVERED,
    INVALID_TARGET_CONFIG,
    LATENCY,
    NAMESPACE,
    UNROUTED,
    Stats,
)


@pytest.fixture(autouse=True)
def plain_powertools_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """EMF output must not depend on Powertools settings of the machine running the tests."""
    for name in (
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_DISABLED",
        "POWERTOOLS_DEV",
        "POWERTOOLS_METRICS_FUNCTION_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


def emf_documents(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def values(document: dict[str, Any], metric: str) -> list[float]:
    value = document[metric]
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


def dimensions(document: dict[str, Any]) -> list[list[str]]:
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    return list(directive["Dimensions"])


def test_counts_add_up_per_target_and_metric() -> None:
    stats = Stats()
    stats.count(DELIVERED, "team-b")
    stats.count(DELIVERED, "team-b", 2)
    stats.count(DELIVERED, "team-c")
    stats.count(UNROUTED)

    counts, latencies = stats.snapshot()

    assert counts == {("team-b", DELIVERED): 3, ("team-c", DELIVERED): 1, (None, UNROUTED): 1}
    assert latencies == {}


def test_latencies_are_kept_per_target_rounded_to_microseconds() -> None:
    stats = Stats()
    stats.latency("team-b", 12.3456789)
    stats.latency("team-b", 3.0)

    _, latencies = stats.snapshot()

    assert latencies == {"team-b": [12.346, 3.0]}


def test_snapshot_is_a_copy_and_does_not_reset() -> None:
    stats = Stats()
    stats.count(DELIVERED, "team-b")
    stats.latency("team-b", 1.0)

    counts, latencies = stats.snapshot()
    counts[("team-b", DELIVERED)] = 99
    latencies["team-b"].append(2.0)

    assert stats.snapshot() == ({("team-b", DELIVERED): 1}, {"team-b": [1.0]})


def test_counting_from_many_threads_loses_nothing() -> None:
    stats = Stats()
    threads_n, per_thread = 8, 2000
    barrier = threading.Barrier(threads_n)

    def work(index: int) -> None:
        barrier.wait()
        for _ in range(per_thread):
            stats.count(DELIVERED, "team-b")
            stats.count(DELIVERED, f"t{index}")
            stats.latency("team-b", 1.0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    counts, latencies = stats.snapshot()
    assert counts[("team-b", DELIVERED)] == threads_n * per_thread
    assert all(counts[(f"t{i}", DELIVERED)] == per_thread for i in range(threads_n))
    assert len(latencies["team-b"]) == threads_n * per_thread


def test_drain_returns_everything_and_empties() -> None:
    stats = Stats()
    stats.count(DEAD_LETTERED, "team-b")
    stats.latency("team-b", 5.0)

    assert stats.drain() == ({("team-b", DEAD_LETTERED): 1}, {"team-b": [5.0]})
    assert stats.drain() == ({}, {})
    assert stats.snapshot() == ({}, {})


def test_flush_prints_one_emf_document_per_target_and_one_without_dimension(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = Stats()
    stats.count(DELIVERED, "team-b", 2)
    stats.latency("team-b", 12.5)
    stats.latency("team-b", 7.25)
    stats.count(DEAD_LETTERED, "team-c")
    stats.count(INVALID_TARGET_CONFIG, "broken-one")
    stats.count(UNROUTED, value=3)

    stats.flush()

    documents = emf_documents(capsys.readouterr().out)
    by_target = {document.get("target"): document for document in documents}
    assert len(documents) == 4
    assert set(by_target) == {None, "team-b", "team-c", "broken-one"}

    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == NAMESPACE == "DatasetForwarder"

    untargeted = by_target[None]
    assert dimensions(untargeted) == [[]]
    assert values(untargeted, UNROUTED) == [3.0]
    assert DELIVERED not in untargeted

    team_b = by_target["team-b"]
    assert dimensions(team_b) == [["target"]]
    assert values(team_b, DELIVERED) == [2.0]
    assert sorted(values(team_b, LATENCY)) == [7.25, 12.5]
    (directive,) = team_b["_aws"]["CloudWatchMetrics"]
    units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
    assert units == {DELIVERED: "Count", LATENCY: "Milliseconds"}

    team_c = by_target["team-c"]
    assert dimensions(team_c) == [["target"]]
    assert values(team_c, DEAD_LETTERED) == [1.0]
    assert DELIVERED not in team_c
    assert values(by_target["broken-one"], INVALID_TARGET_CONFIG) == [1.0]


def test_flush_empties_the_stats(capsys: pytest.CaptureFixture[str]) -> None:
    stats = Stats()
    stats.count(DELIVERED, "team-b")
    stats.flush()
    capsys.readouterr()

    stats.flush()

    assert capsys.readouterr().out == ""
    assert stats.snapshot() == ({}, {})


def test_flush_of_latency_only_target_prints_its_document(capsys: pytest.CaptureFixture[str]) -> None:
    stats = Stats()
    stats.latency("team-b", 4.0)

    stats.flush()

    (document,) = emf_documents(capsys.readouterr().out)
    assert document["target"] == "team-b"
    assert values(document, LATENCY) == [4.0]


def test_flush_keeps_every_latency_beyond_the_emf_limit_of_100_values(capsys: pytest.CaptureFixture[str]) -> None:
    stats = Stats()
    for index in range(150):
        stats.latency("team-b", float(index))
    stats.count(DELIVERED, "team-b", 150)

    stats.flush()

    documents = emf_documents(capsys.readouterr().out)
    assert all(document["target"] == "team-b" for document in documents)
    latencies = [v for document in documents if LATENCY in document for v in values(document, LATENCY)]
    assert sorted(latencies) == [float(index) for index in range(150)]
    assert sum(values(document, DELIVERED)[0] for document in documents if DELIVERED in document) == 150


def test_flush_uses_the_powertools_namespace_when_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "CustomSpace")
    stats = Stats()
    stats.count(UNROUTED)

    stats.flush()

    (document,) = emf_documents(capsys.readouterr().out)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "CustomSpace"


def test_counts_with_a_kind_also_flush_one_document_per_event_kind(capsys: pytest.CaptureFixture[str]) -> None:
    stats = Stats()
    stats.count(DELIVERED, "team-b", kind="asset_event")
    stats.count(DELIVERED, "team-c", kind="dag_run")
    stats.count(DELIVERED, "team-b", kind="dag_run")
    stats.count(DEAD_LETTERED, "team-c", kind="dag_run")

    stats.flush()

    documents = emf_documents(capsys.readouterr().out)
    by_kind = {document["kind"]: document for document in documents if "kind" in document}
    assert set(by_kind) == {"asset_event", "dag_run"}
    assert dimensions(by_kind["dag_run"]) == [["kind"]]
    assert values(by_kind["dag_run"], DELIVERED) == [2.0]
    assert values(by_kind["dag_run"], DEAD_LETTERED) == [1.0]
    assert values(by_kind["asset_event"], DELIVERED) == [1.0]
    by_target = {document.get("target"): document for document in documents if "target" in document}
    assert values(by_target["team-b"], DELIVERED) == [2.0]  # the per-target counts are unchanged
