"""Property-based checks: hostile input never escapes as an unexpected exception."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataset_forwarder.envelope import MAX_DEAD_LETTER_BODY_BYTES, Envelope, InvalidMessage, parse_envelope
from dataset_forwarder.routing import route
from dataset_forwarder.targets import Catalog, InvalidTarget, build_catalog, parse_target

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=25,
)
glob_text = st.text(alphabet="s3:/abc*?[]!-_.é", min_size=1, max_size=20)


def envelope_like() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"version": st.sampled_from([1, 1, 1, 2, "1", True, None]), "id": json_values, "uri": json_values},
        optional={
            "extra": json_values,
            "source": json_values,
            "trail": json_values,
            "only_targets": json_values,
            "name": json_values,
        },
    )


@given(st.text(max_size=300))
def test_any_text_parses_or_is_an_invalid_message(body: str) -> None:
    with contextlib.suppress(InvalidMessage):
        parse_envelope(body)


@given(envelope_like())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_envelope_shaped_json_parses_or_is_an_invalid_message(data: dict[str, Any]) -> None:
    try:
        envelope = parse_envelope(json.dumps(data))
    except InvalidMessage:
        return
    assert envelope.id == data["id"]
    assert json.loads(envelope.dead_letter_body("t"))["only_targets"] == ["t"]
    assert envelope.downstream_extra()["dataset_forwarder"]["id"] == data["id"]


def test_deep_nesting_is_an_invalid_message_not_a_crash() -> None:
    body = '{"version": 1, "id": "x", "uri": "u", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"

    with pytest.raises(InvalidMessage, match="not JSON"):
        parse_envelope(body)


def test_lone_surrogates_still_give_a_sendable_dead_letter_body() -> None:
    envelope = parse_envelope(json.dumps({"version": 1, "id": "x", "uri": "u", "extra": {"k": "\ud800"}}))

    body = envelope.dead_letter_body("team-b")

    body.encode("utf-8")
    assert json.loads(body)["extra"]["k"] == "\ud800"


def test_an_envelope_at_the_size_limit_dead_letters_as_it_came() -> None:
    raw = {"version": 1, "id": "x", "uri": "u", "extra": {"blob": "a" * (MAX_DEAD_LETTER_BODY_BYTES - 60)}}
    envelope = parse_envelope(json.dumps(raw))

    body = envelope.dead_letter_body("a-target-with-a-long-name")

    assert len(body.encode()) <= MAX_DEAD_LETTER_BODY_BYTES
    assert json.loads(body) == raw


@given(st.text(max_size=70), json_values | st.text(max_size=200))
def test_any_target_parameter_parses_or_is_an_invalid_target(name: str, value: Any) -> None:
    with contextlib.suppress(InvalidTarget):
        parse_target(name, value if isinstance(value, str) else json.dumps(value), allow_http=True)


targets_values = st.dictionaries(
    st.text(alphabet="abc-/", min_size=1, max_size=6),
    st.fixed_dictionaries(
        {"url": st.sampled_from(["https://a.example", "http://b.example", "ftp://c", "https://u:p@d.example"]),
         "datasets": st.lists(glob_text, max_size=3)},
        optional={"enabled": st.booleans(), "auth": st.sampled_from([{"type": "none"}, {"type": "kerberos"}])},
    ).map(json.dumps),
    max_size=6,
)  # fmt: skip


@given(
    targets_values,
    glob_text,
    st.lists(st.text(min_size=1, max_size=6), max_size=3),
    st.none() | st.lists(st.text(min_size=1, max_size=6), max_size=3),
)
def test_routing_never_raises_and_respects_trail_and_only_targets(
    raw: dict[str, str], uri: str, trail: list[str], only: list[str] | None
) -> None:
    catalog: Catalog = build_catalog(raw, allow_http=False)
    envelope = Envelope(id="e", uri=uri, name=None, extra={}, source={}, trail=tuple(trail),
                        only_targets=tuple(only) if only is not None else None, raw={})  # fmt: skip

    plan = route(envelope, catalog)

    names = {t.name for t in plan.targets}
    assert not names & set(trail)
    assert all(t.enabled and t.matches(uri) for t in plan.targets)
    if only is not None:
        assert names <= set(only)
        rejected = [plan.names_of(label) for label, _ in plan.rejected]
        assert {name for names_ in rejected for name in names_} <= set(only)
        assert sum(1 for names_ in rejected if len(names_) > 1 or names_[0] not in raw) <= 1  # unknown: one letter
    assert set(catalog.broken).isdisjoint(names)
