"""Delivery outcomes: classify an HTTP answer or a network error as delivered, transient or permanent."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_DETAIL = 1000
MAX_RETRY_AFTER_S = 86400.0  # a longer Retry-After is nonsense; the caller caps lower anyway
TRANSIENT_STATUSES = frozenset({408, 429})

# The dead-letter `error` values of DESIGN.md §6 that are not http_NNN.
TIMEOUT = "timeout"
CONNECTION = "connection"
UNKNOWN_DATASET = "unknown_dataset"
AUTH = "auth"
INVALID_MESSAGE = "invalid_message"
INVALID_TARGET = "invalid_target"


class DeliveryFailed(Exception):
    """A delivery did not succeed; `error` is the dead-letter error code, `detail` is secret-free.

    `may_have_landed`: the target may hold the event although we could not see it: the POST left and its answer
    was lost (a timeout or a reset while waiting), or an earlier ambiguous try could not be checked. A dead letter
    for such a failure is marked unconfirmed.
    """

    def __init__(
        self,
        error: str,
        detail: str,
        *,
        transient: bool,
        retry_after_s: float | None = None,
        may_have_landed: bool = False,
    ) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail[:MAX_DETAIL]
        self.transient = transient
        self.retry_after_s = retry_after_s
        self.may_have_landed = may_have_landed


class AlreadyInFlight(Exception):
    """Another copy of this event is being delivered to this target right now; try again later."""


def is_transient_status(status: int) -> bool:
    return status in TRANSIENT_STATUSES or 500 <= status <= 599


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(MAX_RETRY_AFTER_S, max(0.0, (when - (now or datetime.now(UTC))).total_seconds()))


def failure_for_status(status: int, headers: Mapping[str, str], detail: str) -> DeliveryFailed:
    """The failure a non-2xx answer means. 404 is left to the caller when it has more context."""
    if is_transient_status(status):
        return DeliveryFailed(
            f"http_{status}", detail, transient=True, retry_after_s=parse_retry_after(headers.get("Retry-After"))
        )
    if status in (401, 403):
        return DeliveryFailed(AUTH, detail, transient=False)
    if status == 404:
        return DeliveryFailed(UNKNOWN_DATASET, detail, transient=False)
    if 300 <= status <= 399:
        location = headers.get("Location", "?")
        return DeliveryFailed(
            INVALID_TARGET, f"{detail} (redirect to {location} not followed: fix the target url)", transient=False
        )
    if 400 <= status <= 599:
        return DeliveryFailed(f"http_{status}", detail, transient=False)
    return DeliveryFailed(f"http_{status}" if status >= 100 else CONNECTION, detail, transient=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a secret value (and trivially short ones never) with ***."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def retry_delay_s(
    receive_count: int,
    retry_after_s: float | None,
    *,
    base_s: float,
    cap_s: int,
    rng: random.Random | None = None,
) -> int:
    """Visibility delay before the next try: exponential with jitter, at least Retry-After, capped."""
    backoff: float = base_s * 2 ** min(max(0, receive_count - 1), 30)
    jitter: float = (rng or random).uniform(0, backoff / 2)
    delay = min(float(cap_s), max(backoff / 2 + jitter, retry_after_s or 0.0))
    return round(delay)
