"""The real handler, fed by SQS on moto server, delivering to fake Airflow APIs on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from devkit.airflow_api import FakeAirflow, Fault
from devkit.aws import ForwarderStack
from devkit.envelopes import envelope
from devkit.lambda_sqs import LambdaSqsDriver
from tests.integration.conftest import polled

BEARS = "s3://bucket/bears"


def v3_token_target(stack: ForwarderStack, fake: FakeAirflow, name: str, datasets: list[str]) -> None:
    secret = stack.put_secret(name, fake.password if hasattr(fake, "password") else "admin-pw")
    stack.put_target(
        name,
        {
            "url": fake.url,
            "airflow": "auto",
            "datasets": datasets,
            "auth": {"type": "airflow-token", "username": "admin", "secret": secret},
            "timeout_s": 2,
        },
    )


def test_fan_out_reaches_three_targets_of_mixed_airflow_versions_once_each(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    af2 = airflow("2", auth="basic", password="pw-two")
    af3_token = airflow("3", auth="airflow-token", password="pw-three")
    af3_bearer = airflow("3", auth="bearer", token="astro-token-1234")
    for fake in (af2, af3_token, af3_bearer):
        fake.add_dataset(BEARS)
    stack.put_target(
        "team-b",
        {
            "url": af2.url,
            "airflow": "2",
            "datasets": [BEARS],
            "auth": {"type": "basic", "username": "admin", "secret": stack.put_secret("team-b", "pw-two")},
        },
    )
    stack.put_target(
        "team-c",
        {
            "url": af3_token.url,
            "datasets": ["s3://bucket/*"],
            "auth": {"type": "airflow-token", "username": "admin", "secret": stack.put_secret("team-c", "pw-three")},
        },
    )
    stack.put_target(
        "team-d",
        {
            "url": af3_bearer.url,
            "airflow": "3",
            "datasets": [BEARS],
            "auth": {"type": "bearer", "secret": stack.put_secret("team-d", "astro-token-1234")},
        },
    )
    sent = envelope(BEARS, extra={"rows": 42})
    stack.send(sent)

    invocations = lambda_driver.drain()

    assert [inv.response for inv in invocations] == [{"batchItemFailures": []}]
    for fake in (af2, af3_token, af3_bearer):
        [event] = fake.events
        assert event.uri == BEARS
        assert event.extra["rows"] == 42
        assert event.extra["dataset_forwarder"] == {
            "id": sent["id"],
            "source": sent["source"],
            "trail": ["team-a-prod"],
        }
    assert stack.dead_letters() == []


def test_glob_routes_only_matching_uris(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    lake = airflow("3")
    for uri in ("s3://lake/raw/orders.parquet", "s3://lake/raw/2026/11/customers.parquet", "s3://lake/curated/x"):
        lake.add_dataset(uri)
    stack.put_target("lake", {"url": lake.url, "datasets": ["s3://lake/raw/*"]})
    for uri in ("s3://lake/raw/orders.parquet", "s3://lake/raw/2026/11/customers.parquet", "s3://lake/curated/x"):
        stack.send(envelope(uri))

    lambda_driver.drain()

    assert sorted(e.uri for e in lake.events) == [
        "s3://lake/raw/2026/11/customers.parquet",
        "s3://lake/raw/orders.parquet",
    ]


def test_transient_failure_retries_only_the_failed_target(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    healthy = served_target(BEARS, name="healthy")
    flaky = served_target(BEARS, name="flaky")
    flaky.inject(Fault(status=503, method="POST", path_prefix="/api/v2/assets/events"), times=2)
    message_id = stack.send(envelope(BEARS))

    invocations = lambda_driver.drain()

    assert [inv.failed_ids for inv in invocations] == [{message_id}, {message_id}, set()]
    assert len(healthy.events) == 1
    assert healthy.count("POST", "/api/v2/assets/events") == 1
    assert len(flaky.events) == 1
    assert flaky.count("POST", "/api/v2/assets/events") == 3
    assert stack.dead_letters() == []


def test_permanent_401_dead_letters_at_once_with_reason(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("3", auth="bearer", token="the-right-token")
    fake.add_dataset(BEARS)
    stack.put_target(
        "team-b",
        {
            "url": fake.url,
            "airflow": "3",
            "datasets": [BEARS],
            "auth": {"type": "bearer", "secret": stack.put_secret("team-b", "a-wrong-token")},
        },
    )
    sent = envelope(BEARS)
    stack.send(sent)

    invocations = lambda_driver.drain()

    assert [inv.failed_ids for inv in invocations] == [set()]
    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["target"] == "team-b"
    assert letter.attributes["error"] == "auth"
    assert letter.attributes["attempts"] == "1"
    assert "403" in letter.attributes["detail"]
    assert letter.attributes["failed_at"].startswith("20")
    assert letter.envelope == {**sent, "only_targets": ["team-b"]}
    assert fake.events == []


def test_unknown_dataset_dead_letters_at_once(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    af2 = airflow("2")
    af3 = airflow("3")
    stack.put_target("old", {"url": af2.url, "datasets": [BEARS]})
    stack.put_target("new", {"url": af3.url, "datasets": [BEARS]})
    stack.send(envelope(BEARS))

    lambda_driver.drain()

    letters = {d.attributes["target"]: d.attributes for d in stack.dead_letters(expected=2)}
    assert letters["old"]["error"] == "unknown_dataset"
    assert letters["new"]["error"] == "unknown_dataset"
    assert af2.count("POST", "/api/v1/datasets/events") == 1


def test_max_attempts_exhausted_dead_letters_with_attempt_count(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, name="down", version="2")
    fake.inject(Fault(status=502, method="POST"), times=10)
    stack.send(envelope(BEARS))

    invocations = lambda_driver.drain()

    assert len(invocations) == 3  # MAX_ATTEMPTS=3 in these tests
    [letter] = stack.dead_letters(expected=1)
    assert letter.attributes["error"] == "http_502"
    assert letter.attributes["attempts"] == "3"
    assert fake.events == []


def test_malformed_bodies_are_dead_lettered_and_good_records_still_delivered(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, pinned=False)
    bad_bodies = [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({**envelope(BEARS), "version": 2}),
        json.dumps({k: v for k, v in envelope(BEARS).items() if k != "uri"}),
        json.dumps({**envelope(BEARS), "extra": "a string"}),
        json.dumps({**envelope(BEARS), "version": True}),
    ]
    for body in bad_bodies:
        stack.send(body)
    stack.send(envelope(BEARS))

    invocations = lambda_driver.drain()

    assert all(inv.failed_ids == set() for inv in invocations)
    assert len(fake.events) == 1
    letters = stack.dead_letters(expected=len(bad_bodies))
    assert sorted(d.body for d in letters) == sorted(bad_bodies)
    assert {d.attributes["error"] for d in letters} == {"invalid_message"}
    assert {d.attributes["target"] for d in letters} == {"-"}


def test_unrouted_event_is_acknowledged_and_counted(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, capsys: object
) -> None:
    stack.send(envelope("s3://nobody/listens"))

    invocations = lambda_driver.drain()

    assert [inv.failed_ids for inv in invocations] == [set()]
    assert stack.dead_letters() == []
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]  # type: ignore[attr-defined]
    assert any(doc.get("Unrouted") in (1.0, [1.0]) for doc in emf)


def test_trail_loop_guard_skips_targets_already_passed(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    team_a = served_target(BEARS, name="team-a-prod", pinned=False)
    team_c = served_target(BEARS, name="team-c", pinned=False)
    stack.send(envelope(BEARS, trail=["team-a-prod", "team-b"]))

    lambda_driver.drain()

    assert team_a.events == []
    assert len(team_c.events) == 1
    assert team_c.events[0].extra["dataset_forwarder"]["trail"] == ["team-a-prod", "team-b"]


def test_only_targets_limits_delivery_and_unknown_names_dead_letter(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    chosen = served_target(BEARS, name="chosen", pinned=False)
    other = served_target(BEARS, name="other", pinned=False)
    stack.put_target("off", {"url": other.url, "datasets": [BEARS], "enabled": False})
    stack.send(envelope(BEARS, only_targets=["chosen", "gone", "off"]))

    lambda_driver.drain()

    assert len(chosen.events) == 1
    assert other.events == []
    letters = {d.attributes["target"]: d for d in stack.dead_letters(expected=2)}
    assert set(letters) == {"gone", "off"}
    assert {d.attributes["error"] for d in letters.values()} == {"invalid_target"}
    assert "does not exist" in letters["gone"].attributes["detail"]
    assert "disabled" in letters["off"].attributes["detail"]
    assert letters["gone"].envelope["only_targets"] == ["gone"]


def test_airflow3_substring_match_picks_the_exact_asset(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("3")
    decoy = fake.add_dataset("s3://b/bears-2")
    fake.add_dataset("S3://B/BEARS")
    exact = fake.add_dataset("s3://b/bears")
    assert decoy < exact
    stack.put_target("team-b", {"url": fake.url, "airflow": "3", "datasets": ["s3://b/*"]})
    stack.send(envelope("s3://b/bears"))

    lambda_driver.drain()

    [event] = fake.events
    assert event.asset_id == exact


def test_airflow_token_is_fetched_again_once_when_rejected(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, password="pw", pinned=False)
    stack.send(envelope(BEARS))
    lambda_driver.drain()
    fake.revoke_jwts()  # the cached JWT is now refused
    stack.send(envelope(BEARS))

    lambda_driver.drain()

    assert len(fake.events) == 2
    assert fake.count("POST", "/auth/token") == 2
    assert stack.dead_letters() == []


def test_broken_target_parameter_is_skipped_and_the_good_one_works(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    forwarder_logs: object,
) -> None:
    fake = served_target(BEARS, name="good", pinned=False)
    stack.put_target("bad-json", "{not json")
    stack.put_target("bad-auth", {"url": fake.url, "datasets": [BEARS], "auth": {"type": "kerberos"}})
    stack.put_target("nested/name", {"url": fake.url, "datasets": [BEARS]})
    stack.send(envelope(BEARS))

    invocations = lambda_driver.drain()

    assert [inv.failed_ids for inv in invocations] == [set()]
    assert len(fake.events) == 1
    text = forwarder_logs.text  # type: ignore[attr-defined]
    for name in ("bad-json", "bad-auth", "nested/name"):
        assert f'"target":"{name}"' in text.replace(" ", "")


def test_the_delivered_line_says_when_the_listener_emitted_the_event(
    stack: ForwarderStack,
    lambda_driver: LambdaSqsDriver,
    served_target: Callable[..., FakeAirflow],
    forwarder_logs: object,
) -> None:
    fake = served_target(BEARS)
    stack.send(envelope(BEARS, event_id="e-known", emitted_at="2026-11-23T23:00:00.123456Z"))
    stack.send(envelope(BEARS, event_id="e-garbled", emitted_at="x" * 5000))

    lambda_driver.drain()

    assert len(fake.events) == 2
    lines = [json.loads(line) for line in forwarder_logs.text.splitlines()]  # type: ignore[attr-defined]
    delivered = {line["event_id"]: line for line in lines if line.get("message") == "delivered"}
    assert delivered["e-known"]["emitted_at"] == "2026-11-23T23:00:00.123456+00:00"  # how old it is when delivered
    assert delivered["e-garbled"].get("emitted_at") is None  # what the upstream wrote is not echoed
    assert "x" * 100 not in forwarder_logs.text  # type: ignore[attr-defined]


def test_two_copies_in_flight_reach_the_target_once(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS)
    fake.inject(Fault(delay_s=0.5, method="POST"))
    copy = envelope(BEARS)
    stack.send(copy)
    stack.send(copy)

    lambda_driver.drain()

    assert len(fake.events) == 1
    assert stack.dead_letters() == []


def test_resent_event_is_not_posted_again(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, served_target: Callable[..., FakeAirflow]
) -> None:
    fake = served_target(BEARS, version="2", pinned=False)
    sent = envelope(BEARS)
    stack.send(sent)
    lambda_driver.drain()
    stack.send(sent)

    lambda_driver.drain()

    assert len(fake.events) == 1
    assert fake.count("POST", "/api/v1/datasets/events") == 1


def test_retry_of_a_record_does_not_post_again_to_a_target_it_dead_lettered(
    stack: ForwarderStack, lambda_driver: LambdaSqsDriver, airflow: Callable[..., FakeAirflow]
) -> None:
    refusing = airflow("3", auth="bearer", token="right")
    flaky = airflow("3")
    for fake in (refusing, flaky):
        fake.add_dataset(BEARS)
    stack.put_target(
        "refusing",
        {
            "url": refusing.url,
            "airflow": "3",
            "datasets": [BEARS],
            "auth": {"type": "bearer", "secret": stack.put_secret("refusing", "wrong")},
        },
    )
    stack.put_target("flaky", {"url": flaky.url, "airflow": "3", "datasets": [BEARS]})
    flaky.inject(Fault(status=503, method="POST"))
    message_id = stack.send(envelope(BEARS))
    first = polled(lambda_driver)
    assert first.failed_ids == {message_id}
    calls_after_first_try = len(refusing.requests)

    lambda_driver.drain()

    assert len(refusing.requests) == calls_after_first_try
    assert len(flaky.events) == 1
    assert [d.attributes["target"] for d in stack.dead_letters(expected=1)] == ["refusing"]


def test_unreachable_dead_letter_queue_keeps_the_record_for_retry(
    stack: ForwarderStack, airflow: Callable[..., FakeAirflow], monkeypatch: pytest.MonkeyPatch
) -> None:
    import app
    from dataset_forwarder import runtime

    fake = airflow("3")
    stack.put_target("team-b", {"url": fake.url, "datasets": [BEARS]})  # no asset there: permanent failure
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", stack.dlq_url.replace("dlq-", "missing-"))
    runtime.reset()
    driver = LambdaSqsDriver(stack.sqs, stack.queue_url, app.lambda_handler)
    message_id = stack.send(envelope(BEARS))

    invocation = driver.poll()

    assert invocation is not None
    assert invocation.failed_ids == {message_id}
    assert driver.pending() == 1
