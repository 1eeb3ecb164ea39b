"""The envelope JSON Schema (docs/envelope.md) and the sample SQS events in events/.

The samples are what `sam local invoke -e` feeds the forwarder, so they must have the
exact Lambda SQS event shape, real MD5 checksums, and bodies that the schema judges the
same way the forwarder must: good envelopes pass, malformed ones are rejected.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from devkit.envelopes import envelope as reference_envelope

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
SCHEMA_PATH = EVENTS_DIR / "envelope.schema.json"
SINGLE = "sqs-event.json"
FANOUT = "sqs-event-fanout.json"
MALFORMED = "sqs-event-malformed.json"
SAMPLE_FILES = (SINGLE, FANOUT, MALFORMED)

# Positions of the records in sqs-event-malformed.json.
MALFORMED_RECORDS = {0: "not-json", 1: "json-array", 2: "version-2", 3: "missing-uri"}
GOOD_RECORD_IN_MALFORMED = 4

RECORD_KEYS = {
    "messageId",
    "receiptHandle",
    "body",
    "attributes",
    "messageAttributes",
    "md5OfBody",
    "md5OfMessageAttributes",
    "eventSource",
    "eventSourceARN",
    "awsRegion",
}
SYSTEM_ATTRIBUTE_KEYS = {
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
}
QUEUE_ARN = "arn:aws:sqs:us-east-1:123456789012:dataset-forwarder-events"


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _records(file_name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = _load_json(EVENTS_DIR / file_name)["Records"]
    return records


def _all_records() -> list[Any]:
    return [
        pytest.param(record, id=f"{file_name}[{index}]")
        for file_name in SAMPLE_FILES
        for index, record in enumerate(_records(file_name))
    ]


def _good_records() -> list[Any]:
    good = [(SINGLE, i, r) for i, r in enumerate(_records(SINGLE))]
    good += [(FANOUT, i, r) for i, r in enumerate(_records(FANOUT))]
    good.append((MALFORMED, GOOD_RECORD_IN_MALFORMED, _records(MALFORMED)[GOOD_RECORD_IN_MALFORMED]))
    return [pytest.param(record, id=f"{name}[{index}]") for name, index, record in good]


def _sqs_attributes_md5(attributes: dict[str, dict[str, Any]]) -> str:
    """MD5 of message attributes as SQS computes it (String attributes only)."""
    digest = hashlib.md5()
    for name in sorted(attributes):
        attribute = attributes[name]
        for part in (name, attribute["dataType"]):
            encoded = part.encode("utf-8")
            digest.update(struct.pack(">I", len(encoded)) + encoded)
        value = attribute["stringValue"].encode("utf-8")
        digest.update(b"\x01" + struct.pack(">I", len(value)) + value)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = _load_json(SCHEMA_PATH)
    return loaded


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def _body_is_valid_envelope(validator: Draft202012Validator, body: str) -> bool:
    try:
        envelope = json.loads(body)
    except json.JSONDecodeError:
        return False
    return bool(validator.is_valid(envelope))


def _minimal() -> dict[str, Any]:
    return {"version": 1, "id": "x", "uri": "u"}


# --- the schema itself ---------------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema(schema: dict[str, Any]) -> None:
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://github.com/airflow-dataset-forwarder/envelope-v1.schema.json"
    assert schema["title"]
    assert schema["description"]


def test_schema_requires_version_id_and_uri(schema: dict[str, Any]) -> None:
    assert sorted(schema["required"]) == ["id", "uri", "version"]


def test_every_schema_field_is_described(schema: dict[str, Any]) -> None:
    undescribed = [name for name, spec in schema["properties"].items() if not spec.get("description")]
    undescribed += [
        f"source.{name}"
        for name, spec in schema["properties"]["source"]["properties"].items()
        if not spec.get("description")
    ]
    assert undescribed == []


# --- envelope rules ------------------------------------------------------------------------------


def test_minimal_envelope_is_valid(validator: Draft202012Validator) -> None:
    validator.validate(_minimal())


def test_unknown_top_level_fields_are_accepted(validator: Draft202012Validator) -> None:
    envelope = _minimal() | {"priority": "high", "future": {"nested": [1, 2]}}
    validator.validate(envelope)


def test_unknown_source_fields_are_accepted(validator: Draft202012Validator) -> None:
    envelope = _minimal() | {"source": {"deployment": "team-a-prod", "cluster": "eu-1"}}
    validator.validate(envelope)


def test_null_source_fields_are_accepted(validator: Draft202012Validator) -> None:
    source = dict.fromkeys(("deployment", "airflow_version", "dag_id", "task_id", "run_id", "map_index"))
    envelope = _minimal() | {"name": None, "source": source, "emitted_at": None, "only_targets": None}
    validator.validate(envelope)


@pytest.mark.parametrize("missing", ["version", "id", "uri"])
def test_envelope_missing_a_required_field_is_rejected(validator: Draft202012Validator, missing: str) -> None:
    envelope = _minimal()
    del envelope[missing]
    assert not validator.is_valid(envelope)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_envelope_with_another_version_is_rejected(validator: Draft202012Validator, version: Any) -> None:
    assert not validator.is_valid(_minimal() | {"version": version})


def test_empty_id_is_rejected(validator: Draft202012Validator) -> None:
    assert not validator.is_valid(_minimal() | {"id": ""})


def test_id_longer_than_256_characters_is_rejected(validator: Draft202012Validator) -> None:
    assert validator.is_valid(_minimal() | {"id": "a" * 256})
    assert not validator.is_valid(_minimal() | {"id": "a" * 257})


def test_empty_uri_is_rejected(validator: Draft202012Validator) -> None:
    assert not validator.is_valid(_minimal() | {"uri": ""})


def test_only_targets_list_of_target_names_is_accepted(validator: Draft202012Validator) -> None:
    validator.validate(_minimal() | {"only_targets": ["team-b-prod", "team_c.staging"]})


def test_only_targets_name_with_slash_is_rejected(validator: Draft202012Validator) -> None:
    assert not validator.is_valid(_minimal() | {"only_targets": ["team-b/prod"]})


def test_only_targets_name_longer_than_64_characters_is_rejected(validator: Draft202012Validator) -> None:
    assert not validator.is_valid(_minimal() | {"only_targets": ["t" * 65]})


def test_trail_with_empty_deployment_is_rejected(validator: Draft202012Validator) -> None:
    assert not validator.is_valid(_minimal() | {"trail": ["team-a-prod", ""]})


def test_extra_must_be_an_object(validator: Draft202012Validator) -> None:
    assert not validator.is_valid(_minimal() | {"extra": [42]})


def test_emitted_at_that_is_not_a_date_time_is_rejected(validator: Draft202012Validator) -> None:
    # jsonschema checks "date-time" only when its optional rfc3339-validator is installed.
    pytest.importorskip("rfc3339_validator")
    assert validator.is_valid(_minimal() | {"emitted_at": "2026-11-23T23:00:00.123456+00:00"})
    assert not validator.is_valid(_minimal() | {"emitted_at": "yesterday"})


# --- sample SQS events ---------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", SAMPLE_FILES)
def test_sample_event_has_the_lambda_sqs_event_shape(file_name: str) -> None:
    event = _load_json(EVENTS_DIR / file_name)
    assert set(event) == {"Records"}
    for record in event["Records"]:
        assert set(record) == RECORD_KEYS
        assert set(record["attributes"]) == SYSTEM_ATTRIBUTE_KEYS
        assert all(isinstance(value, str) for value in record["attributes"].values())
        assert record["attributes"]["ApproximateReceiveCount"] == "1"
        assert isinstance(record["body"], str)
        assert record["eventSource"] == "aws:sqs"
        assert record["eventSourceARN"] == QUEUE_ARN
        assert record["awsRegion"] == "us-east-1"
        for attribute in record["messageAttributes"].values():
            assert attribute["dataType"] == "String"
            assert attribute["stringListValues"] == []
            assert attribute["binaryListValues"] == []


@pytest.mark.parametrize("file_name", SAMPLE_FILES)
def test_sample_event_message_ids_are_distinct(file_name: str) -> None:
    message_ids = [record["messageId"] for record in _records(file_name)]
    assert len(set(message_ids)) == len(message_ids)


@pytest.mark.parametrize("record", _all_records())
def test_md5_of_body_matches_the_body(record: dict[str, Any]) -> None:
    assert record["md5OfBody"] == hashlib.md5(record["body"].encode("utf-8")).hexdigest()


@pytest.mark.parametrize("record", _all_records())
def test_md5_of_message_attributes_matches_when_present(record: dict[str, Any]) -> None:
    if record["md5OfMessageAttributes"] is None:
        assert record["messageAttributes"] == {}
    else:
        assert record["md5OfMessageAttributes"] == _sqs_attributes_md5(record["messageAttributes"])


@pytest.mark.parametrize("record", _good_records())
def test_good_sample_body_validates(validator: Draft202012Validator, record: dict[str, Any]) -> None:
    validator.validate(json.loads(record["body"]))


@pytest.mark.parametrize("record", _good_records())
def test_good_sample_message_attributes_mirror_the_envelope(record: dict[str, Any]) -> None:
    envelope = json.loads(record["body"])
    attributes = {name: value["stringValue"] for name, value in record["messageAttributes"].items()}
    assert attributes == {
        "uri": envelope["uri"],
        "event_id": envelope["id"],
        "source_deployment": envelope["source"]["deployment"],
    }


def test_single_sample_is_the_design_example(validator: Draft202012Validator) -> None:
    (record,) = _records(SINGLE)
    envelope = json.loads(record["body"])
    assert envelope["uri"] == "s3://bucket/bears"
    assert envelope["extra"] == {"rows": 42}
    assert envelope["source"] == reference_envelope("s3://bucket/bears")["source"]
    assert envelope["trail"] == ["team-a-prod"]
    assert envelope["only_targets"] is None


def test_fanout_sample_has_three_events_with_distinct_hex_ids() -> None:
    envelopes = [json.loads(record["body"]) for record in _records(FANOUT)]
    assert [envelope["uri"] for envelope in envelopes] == [
        "s3://bucket/bears",
        "s3://lake/raw/2026/11/23/orders.parquet",
        "s3://lake/raw/customers.parquet",
    ]
    ids = [envelope["id"] for envelope in envelopes]
    assert len(set(ids)) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", event_id) for event_id in ids)


@pytest.mark.parametrize("index", list(MALFORMED_RECORDS), ids=list(MALFORMED_RECORDS.values()))
def test_malformed_sample_body_is_rejected(validator: Draft202012Validator, index: int) -> None:
    body = _records(MALFORMED)[index]["body"]
    assert not _body_is_valid_envelope(validator, body)


@pytest.mark.parametrize(
    ("index", "repair"),
    [(2, {"version": 1}), (3, {"uri": "s3://bucket/bears"})],
    ids=["version-2", "missing-uri"],
)
def test_malformed_sample_envelope_is_rejected_only_for_its_defect(
    validator: Draft202012Validator, index: int, repair: dict[str, Any]
) -> None:
    envelope = json.loads(_records(MALFORMED)[index]["body"])
    assert not validator.is_valid(envelope)
    validator.validate(envelope | repair)


def test_malformed_sample_not_json_body_fails_to_parse() -> None:
    body = _records(MALFORMED)[0]["body"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


def test_malformed_sample_still_holds_one_good_record(validator: Draft202012Validator) -> None:
    records = _records(MALFORMED)
    assert len(records) == len(MALFORMED_RECORDS) + 1
    accepted = [i for i, record in enumerate(records) if _body_is_valid_envelope(validator, record["body"])]
    assert accepted == [GOOD_RECORD_IN_MALFORMED]
