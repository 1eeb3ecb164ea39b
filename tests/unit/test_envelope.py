"""parse_envelope and what an Envelope gives downstream and to the dead-letter queue (docs/envelope.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataset_forwarder.envelope import LINEAGE_KEY, MAX_ID_LENGTH, Envelope, InvalidMessage, parse_envelope
from devkit.envelopes import envelope as reference_envelope

BEARS = "s3://bucket/bears"


def full_envelope(**overrides: Any) -> dict[str, Any]:
    """Every field of the v1 envelope, as the listener writes it."""
    data = reference_envelope(BEARS, event_id="6f1c2a0e9b8d4c55a1e3f2d4b6a8c0e1")
    data.update(overrides)
    return data


def parse(data: Any) -> Envelope:
    return parse_envelope(json.dumps(data))


def invalid(data: Any) -> str:
    with pytest.raises(InvalidMessage) as caught:
        parse(data)
    return str(caught.value)


# -- valid envelopes ------------------------------------------------------------------------


def test_minimal_envelope_gets_empty_defaults() -> None:
    envelope = parse({"version": 1, "id": "e1", "uri": BEARS})

    assert envelope.id == "e1"
    assert envelope.uri == BEARS
    assert envelope.name is None
    assert envelope.extra == {}
    assert envelope.source is None
    assert envelope.trail == ()
    assert envelope.only_targets is None


def test_full_envelope_is_read_field_by_field() -> None:
    data = full_envelope(only_targets=["team-b", "team-c"])
    envelope = parse(data)

    assert envelope.id == data["id"]
    assert envelope.uri == BEARS
    assert envelope.name == BEARS
    assert envelope.extra == {"rows": 42}
    assert envelope.source == data["source"]
    assert envelope.trail == ("team-a-prod",)
    assert envelope.only_targets == ("team-b", "team-c")
    assert envelope.raw == data


def test_unknown_fields_are_kept_in_raw() -> None:
    envelope = parse(full_envelope(future_field={"nested": [1, 2]}, partition_key="p1"))

    assert envelope.raw["future_field"] == {"nested": [1, 2]}
    assert envelope.raw["partition_key"] == "p1"


def test_unknown_fields_survive_into_dead_letter_body() -> None:
    envelope = parse(full_envelope(future_field={"nested": [1, 2]}))

    body = json.loads(envelope.dead_letter_body("team-b"))

    assert body["future_field"] == {"nested": [1, 2]}


def test_null_extra_becomes_empty_dict() -> None:
    assert parse(full_envelope(extra=None)).extra == {}


def test_null_source_stays_null_for_the_lineage() -> None:
    assert parse(full_envelope(source=None)).source is None


def test_null_trail_becomes_empty_tuple() -> None:
    assert parse(full_envelope(trail=None)).trail == ()


def test_id_of_exactly_max_length_is_accepted() -> None:
    assert parse(full_envelope(id="x" * MAX_ID_LENGTH)).id == "x" * MAX_ID_LENGTH


def test_non_ascii_body_is_accepted() -> None:
    envelope = parse_envelope(
        json.dumps(full_envelope(uri="s3://b/bär", extra={"note": "ünïcode"}), ensure_ascii=False)
    )

    assert envelope.uri == "s3://b/bär"
    assert envelope.extra == {"note": "ünïcode"}


# -- invalid envelopes ----------------------------------------------------------------------


def test_body_that_is_not_json_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="not JSON"):
        parse_envelope("{not json")


def test_empty_body_is_invalid() -> None:
    with pytest.raises(InvalidMessage, match="not JSON"):
        parse_envelope("")


def test_json_array_is_invalid() -> None:
    assert "JSON object" in invalid([full_envelope()])


def test_json_string_is_invalid() -> None:
    assert "JSON object" in invalid("hello")


@pytest.mark.parametrize(
    "version",
    [2, 0, True, "1", 1.0, None],
    ids=["two", "zero", "bool-true", "string-1", "float-1", "null"],
)
def test_only_integer_version_1_is_accepted(version: Any) -> None:
    assert "version" in invalid(full_envelope(version=version))


def test_missing_version_is_invalid() -> None:
    data = full_envelope()
    del data["version"]
    assert "version" in invalid(data)


@pytest.mark.parametrize("event_id", [None, "", "   ", 42], ids=["missing", "empty", "blank", "number"])
def test_id_must_be_a_non_empty_string(event_id: Any) -> None:
    data = full_envelope(id=event_id)
    if event_id is None:
        del data["id"]
    assert "'id'" in invalid(data)


def test_id_longer_than_256_characters_is_invalid() -> None:
    message = invalid(full_envelope(id="x" * (MAX_ID_LENGTH + 1)))
    assert "'id'" in message
    assert str(MAX_ID_LENGTH) in message


@pytest.mark.parametrize("uri", [None, "", "  ", ["s3://b"]], ids=["missing", "empty", "blank", "list"])
def test_uri_must_be_a_non_empty_string(uri: Any) -> None:
    data = full_envelope(uri=uri)
    if uri is None:
        del data["uri"]
    assert "'uri'" in invalid(data)


@pytest.mark.parametrize("extra", [[1, 2], "rows=42", 42], ids=["list", "string", "number"])
def test_extra_must_be_an_object(extra: Any) -> None:
    assert "'extra'" in invalid(full_envelope(extra=extra))


def test_source_must_be_an_object() -> None:
    assert "'source'" in invalid(full_envelope(source="team-a-prod"))


def test_name_must_be_a_string_or_null() -> None:
    assert "'name'" in invalid(full_envelope(name=7))


@pytest.mark.parametrize(
    "trail",
    ["team-a-prod", ["team-a-prod", 3], [""], [None], {"a": 1}],
    ids=["string", "number-item", "empty-item", "null-item", "object"],
)
def test_trail_must_be_a_list_of_strings(trail: Any) -> None:
    assert "'trail'" in invalid(full_envelope(trail=trail))


@pytest.mark.parametrize(
    "only_targets",
    [["team-b", 1], [None], [""], "team-b"],
    ids=["number-item", "null-item", "empty-item", "string"],
)
def test_only_targets_must_be_a_list_of_strings(only_targets: Any) -> None:
    assert "'only_targets'" in invalid(full_envelope(only_targets=only_targets))


# -- downstream extra -------------------------------------------------------------------------


def test_downstream_extra_adds_lineage_to_upstream_extra() -> None:
    envelope = parse(full_envelope(extra={"rows": 42, "path": "x"}, trail=["team-a-prod", "team-z"]))

    extra = envelope.downstream_extra()

    assert extra == {
        "rows": 42,
        "path": "x",
        LINEAGE_KEY: {
            "id": envelope.id,
            "source": envelope.source,
            "trail": ["team-a-prod", "team-z"],
        },
    }
    assert LINEAGE_KEY == "dataset_forwarder"


def test_downstream_extra_overrides_upstream_lineage_key() -> None:
    envelope = parse(full_envelope(extra={"rows": 1, LINEAGE_KEY: {"id": "forged", "trail": []}}))

    lineage = envelope.downstream_extra()[LINEAGE_KEY]

    assert lineage == {"id": envelope.id, "source": envelope.source, "trail": ["team-a-prod"]}


def test_downstream_extra_of_minimal_envelope_has_null_source_and_empty_trail() -> None:
    envelope = parse({"version": 1, "id": "e1", "uri": BEARS})

    assert envelope.downstream_extra() == {LINEAGE_KEY: {"id": "e1", "source": None, "trail": []}}


def test_downstream_extra_does_not_mutate_the_envelope_extra() -> None:
    envelope = parse(full_envelope(extra={"rows": 42}))

    envelope.downstream_extra()["rows"] = 0

    assert envelope.extra == {"rows": 42}
    assert LINEAGE_KEY not in envelope.extra


# -- dead-letter body -------------------------------------------------------------------------


def test_dead_letter_body_aims_at_one_target_and_keeps_everything_else() -> None:
    data = full_envelope(only_targets=["team-b", "team-c"], future_field=[1])
    envelope = parse(data)

    body = json.loads(envelope.dead_letter_body("team-c"))

    assert body["only_targets"] == ["team-c"]
    assert {k: v for k, v in body.items() if k != "only_targets"} == {
        k: v for k, v in data.items() if k != "only_targets"
    }


def test_dead_letter_body_sets_only_targets_when_it_was_null() -> None:
    envelope = parse(full_envelope(only_targets=None))

    assert json.loads(envelope.dead_letter_body("team-b"))["only_targets"] == ["team-b"]


def test_dead_letter_body_parses_back_to_an_envelope_for_that_target() -> None:
    envelope = parse(full_envelope(extra=None))

    replay = parse_envelope(envelope.dead_letter_body("team-b"))

    assert replay.only_targets == ("team-b",)
    assert replay.id == envelope.id
    assert replay.uri == envelope.uri
    assert replay.raw["extra"] is None


def test_dead_letter_body_keeps_non_ascii_characters_readable() -> None:
    envelope = parse(full_envelope(uri="s3://b/bär"))

    assert "bär" in envelope.dead_letter_body("team-b")
