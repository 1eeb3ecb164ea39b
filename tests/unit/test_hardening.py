"""Issue 14 at the unit tier: bounded answers, redaction of the final text, timeouts that fit, only_targets caps."""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dataset_forwarder.dead_letters import DeadLetter
from dataset_forwarder.envelope import MAX_ONLY_TARGETS, InvalidMessage, parse_envelope
from dataset_forwarder.outcomes import BODY_EXCERPT, excerpt, failure_for_status
from dataset_forwarder.routing import MAX_LABEL_CHARS, route
from dataset_forwarder.settings import Settings
from dataset_forwarder.targets import Catalog, InvalidTarget, parse_target
from dataset_forwarder.transport import ERROR_TIMEOUT, MAX_BODY_BYTES, Reply, Transport, TransportError
from devkit.airflow_api import FakeAirflow, Fault
from devkit.aws import sqs_refused_characters
from devkit.envelopes import envelope

BEARS = "s3://bucket/bears"


@pytest.fixture
def fake() -> Iterator[FakeAirflow]:
    with FakeAirflow("3") as server:
        yield server


@pytest.fixture
def transport() -> Iterator[Transport]:
    with Transport(pool_size=2, max_hosts=2) as client:
        yield client


# -- point 4: one request is bounded in time and in memory --------------------------------------------------


def test_a_trickling_answer_ends_at_the_total_timeout_not_per_read(fake: FakeAirflow, transport: Transport) -> None:
    fake.inject(Fault(method="GET", raw_body=b" " * 36, trickle_s=0.5))  # 18 s for the whole body, 0.5 s per byte

    started = time.monotonic()
    with pytest.raises(TransportError) as raised:
        transport.request("GET", f"{fake.url}/api/v2/version", timeout=(1.0, 2.0))
    took = time.monotonic() - started

    assert raised.value.kind == ERROR_TIMEOUT
    assert raised.value.sent  # the request went out: a POST would be "may have landed"
    assert 1.5 < took < 4


def test_a_huge_answer_is_cut_at_max_body_bytes_and_never_held_whole(fake: FakeAirflow, transport: Transport) -> None:
    huge = 300 * 1024 * 1024  # streamed by the fake from one small block, cut by the client
    fake.inject(Fault(method="GET", status=200, raw_body=b'{"a":', body_bytes=huge))
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    started = time.monotonic()
    reply = transport.request("GET", f"{fake.url}/api/v2/version", timeout=(1.0, 10.0))
    took = time.monotonic() - started

    assert reply.status_code == 200
    assert reply.truncated
    assert len(reply.content) == MAX_BODY_BYTES
    with pytest.raises(ValueError, match="cut"):
        reply.json()
    assert took < 3
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib < 64 * 1024  # < 64 MiB more


def test_a_2xx_answer_nested_too_deep_is_a_value_error_not_a_recursion_error() -> None:
    with pytest.raises(ValueError, match="nested too deep"):
        Reply(200, {}, b"[" * 100_000).json()


def target_json(timeout_s: float) -> dict[str, Any]:
    return {"url": "https://airflow.example", "datasets": [BEARS], "timeout_s": timeout_s}


def test_a_timeout_that_cannot_fit_the_function_timeout_is_refused_at_parse_time() -> None:
    rules = Settings(dead_letter_queue_url="q", idempotency_table="t", function_timeout_s=60).parse_rules()

    assert parse_target("fits", target_json(28.5), rules=rules).timeout_s == 28.5  # 2 x 28.5 + 3 = 60
    with pytest.raises(InvalidTarget, match=r"'timeout_s' 29 cannot fit in the function's timeout: at most 28.5"):
        parse_target("slow", target_json(29), rules=rules)


# -- point 2: redact the final text, then cut it -------------------------------------------------------------


def test_an_excerpt_is_redacted_before_it_is_cut() -> None:
    token = "straddle-SECRET-1a2b3c4d"
    reply = Reply(400, {}, b"x" * (BODY_EXCERPT - 10) + token.encode())

    text = excerpt(reply, [token])

    assert text == "x" * (BODY_EXCERPT - 10) + "***"
    assert token[:10] not in text


def test_a_redirect_location_is_redacted_with_the_rest_of_the_detail() -> None:
    token = "location-SECRET-99"
    failure = failure_for_status(
        302, {"Location": f"https://sso.example/?t={token}"}, "POST on b answered 302", [token]
    )

    assert failure.error == "invalid_target"
    assert "redirect to https://sso.example/?t=***" in failure.detail
    assert token not in failure.detail


# -- point 5: only_targets is capped, unknown names share one letter ----------------------------------------


def test_only_targets_over_the_cap_is_an_invalid_message() -> None:
    body = json.dumps(envelope(BEARS, only_targets=[f"t{i}" for i in range(MAX_ONLY_TARGETS + 1)]))

    with pytest.raises(InvalidMessage, match=f"'only_targets' names more than {MAX_ONLY_TARGETS} targets"):
        parse_envelope(body)
    assert parse_envelope(json.dumps(envelope(BEARS, only_targets=["t"] * MAX_ONLY_TARGETS))).only_targets


def test_all_unknown_only_targets_names_are_one_rejection_aimed_at_all_of_them() -> None:
    names = [f"ghost-{i}-" + "y" * 500 for i in range(MAX_ONLY_TARGETS)]
    parsed = parse_envelope(json.dumps(envelope(BEARS, only_targets=names)))

    plan = route(parsed, Catalog())

    ((label, reason),) = plan.rejected
    assert len(label) <= MAX_LABEL_CHARS
    assert label.startswith("ghost-0-")
    assert label.endswith("more")
    assert plan.names_of(label) == tuple(names)
    assert reason.startswith(f"{MAX_ONLY_TARGETS} targets named in only_targets do not exist: ghost-0-")
    assert len(reason) < 1000
    body = json.loads(parsed.dead_letter_body(*plan.names_of(label)))
    assert body["only_targets"] == names


def test_a_dead_letter_s_target_attribute_holds_only_characters_sqs_accepts() -> None:
    letter = DeadLetter.now(body="{}", target="ghost\x01\ufffe", error="invalid_target", detail="d", attempts=1)

    for value in letter.message_attributes().values():
        assert sqs_refused_characters(value["StringValue"]) == []


# -- point 7: the record's own retry waits at least the hold ------------------------------------------------


def test_a_retry_waits_at_least_a_fractional_hold() -> None:
    from dataset_forwarder.outcomes import retry_delay_s

    assert retry_delay_s(1, 2.5, base_s=0, cap_s=900) >= 2.5  # SQS takes whole seconds: rounded up, not to even
    assert retry_delay_s(1, 0.2, base_s=0, cap_s=900) == 1
    assert retry_delay_s(1, 7.5, base_s=0, cap_s=5) == 5  # the cap still wins
