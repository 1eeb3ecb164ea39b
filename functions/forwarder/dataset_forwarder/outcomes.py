"""Delivery outcomes: classify an HTTP answer or a network error as delivered, transient or permanent."""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:
    from .transport import Reply

MAX_DETAIL = 1000
BODY_EXCERPT = 300
MAX_RETRY_AFTER_S = 86400.0  # a longer Retry-After is nonsense; the caller caps lower anyway
TRANSIENT_STATUSES = frozenset({408, 429})

# The dead-letter `error` values that are not http_NNN (docs/operate.md, "Dead letters").
TIMEOUT = "timeout"
CONNECTION = "connection"
UNKNOWN_DATASET = "unknown_dataset"
UNKNOWN_DAG = "unknown_dag"
AUTH = "auth"
INVALID_MESSAGE = "invalid_message"
INVALID_TARGET = "invalid_target"


class DeliveryFailed(Exception):
    """A delivery did not succeed; `error` is the dead-letter error code, `detail` is secret-free."""

    def __init__(self, error: str, detail: str, *, transient: bool, retry_after_s: float | None = None) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail[:MAX_DETAIL]
        self.transient = transient
        self.retry_after_s = retry_after_s


class MayHaveLanded(DeliveryFailed):
    """A failure after which the target may hold the event although we could not see it.

    The POST left and its answer was lost (a timeout or a reset while waiting), or an earlier ambiguous try
    could not be checked. A dead letter for it is marked unconfirmed. `hold_s`: how long the ledger keeps other
    copies of the pair waiting after it, so that a POST still on its way lands before anyone checks the target
    (0: they check at once).
    """

    def __init__(
        self,
        error: str,
        detail: str,
        *,
        transient: bool,
        retry_after_s: float | None = None,
        hold_s: float = 0.0,
    ) -> None:
        super().__init__(error, detail, transient=transient, retry_after_s=retry_after_s)
        self.hold_s = hold_s


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


def failure_for_status(
    status: int, headers: Mapping[str, str], detail: str, secrets: Iterable[str] = ()
) -> DeliveryFailed:
    """The failure a non-2xx answer means. 404 is left to the caller when it has more context.

    The final detail (with a redirect's Location) is redacted of every credential in `secrets`.
    """
    retry_after_s = None
    if is_transient_status(status):
        error, transient = f"http_{status}", True
        retry_after_s = parse_retry_after(headers.get("Retry-After"))
    elif status in (401, 403):
        error, transient = AUTH, False
    elif status == 404:
        error, transient = UNKNOWN_DATASET, False
    elif 300 <= status <= 399:
        error, transient = INVALID_TARGET, False
        detail = f"{detail} (redirect to {headers.get('Location', '?')} not followed: fix the target url)"
    elif 400 <= status <= 599:
        error, transient = f"http_{status}", False
    else:
        error, transient = (f"http_{status}" if status >= 100 else CONNECTION), True
    return DeliveryFailed(error, redact(detail, secrets), transient=transient, retry_after_s=retry_after_s)


def excerpt(reply: Reply, secrets: Iterable[str]) -> str:
    """The start of an answer's body for a failure's detail: redacted first, then cut."""
    text = redact(reply.content.decode("utf-8", errors="replace"), secrets)  # the whole body: nothing cut yet
    return " ".join(text.split())[:BODY_EXCERPT]


MIN_SECRET_LENGTH = 4


def _forms(secret: str) -> set[str]:
    """The ways a credential can come back in a downstream's answer: as is, JSON-escaped, URL-encoded."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote_plus(secret),
    }


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of a secret, in each of its encodings, with ***.

    Redact the final text, then cut it: a secret cut in half is no longer recognised.
    Values shorter than 4 characters are left alone (they would match everywhere).
    """
    forms = {form for secret in secrets if secret and len(secret) >= MIN_SECRET_LENGTH for form in _forms(secret)}
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(re.escape(form), "***", text, flags=re.IGNORECASE) if "%" in form else text.replace(form, "***")
    return text


def retry_delay_s(
    receive_count: int,
    retry_after_s: float | None,
    *,
    base_s: float,
    cap_s: int,
    rng: random.Random | None = None,
) -> int:
    """Visibility delay before the next try: exponential with jitter, at least Retry-After (rounded up), capped."""
    backoff: float = base_s * 2 ** min(max(0, receive_count - 1), 30)
    jitter: float = (rng or random).uniform(0, backoff / 2)
    delay = min(float(cap_s), max(backoff / 2 + jitter, retry_after_s or 0.0))
    # SQS takes whole seconds: never below Retry-After (a hold of 2.5 s must not become 2 s)
    return math.ceil(delay) if delay == retry_after_s else round(delay)
