from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from dataset_forwarder_listener.envelope import (
    LINEAGE_KEY,
    UpstreamEvent,
    build,
    dumps,
    epoch_ns,
    event_id,
    included,
    message_attributes,
)

WHEN = datetime(2026, 11, 23, 23, 0, 0, 123456, tzinfo=timezone.utc)


def event(**overrides):
    fields = {
        "uri": "s3://bucket/bears",
        "name": "bears",
        "extra": {"rows": 42},
        "dag_id": "producer",
        "task_id": "get_bear",
        "run_id": "scheduled__2026-11-23T00:00:00+00:00",
        "map_index": -1,
        "event_key": "17",
        "timestamp": WHEN,
    }
    fields.update(overrides)
    return UpstreamEvent(**fields)


def envelope_of(upstream: UpstreamEvent, deployment: str = "team-a-prod", **kwargs):
    return build(upstream, deployment=deployment, airflow_version="3.3.2", **kwargs)


def test_envelope_has_every_field_of_design_section_3(envelope_validator):
    envelope = envelope_of(event())

    assert envelope == {
        "version": 1,
        "kind": "asset_event",
        "id": envelope["id"],
        "uri": "s3://bucket/bears",
        "name": "bears",
        "extra": {"rows": 42},
        "partition_key": None,
        "source": {
            "deployment": "team-a-prod",
            "airflow_version": "3.3.2",
            "dag_id": "producer",
            "task_id": "get_bear",
            "run_id": "scheduled__2026-11-23T00:00:00+00:00",
            "map_index": -1,
        },
        "emitted_at": "2026-11-23T23:00:00.123456+00:00",
        "trail": ["team-a-prod"],
        "only_targets": None,
    }
    envelope_validator.validate(json.loads(dumps(envelope)))


def test_envelope_of_an_event_without_source_validates(envelope_validator):
    bare = UpstreamEvent(uri="s3://bucket/bears", event_key="k")

    envelope = envelope_of(bare, now=WHEN)

    assert envelope["extra"] == {}
    assert envelope["name"] is None
    assert envelope["source"]["dag_id"] is None
    assert envelope["source"]["map_index"] is None
    assert envelope["emitted_at"] == "2026-11-23T23:00:00.123456+00:00"
    envelope_validator.validate(json.loads(dumps(envelope)))


def test_rest_created_event_has_no_map_index_although_airflow_records_minus_one(envelope_validator):
    # What an Airflow 3 api-server hook sees for POST /assets/events: no source ids, the column default map index.
    rest = event(dag_id=None, task_id=None, run_id=None, map_index=-1, extra={"from_rest_api": True})

    envelope = build(rest, deployment="team-a-prod", airflow_version="3.3.2", now=WHEN)

    assert envelope["source"]["map_index"] is None
    assert envelope["source"]["task_id"] is None
    envelope_validator.validate(json.loads(dumps(envelope)))


def test_id_is_32_hex_and_the_same_every_time_the_event_is_built():
    first = envelope_of(event())
    second = envelope_of(event())

    assert re.fullmatch(r"[0-9a-f]{32}", first["id"])
    assert first["id"] == second["id"]


@pytest.mark.parametrize(
    ("change", "deployment"),
    [
        ({"event_key": "18"}, "team-a-prod"),
        ({"uri": "s3://bucket/wolves"}, "team-a-prod"),
        ({"timestamp": WHEN + timedelta(microseconds=1)}, "team-a-prod"),
        ({}, "team-a-staging"),
    ],
)
def test_id_differs_between_events(change, deployment):
    assert envelope_of(event(**change), deployment)["id"] != envelope_of(event())["id"]


def test_id_matches_event_id_of_its_parts():
    envelope = envelope_of(event())

    assert envelope["id"] == event_id("team-a-prod", "17", "s3://bucket/bears", envelope["emitted_at"])


def test_forwarded_event_extends_the_trail_and_loses_the_lineage_key(envelope_validator):
    lineage = {"id": "abc", "source": {"deployment": "team-x"}, "trail": ["team-x", "team-y"]}
    upstream = event(extra={"rows": 1, LINEAGE_KEY: lineage})

    envelope = envelope_of(upstream)

    assert envelope["trail"] == ["team-x", "team-y", "team-a-prod"]
    assert envelope["extra"] == {"rows": 1}
    assert upstream.extra[LINEAGE_KEY] == lineage  # the caller's extra is left alone
    envelope_validator.validate(envelope)


def test_event_that_already_passed_through_this_deployment_is_not_forwarded(caplog):
    upstream = event(extra={LINEAGE_KEY: {"trail": ["team-a-prod", "team-b"]}})

    with caplog.at_level("INFO"):
        assert envelope_of(upstream) is None
    assert "already passed through team-a-prod" in caplog.text


@pytest.mark.parametrize(
    "lineage",
    [None, "team-a-prod", {"trail": "team-a-prod"}, {"trail": [1, None, ""]}, {"no": "trail"}],
)
def test_malformed_lineage_is_treated_as_no_trail(lineage):
    envelope = envelope_of(event(extra={LINEAGE_KEY: lineage}))

    assert envelope["trail"] == ["team-a-prod"]
    assert LINEAGE_KEY not in envelope["extra"]


@pytest.mark.parametrize(
    ("patterns", "uri", "expected"),
    [
        ((), "s3://anything", True),
        (("s3://bucket/bears",), "s3://bucket/bears", True),
        (("s3://lake/raw/*", "s3://bucket/b*"), "s3://bucket/bears", True),
        (("s3://lake/raw/*",), "s3://bucket/bears", False),
        (("S3://BUCKET/*",), "s3://bucket/bears", False),
    ],
)
def test_include_patterns(patterns, uri, expected):
    assert included(uri, patterns) is expected
    assert (envelope_of(event(uri=uri), include=patterns) is not None) is expected


def test_emitted_at_is_utc_whatever_the_timestamp_zone():
    eastern = timezone(timedelta(hours=-5))

    assert envelope_of(event(timestamp=datetime(2026, 1, 1, 7, tzinfo=eastern)))["emitted_at"] == (
        "2026-01-01T12:00:00+00:00"
    )
    assert envelope_of(event(timestamp=datetime(2026, 1, 1, 12)))["emitted_at"] == "2026-01-01T12:00:00+00:00"


def test_extra_is_copied_as_plain_json():
    extra = {"when": WHEN, "nested": {"list": [1, 2]}}

    envelope = envelope_of(event(extra=extra))

    assert envelope["extra"] == {"when": str(WHEN), "nested": {"list": [1, 2]}}
    envelope["extra"]["nested"]["list"].append(3)
    assert extra["nested"]["list"] == [1, 2]


def test_message_attributes_are_strings_naming_uri_id_and_deployment():
    envelope = envelope_of(event())

    assert message_attributes(envelope) == {
        "uri": {"DataType": "String", "StringValue": "s3://bucket/bears"},
        "event_id": {"DataType": "String", "StringValue": envelope["id"]},
        "source_deployment": {"DataType": "String", "StringValue": "team-a-prod"},
    }


def test_body_is_ascii_json():
    envelope = envelope_of(event(extra={"name": "bär\u2028"}))

    body = dumps(envelope)

    assert body.isascii()
    assert json.loads(body) == envelope


def test_epoch_ns_orders_timestamps_and_tolerates_garbage():
    assert epoch_ns("1970-01-01T00:00:01.000002+00:00") == 1_000_002_000
    assert epoch_ns(None) == 0
    assert epoch_ns("yesterday") == 0
