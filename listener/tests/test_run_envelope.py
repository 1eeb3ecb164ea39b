"""The ``dag_run`` envelope (docs/envelope.md), its id per run outcome, and the asset event's partition key."""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from dataset_forwarder_listener.envelope import (
    LINEAGE_KEY,
    RunOutcome,
    UpstreamEvent,
    build,
    build_run,
    dumps,
    merged_trail,
    message_attributes,
    run_uri,
    selected,
)

STARTED = datetime(2026, 12, 6, 6, 0, 0, 250000, tzinfo=timezone.utc)
ENDED = STARTED + timedelta(minutes=3)


def outcome(**overrides):
    fields = {
        "dag_id": "etl_daily",
        "run_id": "scheduled__2026-12-06T00:00:00+00:00",
        "state": "success",
        "run_type": "scheduled",
        "logical_date": datetime(2026, 12, 6, tzinfo=timezone.utc),
        "start_date": STARTED,
        "end_date": ENDED,
        "clear_number": 0,
    }
    fields.update(overrides)
    return RunOutcome(**fields)


def envelope_of(run: RunOutcome, deployment: str = "team-a"):
    return build_run(run, deployment=deployment, airflow_version="3.3.2")


def test_dag_run_envelope_is_design_section_9_2(envelope_validator):
    envelope = envelope_of(outcome())

    assert envelope == {
        "version": 1,
        "kind": "dag_run",
        "id": envelope["id"],
        "uri": "dagrun://team-a/etl_daily/success",
        "name": "dagrun://team-a/etl_daily/success",
        "extra": {
            "dag_id": "etl_daily",
            "run_id": "scheduled__2026-12-06T00:00:00+00:00",
            "state": "success",
            "run_type": "scheduled",
            "logical_date": "2026-12-06T00:00:00+00:00",
            "start_date": "2026-12-06T06:00:00.250000+00:00",
            "end_date": "2026-12-06T06:03:00.250000+00:00",
        },
        "partition_key": None,
        "source": {
            "deployment": "team-a",
            "airflow_version": "3.3.2",
            "dag_id": "etl_daily",
            "task_id": None,
            "run_id": "scheduled__2026-12-06T00:00:00+00:00",
            "map_index": None,
        },
        "emitted_at": "2026-12-06T06:03:00.250000+00:00",
        "trail": ["team-a"],
        "only_targets": None,
    }
    assert re.fullmatch(r"[0-9a-f]{32}", envelope["id"])
    envelope_validator.validate(json.loads(dumps(envelope)))
    assert message_attributes(envelope) == {
        "uri": {"DataType": "String", "StringValue": "dagrun://team-a/etl_daily/success"},
        "event_id": {"DataType": "String", "StringValue": envelope["id"]},
        "source_deployment": {"DataType": "String", "StringValue": "team-a"},
    }


def test_failed_run_without_logical_date_and_naive_dates(envelope_validator):
    # Airflow 3 manual runs may have no logical date; a naive datetime is UTC (Airflow stores UTC).
    envelope = envelope_of(outcome(state="failed", logical_date=None, end_date=datetime(2026, 12, 6, 7)))

    assert envelope["uri"] == envelope["name"] == "dagrun://team-a/etl_daily/failed"
    assert envelope["extra"]["state"] == "failed"
    assert envelope["extra"]["logical_date"] is None
    assert envelope["extra"]["end_date"] == "2026-12-06T07:00:00+00:00"
    envelope_validator.validate(json.loads(dumps(envelope)))


def test_dag_run_envelope_never_carries_the_run_s_conf():
    lineage = {"id": "e1", "trail": ["team-z"], "extra": {"secret": "no"}}

    envelope = envelope_of(outcome(lineages=(lineage,)))

    assert "secret" not in dumps(envelope)
    assert LINEAGE_KEY not in envelope["extra"]


def test_same_outcome_reported_twice_has_the_same_id():
    first = envelope_of(outcome())
    # Another process, or the scheduler's loop retried after a failed commit: Airflow sets the end date anew.
    again = envelope_of(outcome(end_date=ENDED + timedelta(seconds=2)))

    assert first["id"] == again["id"]


