"""The HTTPS way in with the asset_event action, against the fake Airflow 2/3 REST APIs of devkit
(real HTTP on 127.0.0.1, no AWS), through the `Downstream` seam the forwarder uses."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dataset_forwarder import runtime
from dataset_forwarder.actions.asset_event import VERIFY_MAX_PAGES, VERIFY_PAGE_SIZE
from dataset_forwarder.airflow_rest import Posted
from dataset_forwarder.outcomes import (
    AUTH,
    CONNECTION,
    INVALID_TARGET,
    TIMEOUT,
    UNKNOWN_DATASET,
    DeliveryFailed,
)
from dataset_forwarder.targets import Target
from dataset_forwarder.transport import Reply, Transport
from dataset_forwarder.ways_in.auth import Auth
from dataset_forwarder.ways_in.https import HttpsWayIn
from devkit.airflow_api import FakeAirflow, Fault
from devkit.downstream import AirflowClient

BEARS = "s3://bucket/bears"
EXTRA: dict[str, Any] = {"rows": 42, "dataset_forwarder": {"id": "e1", "source": {}, "trail": ["team-a-prod"]}}
TOKEN_SECRET = "/dataset-forwarder/secrets/team-b"
PASSWORD_SECRET = "/dataset-forwarder/secrets/team-b-password"


class DictSecrets:
    """A secret source backed by dicts: `stored` is what SSM holds, `cached` what a cache would answer.

    Like SecretStore, a plain get() answers from the cache and get(fresh=True) reads the stored value
    (and caches it), so a rotated secret is only seen after a fresh read.
    """

    def __init__(self, stored: Mapping[str, str], *, cached: Mapping[str, str] | None = None) -> None:
        self.stored = dict(stored)
        self.cached = dict(cached or {})
        self.calls: list[tuple[str, bool]] = []

    def get(self, name: str, *, fresh: bool = False) -> str:
        self.calls.append((name, fresh))
        if fresh or name not in self.cached:
            self.cached[name] = self.stored[name]
        return self.cached[name]

    def known_values(self) -> list[str]:
        return list(self.cached.values())

    @property
    def fresh_reads(self) -> int:
        return sum(1 for _, fresh in self.calls if fresh)


def make_target(
    url: str,
    *,
    airflow: str = "auto",
    auth: Auth | None = None,
    timeout_s: float = 5.0,
    name: str = "team-b",
) -> Target:
    return Target(
        name=name,
        way_in=HttpsWayIn(url, auth or Auth("none")),
        airflow=airflow,
        datasets=("*",),
        timeout_s=timeout_s,
    )


def failure_of(client: AirflowClient, target: Target, uri: str = BEARS) -> DeliveryFailed:
    with pytest.raises(DeliveryFailed) as caught:
        client.deliver(target, uri, EXTRA)
    return caught.value


@pytest.fixture
def session() -> Iterator[Transport]:
    """A transport without retries: every request the client makes reaches the fake once."""
    with Transport(pool_size=4, max_hosts=8) as http:
        yield http


@pytest.fixture
def pooled_session() -> Iterator[Transport]:
    with runtime.http_transport(8) as http:
        yield http


@pytest.fixture
def v3() -> Iterator[FakeAirflow]:
    with FakeAirflow("3", datasets=[BEARS]) as fake:
        yield fake


@pytest.fixture
def v2() -> Iterator[FakeAirflow]:
    with FakeAirflow("2", datasets=[BEARS]) as fake:
        yield fake


@pytest.fixture
def client(session: Transport) -> AirflowClient:
    return AirflowClient(session, DictSecrets({}))


# -- version detection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "api", "v1_probes"),
    [pytest.param("3", "v2", 0, id="airflow3"), pytest.param("2", "v1", 1, id="airflow2")],
)
def test_auto_detects_the_airflow_version_and_caches_it(
    version: str, api: str, v1_probes: int, client: AirflowClient
) -> None:
    with FakeAirflow(version, datasets=[BEARS]) as fake:
        target = make_target(fake.url)

        first = client.deliver(target, BEARS, EXTRA)
        second = client.deliver(target, BEARS, EXTRA)

        assert first.api == second.api == api
        assert client.api_version(target) == version
        assert fake.count("GET", "/api/v2/version") == 1  # Airflow 3's path is asked first
        assert fake.count("GET", "/api/v1/version") == v1_probes  # and Airflow 2's only when that one is not there
        assert len(fake.events) == 2


def test_explicit_airflow_version_skips_the_probe(v3: FakeAirflow, client: AirflowClient) -> None:
    client.deliver(make_target(v3.url, airflow="3"), BEARS, EXTRA)

    assert v3.count("GET", "/api/v2/version") == 0
    assert len(v3.events) == 1


def test_server_error_on_version_probe_is_transient_and_not_cached(v3: FakeAirflow, client: AirflowClient) -> None:
    target = make_target(v3.url)
    v3.inject(Fault(status=500, path_prefix="/api/v2/version"))

    failure = failure_of(client, target)
    assert failure.error == "http_500"
    assert failure.transient

    assert client.deliver(target, BEARS, EXTRA).api == "v2"
    assert v3.count("GET", "/api/v2/version") == 2


def test_no_airflow_api_at_the_url_is_invalid_target(v3: FakeAirflow, client: AirflowClient) -> None:
    target = make_target(v3.url + "/nope")

    failure = failure_of(client, target)

    assert failure.error == INVALID_TARGET
    assert not failure.transient
    assert "/api/v2/version" in failure.detail
    assert "/api/v1/version" in failure.detail
    assert v3.count("GET", "/nope/api/v2/version") == 1
    assert v3.count("GET", "/nope/api/v1/version") == 1
    assert v3.events == []


# -- Airflow 2 --------------------------------------------------------------------------------


def test_v1_post_body_carries_dataset_uri_and_extra(session: Transport) -> None:
    with FakeAirflow("2", datasets=[BEARS], auth="basic", password="basic-pw-2") as fake:
        client = AirflowClient(session, DictSecrets({PASSWORD_SECRET: "basic-pw-2"}))
        target = make_target(fake.url, airflow="2", auth=Auth("basic", secret=PASSWORD_SECRET, username="admin"))

        posted = client.deliver(target, BEARS, EXTRA)

        assert posted == Posted(200, "v1", 1)
        (event,) = fake.events
        assert event.uri == BEARS
        assert event.extra == EXTRA
        assert event.asset_id is None
        assert event.authorization is not None
        assert event.authorization.startswith("Basic ")


def test_unknown_dataset_on_airflow2_is_permanent(v2: FakeAirflow, client: AirflowClient) -> None:
    failure = failure_of(client, make_target(v2.url, airflow="2"), "s3://bucket/nobody-knows")

    assert failure.error == UNKNOWN_DATASET
    assert not failure.transient
    assert "s3://bucket/nobody-knows" in failure.detail
    assert v2.events == []


# -- Airflow 3 --------------------------------------------------------------------------------


def test_v3_post_carries_asset_id_and_extra(v3: FakeAirflow, client: AirflowClient) -> None:
    posted = client.deliver(make_target(v3.url, airflow="3"), BEARS, EXTRA)

    assert posted == Posted(200, "v2", 1)
    (event,) = v3.events
    assert (event.uri, event.asset_id, event.extra) == (BEARS, 1, EXTRA)


def test_v3_substring_lookup_picks_the_exact_uri(client: AirflowClient) -> None:
    with FakeAirflow("3") as fake:
        fake.add_dataset("s3://bucket/bears-2")
        fake.add_dataset("S3://BUCKET/BEARS/cubs")
        fake.add_dataset("s3://bucket/bears/cubs")
        bears_id = fake.add_dataset(BEARS)

        client.deliver(make_target(fake.url), BEARS, EXTRA)

        (event,) = fake.events
        assert event.asset_id == bears_id == 4
        assert event.uri == BEARS


def test_v3_lookup_pages_through_many_substring_matches(client: AirflowClient) -> None:
    with FakeAirflow("3") as fake:
        for index in range(120):
            fake.add_dataset(f"{BEARS}-{index}")
        bears_id = fake.add_dataset(BEARS)

        client.deliver(make_target(fake.url, airflow="3"), BEARS, EXTRA)

        assert [event.asset_id for event in fake.events] == [bears_id]
        assert fake.count("GET", "/api/v2/assets") == 2


def test_v3_asset_id_is_cached_between_deliveries(v3: FakeAirflow, client: AirflowClient) -> None:
    target = make_target(v3.url, airflow="3")

    client.deliver(target, BEARS, EXTRA)
    client.deliver(target, BEARS, EXTRA)

    assert v3.count("GET", "/api/v2/assets") == 1
    assert v3.count("POST", "/api/v2/assets/events") == 2


def test_stale_cached_asset_id_is_resolved_once_more(v3: FakeAirflow, client: AirflowClient) -> None:
    target = make_target(v3.url, airflow="3")
    client.deliver(target, BEARS, EXTRA)
    endpoints = client.downstreams.get(target).endpoints()
    endpoints._ids[BEARS] = 999  # type: ignore[attr-defined]  # the asset was re-created downstream with a new id

    posted = client.deliver(target, BEARS, EXTRA)

    assert posted.status == 200
    assert [event.asset_id for event in v3.events] == [1, 1]
    assert v3.count("POST", "/api/v2/assets/events") == 3  # ok, 404 with the stale id, ok
    assert v3.count("GET", "/api/v2/assets") == 2
    assert endpoints._ids[BEARS] == 1  # type: ignore[attr-defined]


def test_unknown_dataset_on_airflow3_is_permanent(v3: FakeAirflow, client: AirflowClient) -> None:
    failure = failure_of(client, make_target(v3.url, airflow="3"), "s3://bucket/nobody-knows")

    assert failure.error == UNKNOWN_DATASET
    assert not failure.transient
    assert "s3://bucket/nobody-knows" in failure.detail
    assert v3.count("POST", "/api/v2/assets/events") == 0


# -- auth -------------------------------------------------------------------------------------


def test_airflow_token_jwt_is_cached_and_refreshed_once_after_revocation(session: Transport) -> None:
    with FakeAirflow("3", datasets=[BEARS], auth="airflow-token", password="jwt-pw") as fake:
        client = AirflowClient(session, DictSecrets({PASSWORD_SECRET: "jwt-pw"}))
        target = make_target(fake.url, auth=Auth("airflow-token", secret=PASSWORD_SECRET, username="admin"))

        client.deliver(target, BEARS, EXTRA)
        client.deliver(target, BEARS, EXTRA)
        assert fake.count("POST", "/auth/token") == 1

        fake.revoke_jwts()
        client.deliver(target, BEARS, EXTRA)

        assert fake.count("POST", "/auth/token") == 2
        assert fake.count("POST", "/api/v2/assets/events") == 4  # ok, ok, 403 with the revoked JWT, ok
        first, second, third = fake.events
        assert first.authorization == second.authorization != third.authorization


def test_airflow_token_is_fetched_again_shortly_before_it_expires(session: Transport) -> None:
    now = [time.time()]
    fake = FakeAirflow("3", datasets=[BEARS], auth="airflow-token", username="a", password="jwt-pw", jwt_ttl_s=120)
    with fake:
        client = AirflowClient(session, DictSecrets({PASSWORD_SECRET: "jwt-pw"}), clock=lambda: now[0])
        target = make_target(fake.url, airflow="3", auth=Auth("airflow-token", secret=PASSWORD_SECRET, username="a"))

        client.deliver(target, BEARS, EXTRA)
        now[0] += 30  # 90 s left: still used
        client.deliver(target, BEARS, EXTRA)
        assert fake.count("POST", "/auth/token") == 1

        now[0] += 31  # less than the 60 s margin left: renewed before use
        client.deliver(target, BEARS, EXTRA)
        assert fake.count("POST", "/auth/token") == 2
        assert fake.count("POST", "/api/v2/assets/events") == 3


def test_airflow_token_with_wrong_password_is_permanent_auth_failure(session: Transport) -> None:
    with FakeAirflow("3", datasets=[BEARS], auth="airflow-token", password="right-password") as fake:
        secrets = DictSecrets({PASSWORD_SECRET: "wrong-password"})
        client = AirflowClient(session, secrets)
        target = make_target(fake.url, auth=Auth("airflow-token", secret=PASSWORD_SECRET, username="admin"))

        failure = failure_of(client, target)

        assert failure.error == AUTH
        assert not failure.transient
        assert "/auth/token" in failure.detail
        assert "wrong-password" not in str(failure)
        assert fake.count("POST", "/auth/token") == 2  # the cached password, then a fresh read
        assert secrets.fresh_reads == 1


def test_rotated_bearer_secret_is_read_fresh_after_a_denial(session: Transport) -> None:
    with FakeAirflow("3", datasets=[BEARS], auth="bearer", token="new-token-value") as fake:
        secrets = DictSecrets({TOKEN_SECRET: "new-token-value"}, cached={TOKEN_SECRET: "old-token-value"})
        client = AirflowClient(session, secrets)
        target = make_target(fake.url, auth=Auth("bearer", secret=TOKEN_SECRET))

        posted = client.deliver(target, BEARS, EXTRA)

        assert posted.status == 200
        (event,) = fake.events
        assert event.authorization == "Bearer new-token-value"
        assert secrets.fresh_reads == 1
        assert fake.count("GET", "/api/v2/assets") == 2  # 403 with the old token, then 200


def test_wrong_static_token_is_permanent_auth_failure_without_the_token(session: Transport) -> None:
    with FakeAirflow("3", datasets=[BEARS], auth="bearer", token="right-token-value") as fake:
        secrets = DictSecrets({TOKEN_SECRET: "wrong-token-value"})
        client = AirflowClient(session, secrets)
        target = make_target(fake.url, auth=Auth("bearer", secret=TOKEN_SECRET))

        failure = failure_of(client, target)

        assert failure.error == AUTH
        assert not failure.transient
        assert "wrong-token-value" not in str(failure)
        assert "wrong-token-value" not in failure.detail
        assert secrets.fresh_reads == 1  # one fresh read; same value, so no second request
        assert fake.count("GET", "/api/v2/assets") == 1
        assert fake.events == []


def test_wrong_static_token_on_airflow2_is_auth_failure(session: Transport) -> None:
    with FakeAirflow("2", datasets=[BEARS], auth="bearer", token="right-token-value") as fake:
        client = AirflowClient(session, DictSecrets({TOKEN_SECRET: "wrong-token-value"}))

        failure = failure_of(client, make_target(fake.url, auth=Auth("bearer", secret=TOKEN_SECRET)))

        assert failure.error == AUTH
        assert "wrong-token-value" not in str(failure)


class EchoAuthorization:
    """A transport whose server answers every request with 400 and echoes the Authorization header back."""

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, **_: Any) -> Reply:
        echoed = (headers or {}).get("Authorization")
        return Reply(400, {"Content-Type": "text/plain"}, f"bad request; you sent {echoed}".encode())


def test_secret_echoed_by_the_server_is_redacted_from_the_failure() -> None:
    client = AirflowClient(EchoAuthorization(), DictSecrets({TOKEN_SECRET: "echoed-token-value"}))  # type: ignore[arg-type]
    target = make_target("https://airflow.example", airflow="2", auth=Auth("bearer", secret=TOKEN_SECRET))

    failure = failure_of(client, target)

    assert failure.error == "http_400"
    assert "echoed-token-value" not in str(failure)
    assert "Bearer ***" in failure.detail


# -- transport failures -----------------------------------------------------------------------


def test_503_with_retry_after_is_transient(v3: FakeAirflow, client: AirflowClient) -> None:
    v3.inject(Fault(status=503, retry_after="7", method="POST"))

    failure = failure_of(client, make_target(v3.url, airflow="3"))

    assert failure.error == "http_503"
    assert failure.transient
    assert failure.retry_after_s == 7.0
    assert v3.events == []


def test_answer_slower_than_the_target_timeout_is_transient_timeout(v3: FakeAirflow, client: AirflowClient) -> None:
    v3.inject(Fault(delay_s=1.0, method="POST"))
    target = make_target(v3.url, airflow="3", timeout_s=0.3)

    started = time.monotonic()
    failure = failure_of(client, target)

    assert time.monotonic() - started < 0.9
    assert failure.error == TIMEOUT
    assert failure.transient
    assert "0.3s" in failure.detail


def test_connection_reset_on_post_is_transient_connection_error(v3: FakeAirflow, client: AirflowClient) -> None:
    v3.inject(Fault(reset=True, method="POST"))

    failure = failure_of(client, make_target(v3.url, airflow="3"))

    assert failure.error == CONNECTION
    assert failure.transient
    assert v3.events == []


def test_refused_connection_is_transient_connection_error(client: AirflowClient) -> None:
    fake = FakeAirflow("3").start()
    url = fake.url
    fake.stop()

    failure = failure_of(client, make_target(url, airflow="3"))

    assert failure.error == CONNECTION
    assert failure.transient


def test_pooled_session_does_not_retry_a_reset_post(v3: FakeAirflow, pooled_session: Transport) -> None:
    client = AirflowClient(pooled_session, DictSecrets({}))
    v3.inject(Fault(reset=True, method="POST"))

    failure = failure_of(client, make_target(v3.url, airflow="3"))

    assert failure.error == CONNECTION
    assert failure.transient
    assert v3.count("POST", "/api/v2/assets/events") == 1
    assert v3.events == []


def test_pooled_session_retries_a_reset_version_probe(v3: FakeAirflow, pooled_session: Transport) -> None:
    client = AirflowClient(pooled_session, DictSecrets({}))
    v3.inject(Fault(reset=True, method="GET", path_prefix="/api/v2/version"))

    posted = client.deliver(make_target(v3.url), BEARS, EXTRA)

    assert posted.status == 200
    assert v3.count("GET", "/api/v2/version") == 2
    assert len(v3.events) == 1


def test_redirect_on_post_is_invalid_target_and_not_followed(v2: FakeAirflow, client: AirflowClient) -> None:
    v2.inject(Fault(status=302, method="POST"))

    failure = failure_of(client, make_target(v2.url, airflow="2"))

    assert failure.error == INVALID_TARGET
    assert not failure.transient
    assert "not followed" in failure.detail
    assert v2.requests == [("POST", "/api/v1/datasets/events", 302)]
    assert v2.events == []


def test_redirect_on_version_probe_is_invalid_target(v3: FakeAirflow, client: AirflowClient) -> None:
    v3.inject(Fault(status=302, path_prefix="/api/v2/version"))

    failure = failure_of(client, make_target(v3.url))

    assert failure.error == INVALID_TARGET
    assert v3.requests == [("GET", "/api/v2/version", 302)]


# -- checking whether an ambiguous try landed ---------------------------------------------------


@pytest.mark.parametrize("version", ["2", "3"])
def test_already_received_pages_back_to_an_event_buried_under_newer_ones(version: str, client: AirflowClient) -> None:
    emitted = datetime.now(UTC) - timedelta(minutes=5)
    with FakeAirflow(version, datasets=[BEARS]) as fake:
        fake.seed_events(BEARS, ["ours"], created_at=emitted + timedelta(seconds=1))
        fake.seed_events(BEARS, [f"later-{n}" for n in range(250)])  # three pages of newer events
        target = make_target(fake.url, airflow=version)

        assert client.already_received(target, BEARS, "ours", since=emitted)
        assert not client.already_received(target, BEARS, "never-sent", since=emitted)

        path = "/api/v2/assets/events" if version == "3" else "/api/v1/datasets/events"
        assert fake.count("GET", path) == 3 + 3  # found on page 3; all 3 pages read for the missing one


def test_already_received_stops_at_events_older_than_the_envelope(client: AirflowClient) -> None:
    with FakeAirflow("3", datasets=[BEARS]) as fake:
        fake.seed_events(BEARS, [f"old-{n}" for n in range(500)], created_at=datetime.now(UTC) - timedelta(hours=2))
        fake.seed_events(BEARS, [f"new-{n}" for n in range(100)])

        found = client.already_received(make_target(fake.url, airflow="3"), BEARS, "ours", since=datetime.now(UTC))

        assert not found
        assert fake.count("GET", "/api/v2/assets/events") == 2  # the second page starts before the envelope


def test_already_received_refuses_to_answer_no_when_too_many_events_followed(client: AirflowClient) -> None:
    with FakeAirflow("3", datasets=[BEARS]) as fake:
        fake.seed_events(BEARS, [f"e-{n}" for n in range(VERIFY_MAX_PAGES * VERIFY_PAGE_SIZE + 1)])
        target = make_target(fake.url, airflow="3")

        with pytest.raises(DeliveryFailed) as caught:
            client.already_received(target, BEARS, "ours", since=datetime.now(UTC) - timedelta(minutes=1))

        assert caught.value.transient  # dead-lettered as unconfirmed in the end, never posted blindly
        assert fake.count("GET", "/api/v2/assets/events") == VERIFY_MAX_PAGES
