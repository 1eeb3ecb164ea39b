"""Classifying HTTP answers (docs/operate.md), Retry-After, retry delays and redaction."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from dataset_forwarder.outcomes import (
    AUTH,
    INVALID_TARGET,
    MAX_DETAIL,
    UNKNOWN_DATASET,
    DeliveryFailed,
    MayHaveLanded,
    failure_for_status,
    is_transient_status,
    parse_retry_after,
    redact,
    retry_delay_s,
)

NOW = datetime(2026, 11, 23, 23, 0, 0, tzinfo=UTC)


# -- failure_for_status -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retried_with_http_error_code(status: int) -> None:
    failure = failure_for_status(status, {}, "boom")

    assert failure.transient
    assert failure.error == f"http_{status}"
    assert failure.detail == "boom"
    assert failure.retry_after_s is None
    assert is_transient_status(status)


def test_transient_status_carries_retry_after() -> None:
    failure = failure_for_status(429, {"Retry-After": "30"}, "slow down")
    assert failure.retry_after_s == 30.0


@pytest.mark.parametrize("status", [401, 403])
def test_permanent_401_and_403_are_auth_failures(status: int) -> None:
    failure = failure_for_status(status, {}, "denied")

    assert failure.error == AUTH == "auth"
    assert not failure.transient


def test_permanent_404_is_unknown_dataset() -> None:
    failure = failure_for_status(404, {}, "no such dataset")

    assert failure.error == UNKNOWN_DATASET == "unknown_dataset"
    assert not failure.transient


@pytest.mark.parametrize("status", [400, 409, 422])
def test_other_4xx_are_permanent_http_errors(status: int) -> None:
    failure = failure_for_status(status, {}, "bad body")

    assert failure.error == f"http_{status}"
    assert not failure.transient
    assert not is_transient_status(status)


def test_permanent_failure_ignores_retry_after() -> None:
    assert failure_for_status(400, {"Retry-After": "30"}, "x").retry_after_s is None


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_invalid_target_naming_the_location(status: int) -> None:
    failure = failure_for_status(status, {"Location": "https://login.example/sso"}, "GET /api/v2/version")

    assert failure.error == INVALID_TARGET == "invalid_target"
    assert not failure.transient
    assert "https://login.example/sso" in failure.detail
    assert "not followed" in failure.detail
    assert failure.detail.startswith("GET /api/v2/version")


def test_redirect_without_location_still_explains() -> None:
    failure = failure_for_status(302, {}, "x")
    assert failure.error == INVALID_TARGET
    assert "redirect to ?" in failure.detail


def test_informational_status_is_transient() -> None:
    failure = failure_for_status(100, {}, "x")
    assert failure.transient
    assert failure.error == "http_100"


# -- parse_retry_after ------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("86400", 86400.0)])
def test_retry_after_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    value = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(value, now=NOW) == 90.0


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    value = format_datetime(NOW - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(value, now=NOW) == 0.0


def test_retry_after_http_date_without_zone_is_read_as_utc() -> None:
    assert parse_retry_after("Mon, 23 Nov 2026 23:01:00 -0000", now=NOW) == 60.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "12abc", "Mon, 99 Foo 2026"])
def test_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", ["²", "١٢"], ids=["superscript-two", "arabic-indic-digits"])
def test_retry_after_non_ascii_digits_are_garbage(value: str) -> None:
    # str.isdigit() is true for these; float('²') raises, so they must be rejected before converting.
    assert parse_retry_after(value) is None


def test_retry_after_absurdly_long_number_is_finite() -> None:
    seconds = parse_retry_after("9" * 400)
    assert seconds is not None
    assert math.isfinite(seconds)


# -- retry_delay_s ----------------------------------------------------------------------------


def test_retry_delay_grows_with_receive_count() -> None:
    delays = [retry_delay_s(n, None, base_s=10, cap_s=100_000, rng=random.Random(7)) for n in range(1, 7)]

    for n, delay in enumerate(delays, start=1):
        backoff = 10 * 2 ** (n - 1)
        assert backoff / 2 - 0.5 <= delay <= backoff + 0.5
    assert delays == sorted(delays)
    assert delays[-1] > delays[0] * 10


def test_retry_delay_first_receive_is_between_half_and_full_base() -> None:
    rng = random.Random(1)
    for _ in range(200):
        assert 5 <= retry_delay_s(1, None, base_s=10, cap_s=900, rng=rng) <= 10


def test_retry_delay_receive_count_zero_is_treated_as_first() -> None:
    assert retry_delay_s(0, None, base_s=10, cap_s=900, rng=random.Random(3)) == retry_delay_s(
        1, None, base_s=10, cap_s=900, rng=random.Random(3)
    )


def test_retry_delay_honours_a_longer_retry_after() -> None:
    assert retry_delay_s(1, 120.0, base_s=10, cap_s=900, rng=random.Random(0)) == 120


def test_retry_delay_keeps_backoff_when_retry_after_is_shorter() -> None:
    delay = retry_delay_s(5, 1.0, base_s=10, cap_s=900, rng=random.Random(0))
    assert 80 <= delay <= 160


def test_retry_delay_is_capped() -> None:
    assert retry_delay_s(30, None, base_s=10, cap_s=900, rng=random.Random(0)) == 900
    assert retry_delay_s(1, 5000.0, base_s=10, cap_s=900, rng=random.Random(0)) == 900


def test_retry_delay_with_zero_base_and_no_retry_after_is_zero() -> None:
    assert retry_delay_s(4, None, base_s=0, cap_s=900) == 0


def test_retry_delay_is_deterministic_with_a_seeded_random() -> None:
    first = [retry_delay_s(n, None, base_s=10, cap_s=900, rng=random.Random(42)) for n in range(1, 6)]
    second = [retry_delay_s(n, None, base_s=10, cap_s=900, rng=random.Random(42)) for n in range(1, 6)]
    assert first == second


def test_retry_delay_is_an_int() -> None:
    assert isinstance(retry_delay_s(2, 3.7, base_s=1.5, cap_s=900, rng=random.Random(0)), int)


def test_retry_delay_is_capped_for_an_absurd_retry_after_header() -> None:
    assert retry_delay_s(1, parse_retry_after("9" * 400), base_s=10, cap_s=900, rng=random.Random(0)) == 900


def test_retry_delay_is_capped_for_an_infinite_retry_after() -> None:
    assert retry_delay_s(1, math.inf, base_s=10, cap_s=900, rng=random.Random(0)) == 900


def test_retry_delay_is_capped_for_a_huge_receive_count() -> None:
    assert retry_delay_s(5000, None, base_s=10, cap_s=900, rng=random.Random(0)) == 900


# -- redact -----------------------------------------------------------------------------------


def test_redact_replaces_every_occurrence_of_each_secret() -> None:
    text = "token abcd1234 and again abcd1234, password hunter22"
    assert redact(text, ["abcd1234", "hunter22"]) == "token *** and again ***, password ***"


def test_redact_leaves_short_and_empty_secrets_alone() -> None:
    assert redact("a b abc", ["", "a", "abc"]) == "a b abc"


def test_redact_without_secrets_returns_text_unchanged() -> None:
    assert redact("nothing to hide", []) == "nothing to hide"


def test_redact_handles_a_generator_of_secrets() -> None:
    assert redact("x-secret-x", (s for s in ["secret"])) == "x-***-x"


# -- DeliveryFailed ---------------------------------------------------------------------------


def test_delivery_failed_truncates_detail_to_1000_characters() -> None:
    failure = DeliveryFailed("http_500", "x" * 5000, transient=True)

    assert MAX_DETAIL == 1000
    assert len(failure.detail) == 1000


def test_delivery_failed_keeps_short_detail_and_fields() -> None:
    failure = DeliveryFailed("timeout", "no answer", transient=True, retry_after_s=3.0)

    assert (failure.error, failure.detail, failure.transient, failure.retry_after_s) == (
        "timeout",
        "no answer",
        True,
        3.0,
    )
    assert str(failure) == "timeout: no answer"


def test_may_have_landed_is_a_delivery_failure_that_carries_its_hold() -> None:
    failure = MayHaveLanded("timeout", "y" * 5000, transient=True, retry_after_s=20.0, hold_s=20.0)

    assert isinstance(failure, DeliveryFailed)
    assert (failure.error, len(failure.detail), failure.transient, failure.retry_after_s, failure.hold_s) == (
        "timeout",
        MAX_DETAIL,
        True,
        20.0,
        20.0,
    )
    assert MayHaveLanded("timeout", "no answer", transient=True).hold_s == 0.0
    assert not isinstance(DeliveryFailed("http_503", "busy", transient=True), MayHaveLanded)
