"""Hostile downstreams as real servers on 127.0.0.1 (issue 14): no secret in any output, no stall, letters SQS takes.

Every dead letter read here goes through `ForwarderStack.dead_letters`, which fails when real SQS would refuse
the letter's body or any attribute (devkit/aws.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from urllib.parse import quote, quote_plus

import pytest

from dataset_forwarder.dead_letters import UNCONFIRMED
from devkit.airflow_api import FakeAirflow, Fault
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.lambda_sqs import LambdaSqsDriver
from tests.integration.conftest import SeenByOperator, polled, wait_for

BEARS = "s3://bucket/bears"
EVENTS = "/api/v2/assets/events"


# -- point 2: no secret in a dead letter, a log line or stdout ------------------------------------------------


def test_a_token_straddling_the_excerpt_cut_is_redacted_before_the_cut(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    everything_seen: SeenByOperator,
) -> None:
    token = "straddle-SECRET-1a2b3c4d5e6f"
    fake = served_target(BEARS, token=token)
    # the excerpt keeps 300 characters: the token starts 10 characters before the cut
    fake.inject(Fault(status=400, method="POST", raw_body=b"x" * 290 + token.encode() + b" and more"))
    stack.send(envelope(BEARS))

    lambda_driver.drain()

    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "http_400"
    assert UNCONFIRMED not in letter.attributes  # refused: the target does not hold it
    seen = everything_seen([letter])
    assert "x" * 100 in letter.attributes["detail"]  # the excerpt is there, only the token is not
    assert token[:10] not in seen


def test_a_redirect_whose_location_carries_the_token_is_redacted(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    everything_seen: SeenByOperator,
) -> None:
    token = "location-SECRET-77aa88bb99"
    fake = served_target(BEARS, token=token)
    location = f"https://login.example/sso?token={token}&next=/api"
    fake.inject(Fault(status=302, method="POST", headers=(("Location", location),)))
    stack.send(envelope(BEARS))

    lambda_driver.drain()

    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "invalid_target"
    assert "redirect to https://login.example/sso?token=***" in letter.attributes["detail"]
    assert UNCONFIRMED not in letter.attributes
    assert token not in everything_seen([letter])


def test_a_token_echoed_json_escaped_or_url_encoded_is_redacted(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    everything_seen: SeenByOperator,
) -> None:
    token = 'echo/"SE CRET"+&=9f8e7d6c'
    fake = served_target(BEARS, token=token)
    forms = {
        "json": json.dumps(token)[1:-1],
        "url": quote(token, safe=""),
        "url-lower": quote(token, safe="").lower(),
        "form": quote_plus(token),
    }
    assert all(token not in form for form in forms.values())  # each is a form the raw value does not match
    echo = json.dumps({"detail": f"cannot use {token}", "seen": [forms["url"], forms["url-lower"], forms["form"]]})
    fake.inject(Fault(status=400, method="POST", raw_body=echo.encode()))
    stack.send(envelope(BEARS))

    lambda_driver.drain()

    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "http_400"
    assert "cannot use ***" in letter.attributes["detail"]
    seen = everything_seen([letter])
    for form in [token, *forms.values()]:
        assert form not in seen


def test_an_auth_token_answer_is_never_excerpted(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    everything_seen: SeenByOperator,
) -> None:
    password = "pw-SECRET-31415926"
    fake = served_target(BEARS, password=password)
    # /auth/token echoes what it was sent, in a shape no redaction can know (reversed)
    echo = json.dumps({"detail": f"ECHO-MARKER-271 you sent {password[::-1]}"}).encode()
    fake.inject(Fault(status=400, method="POST", path_prefix="/auth/token", raw_body=echo), times=2)
    stack.send(envelope(BEARS))

    lambda_driver.drain()

    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "auth"
    assert UNCONFIRMED not in letter.attributes
    seen = everything_seen([letter])
    assert "ECHO-MARKER-271" not in seen
    assert password[::-1] not in seen
    assert fake.count("POST", EVENTS) == 0


# -- point 6: only characters SQS accepts ---------------------------------------------------------------------


def test_every_dead_letter_holds_only_characters_sqs_accepts(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS)
    hostile = b"refused \x00\x01\x07\x1b\x7f " + "\ufffe\uffff".encode() + b" end"
    fake.inject(Fault(status=400, method="POST", raw_body=hostile))
    event = envelope(BEARS, extra={"odd": "ends with \uffff", "fine": "bär \U0001f43b"})
    stack.send(event)  # json.dumps escapes U+FFFF: the queued message itself is plain ASCII

    lambda_driver.drain()

    [letter] = stack.dead_letters(expected=1)  # the view fails on any character SQS refuses
    assert letter.attributes["error"] == "http_400"
    assert "refused" in letter.attributes["detail"]
    assert " end" in letter.attributes["detail"]
    assert letter.envelope["extra"] == event["extra"]  # the same JSON value, so a redrive posts the same extra
    assert letter.envelope["only_targets"] == ["team-b"]


# -- point 7: the hold after an ambiguous POST follows the target's timeout -------------------------------------


def test_a_second_copy_during_the_hold_after_an_ambiguous_post_is_not_posted(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    # RETRY_BASE_DELAY_S=0 here: the hold is 2 x timeout_s = 2 s, while the POST lands 1.6 s after it left
    fake = served_target(BEARS, timeout_s=1)
    fake.inject(Fault(delay_s=1.6, method="POST"))
    event = envelope(BEARS)
    stack.send(event)
    first = polled(lambda_driver)
    assert first.failed_ids

    copy_id = stack.send(event)  # the same event again, while the POST may still land
    second = polled(lambda_driver)

    assert second.failed_ids == {copy_id}  # told the pair is in flight: retried later
    assert fake.count("GET", EVENTS) == 0  # the copy did not even check: it did not take the pair over
    fake.wait_for_events(1, timeout_s=5)
    lambda_driver.drain()
    assert len(fake.events) == 1
    assert fake.count("POST", EVENTS) == 1


def test_the_record_s_own_retry_after_an_ambiguous_post_waits_at_least_the_hold(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, timeout_s=1.5)
    fake.inject(Fault(delay_s=2.0, method="POST"))
    message_id = stack.send(envelope(BEARS))
    first = polled(lambda_driver)
    assert first.failed_ids == {message_id}
    failed_at = time.monotonic()

    retried: list[float] = []

    def retried_once() -> bool:
        invocation = lambda_driver.poll()
        if invocation is not None:
            retried.append(time.monotonic())
        return bool(retried)

    wait_for(retried_once, timeout_s=10, what="the retry", every_s=0.1)

    assert retried[0] - failed_at >= 2.5  # the hold: 2 x 1.5 s, rounded by SQS to whole seconds
    lambda_driver.drain()
    assert len(fake.events) == 1
    assert fake.count("POST", EVENTS) == 1  # the retry found the POST downstream


# -- point 12: a landed POST stays landed -----------------------------------------------------------------------


def test_a_2xx_answer_nested_too_deep_still_records_the_delivery(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS)
    fake.inject(Fault(method="POST", path_prefix=EVENTS, raw_body=b"[" * 100_000))  # handled, then a hostile answer
    event = envelope(BEARS)
    stack.send(event)

    first = polled(lambda_driver)

    assert first.failed_ids == set()
    assert len(fake.events) == 1
    stack.send(event)  # a copy: the ledger says delivered, so it is not posted again
    lambda_driver.drain()
    assert fake.count("POST", EVENTS) == 1
    assert fake.count("GET", EVENTS) == 0  # recorded as delivered, not as may-have-landed
    assert stack.dead_letters(expected=0, timeout_s=1) == []


# -- point 4: no downstream stalls a batch --------------------------------------------------------------------


def test_a_trickling_answer_ends_at_the_target_timeout(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, timeout_s=2)
    # one byte every 0.5 s: each read is quick, the whole answer would take 18 s
    fake.inject(Fault(method="GET", path_prefix="/api/v2/assets?", raw_body=b" " * 36, trickle_s=0.5))
    message_id = stack.send(envelope(BEARS))

    started = time.monotonic()
    first = lambda_driver.poll()
    took = time.monotonic() - started

    assert took < 6  # ~2 s (the lookup is read-only: urllib3 does not repeat a total timeout)
    assert first is not None
    assert first.failed_ids == {message_id}
    assert fake.count("POST", EVENTS) == 0


def test_a_huge_answer_is_cut_and_does_not_stall_the_delivery(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, timeout_s=5)
    fake.inject(Fault(status=400, method="POST", raw_body=b"no ", body_bytes=300 * 1024 * 1024))
    stack.send(envelope(BEARS))

    started = time.monotonic()
    lambda_driver.drain()
    took = time.monotonic() - started

    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "http_400"
    assert took < 5
    assert fake.bytes_streamed < 64 * 1024 * 1024  # the rest was never read


def test_the_did_it_land_check_stops_when_the_invocation_runs_out_of_time(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, timeout_s=1)
    fake.seed_events(BEARS, [f"another-{i}" for i in range(2100)])  # 21 full pages, all newer than the envelope
    fake.inject(Fault(delay_s=0.8, method="GET", path_prefix=EVENTS), times=20)  # each page takes 0.8 s
    lambda_driver.timeout_s = 9  # 9 s - 1 s for the POST - 3 s margin: about 5 s of checking
    message_id = stack.send(envelope(BEARS, only_targets=["team-b"]))  # a redrive: checks before posting

    started = time.monotonic()
    first = lambda_driver.poll()
    took = time.monotonic() - started

    assert first is not None
    assert first.failed_ids == {message_id}
    assert took < 9  # ended inside the invocation
    assert 3 <= fake.count("GET", EVENTS) <= 8  # not 20 pages
    assert fake.count("POST", EVENTS) == 0  # never posted without having looked


# -- the unconfirmed attribute: exactly the letters whose target may hold the pair ---------------------------


def test_unconfirmed_marks_exactly_the_letters_whose_target_may_hold_the_pair(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataset_forwarder import runtime

    monkeypatch.setenv("MAX_ATTEMPTS", "1")  # every try is the last: each failure is a letter at once
    runtime.reset()
    uris = {"lost-answer": BEARS, "lookup-timeout": "s3://bucket/lookup", "refused": "s3://bucket/refused"}
    fakes = {}
    for name, uri in uris.items():
        fakes[name] = served_target(uri, name=name, timeout_s=1)
    fakes["lost-answer"].inject(Fault(delay_s=1.6, method="POST"))  # the POST lands after we gave up on it
    fakes["lookup-timeout"].inject(Fault(delay_s=1.6, method="GET", path_prefix="/api/v2/assets?"))  # before any POST
    fakes["refused"].inject(Fault(status=503, method="POST"))  # answered: not there
    lost = envelope(BEARS)
    stack.send(lost)
    assert lambda_driver.poll() is not None
    stack.send(lost)  # a copy while the pair is held: told it is in flight, on its last try
    assert lambda_driver.poll() is not None
    stack.send(envelope(uris["lookup-timeout"]))
    stack.send(envelope(uris["refused"]))
    lambda_driver.drain()

    letters = stack.dead_letters(expected=4)
    marks = sorted((d.attributes["target"], d.attributes["error"], d.attributes.get(UNCONFIRMED)) for d in letters)
    assert marks == [
        ("lookup-timeout", "timeout", None),
        ("lost-answer", "timeout", "true"),  # the POST lost its answer
        ("lost-answer", "timeout", "true"),  # the copy: the first try's POST may land
        ("refused", "http_503", None),
    ]
    fakes["lost-answer"].wait_for_events(1, timeout_s=5)  # and indeed it did