@pytest.mark.parametrize(
    "change",
    [
        # Cleared and run again: Airflow counts the clear and starts the run anew (2.x and 3.x, measured).
        {"clear_number": 1, "start_date": STARTED + timedelta(hours=1), "end_date": ENDED + timedelta(hours=1)},
        {"clear_number": 1},
        {"start_date": STARTED + timedelta(hours=1)},
        {"state": "failed"},
        {"run_id": "manual__2026-12-06T06:00:00+00:00"},
        {"dag_id": "etl_weekly"},
    ],
)
def test_a_different_outcome_has_a_different_id(change):
    assert envelope_of(outcome(**change))["id"] != envelope_of(outcome())["id"]


def test_the_same_run_in_another_deployment_has_another_id():
    assert envelope_of(outcome(), "team-b")["id"] != envelope_of(outcome())["id"]


def test_trail_from_what_started_the_run_is_extended(envelope_validator):
    conf_lineage = {"id": "e1", "trail": ["team-z", "team-y"]}
    consumed = {"trail": ["team-x", "team-y"]}

    envelope = envelope_of(outcome(lineages=(conf_lineage, consumed)))

    assert envelope["trail"] == ["team-z", "team-y", "team-x", "team-a"]
    envelope_validator.validate(envelope)


@pytest.mark.parametrize(
    "lineages",
    [
        ({"trail": ["team-z", "team-a"]},),
        ({"trail": ["team-z"]}, {"trail": ["team-a"]}),
    ],
)
def test_run_started_by_this_deployment_s_own_forwarding_is_not_reported(lineages, caplog):
    with caplog.at_level("INFO"):
        assert envelope_of(outcome(lineages=lineages)) is None

    assert "dagrun://team-a/etl_daily/success" in caplog.text


@pytest.mark.parametrize("lineage", [None, "team-a", {"trail": "team-a"}, {"trail": [1, ""]}, {}])
def test_malformed_lineage_counts_as_no_trail(lineage):
    assert envelope_of(outcome(lineages=(lineage,)))["trail"] == ["team-a"]


def test_merged_trail_keeps_the_first_appearance():
    assert merged_trail([{"trail": ["a", "b"]}, {"trail": ["b", "c", "a"]}]) == ["a", "b", "c"]
    assert merged_trail([]) == []


@pytest.mark.parametrize(
    ("patterns", "dag_id", "expected"),
    [
        ((), "etl_daily", False),
        (("etl_*",), "etl_daily", True),
        (("reports", "etl_d*"), "etl_daily", True),
        (("etl_*",), "reports", False),
        (("ETL_*",), "etl_daily", False),
        (("*",), "anything", True),
    ],
)
def test_dag_run_globs(patterns, dag_id, expected):
    assert selected(dag_id, patterns) is expected


def test_run_uri():
    assert run_uri("team-a", "etl_daily", "failed") == "dagrun://team-a/etl_daily/failed"


def test_partitioned_run_and_asset_event_carry_their_partition_key(envelope_validator):
    run = envelope_of(outcome(partition_key="2026-12-06"))
    event = build(
        UpstreamEvent(uri="s3://lake/orders", event_key="1", partition_key="eu"),
        deployment="team-a",
        airflow_version="3.3.2",
    )

    assert run["partition_key"] == "2026-12-06"
    assert event["partition_key"] == "eu"
    assert event["kind"] == "asset_event"
    for envelope in (run, event):
        envelope_validator.validate(json.loads(dumps(envelope)))


def test_schema_rejects_a_dag_run_envelope_without_its_extra_or_with_a_foreign_uri(envelope_validator):
    good = envelope_of(outcome())
    no_end = copy.deepcopy(good)
    del no_end["extra"]["end_date"]
    foreign = {**good, "uri": "s3://bucket/bears"}
    bad_kind = {**good, "kind": "task"}
    bad_partition = {**good, "partition_key": 7}

    for broken in (no_end, foreign, bad_kind, bad_partition):
        assert list(envelope_validator.iter_errors(broken)), broken
