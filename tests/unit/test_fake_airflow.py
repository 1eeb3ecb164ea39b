"""Self-test of tests/fakes/airflow_api.py: the fake Airflow must behave as the real API does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests

from tests.fakes.airflow_api import FakeAirflow, Fault

BEARS = "s3://b/bears"
BEARS_2 = "s3://b/bears-2"


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # never route 127.0.0.1 through a proxy from the environment
        yield session


@pytest.fixture
def v3() -> Iterator[FakeAirflow]:
    with FakeAirflow("3", datasets=[BEARS, BEARS_2]) as fake:
        yield fake


def test_v3_token_flow(http: requests.Session) -> None:
    with FakeAirflow("3", auth="airflow-token", datasets=[BEARS]) as fake:
        bad = http.post(f"{fake.url}/auth/token", json={"username": "admin", "password": "nope"})
        assert bad.status_code == 401
        issued = http.post(f"{fake.url}/auth/token", json={"username": "admin", "password": "admin-pw"})
        assert issued.status_code == 201
        bearer = f"Bearer {issued.json()['access_token']}"

        posted = http.post(
            f"{fake.url}/api/v2/assets/events",
            json={"asset_id": 1, "extra": {"k": "v"}},
            headers={"Authorization": bearer},
        )
        assert posted.status_code == 200
        assert posted.json()["extra"] == {"k": "v", "from_rest_api": True}
        (event,) = fake.events
        assert (event.uri, event.asset_id, event.extra, event.authorization) == (BEARS, 1, {"k": "v"}, bearer)

        missing = http.get(f"{fake.url}/api/v2/assets")
        assert (missing.status_code, missing.json()) == (401, {"detail": "Not authenticated"})
        expired = http.get(
            f"{fake.url}/api/v2/assets",
            headers={"Authorization": f"Bearer {fake.mint_jwt(exp=time.time() - 5)}"},
        )
        assert (expired.status_code, expired.json()) == (401, {"detail": "Token Expired"})
        forged = http.get(f"{fake.url}/api/v2/assets", headers={"Authorization": f"Bearer {fake.mint_jwt(secret='x')}"})
        assert forged.status_code == 403
        # Version and health need no auth.
        assert http.get(f"{fake.url}/api/v2/version").json() == {"version": "3.3.2", "git_version": None}
        assert http.get(f"{fake.url}/api/v2/monitor/health").status_code == 200

        fake.revoke_jwts()
        revoked = http.get(f"{fake.url}/api/v2/assets", headers={"Authorization": bearer})
        assert (revoked.status_code, revoked.json()) == (403, {"detail": "Invalid JWT token"})
        fresh = f"Bearer {fake.mint_jwt()}"
        assert http.get(f"{fake.url}/api/v2/assets", headers={"Authorization": fresh}).status_code == 200


def test_v3_static_bearer_rotation(http: requests.Session) -> None:
    with FakeAirflow("3", auth="bearer", token="t1") as fake:
        assert http.get(f"{fake.url}/api/v2/assets", headers={"Authorization": "Bearer t1"}).ok
        fake.set_token("t2")
        assert http.get(f"{fake.url}/api/v2/assets", headers={"Authorization": "Bearer t1"}).status_code == 403
        assert http.get(f"{fake.url}/api/v2/assets").status_code == 401


def test_uri_pattern_is_a_case_insensitive_substring_match(v3: FakeAirflow, http: requests.Session) -> None:
    v3.add_dataset("s3://other/thing")
    body = http.get(f"{v3.url}/api/v2/assets", params={"uri_pattern": "S3://B/BEARS"}).json()
    assert [asset["uri"] for asset in body["assets"]] == [BEARS, BEARS_2]
    assert body["total_entries"] == 2
    assert [dag["dag_id"] for dag in body["assets"][0]["scheduled_dags"]] == ["consumer"]
    page = http.get(f"{v3.url}/api/v2/assets", params={"uri_pattern": BEARS, "limit": "1", "offset": "1"}).json()
    assert ([asset["id"] for asset in page["assets"]], page["total_entries"]) == ([2], 2)


def test_v3_event_body_is_strict(v3: FakeAirflow, http: requests.Session) -> None:
    with_uri = http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": 1, "uri": BEARS})
    assert with_uri.status_code == 422
    assert with_uri.json()["detail"][0]["type"] == "extra_forbidden"
    assert http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": "1"}).status_code == 422
    assert http.post(f"{v3.url}/api/v2/assets/events", data=b"{not json").status_code == 422
    unknown = http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": 99})
    assert unknown.status_code == 404
    assert http.get(f"{v3.url}/api/v1/version").status_code == 404
    assert v3.events == []


def test_v2_auth_and_datasets(http: requests.Session) -> None:
    with FakeAirflow("2", auth="basic", datasets=[BEARS]) as fake:
        api = f"{fake.url}/api/v1"
        wrong = http.post(f"{api}/datasets/events", json={"dataset_uri": BEARS}, auth=("admin", "bad"))
        assert wrong.status_code == 403
        assert wrong.headers["Content-Type"] == "application/problem+json"
        assert wrong.json()["title"] == "Forbidden"
        assert http.post(f"{api}/datasets/events", json={"dataset_uri": BEARS}).status_code == 403

        good = ("admin", "admin-pw")
        unknown = http.post(f"{api}/datasets/events", json={"dataset_uri": "s3://b/nope"}, auth=good)
        assert (unknown.status_code, unknown.json()["title"]) == (404, "Dataset not found")
        assert http.post(f"{api}/datasets/events", json={"extra": {}}, auth=good).status_code == 400
        ok = http.post(f"{api}/datasets/events", json={"dataset_uri": BEARS, "extra": {"a": 1}}, auth=good)
        assert ok.status_code == 200
        assert ok.json()["extra"] == {"a": 1, "from_rest_api": True}
        assert [(e.uri, e.extra, e.asset_id) for e in fake.events_for(BEARS)] == [(BEARS, {"a": 1}, None)]

        dataset = http.get(f"{api}/datasets/{quote(BEARS, safe='')}", auth=good)
        assert dataset.json()["consuming_dags"][0]["dag_id"] == "consumer"
        assert http.get(f"{api}/version").json()["version"] == "2.11.2"
        assert http.get(f"{fake.url}/api/v2/version").status_code == 404


def test_fault_503_with_retry_after_then_success(v3: FakeAirflow, http: requests.Session) -> None:
    v3.inject(Fault(status=503, retry_after="2", method="POST", path_prefix="/api/v2/assets/events"))
    assert http.get(f"{v3.url}/api/v2/assets").status_code == 200  # does not match: fault stays queued
    first = http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": 1})
    assert (first.status_code, first.headers["Retry-After"]) == (503, "2")
    second = http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": 1})
    assert second.status_code == 200
    assert len(v3.events) == 1
    assert v3.count("POST", "/api/v2/assets/events") == 2
    assert [status for _, _, status in v3.requests] == [200, 503, 200]


def test_delay_fault_times_out_a_short_client_timeout(v3: FakeAirflow, http: requests.Session) -> None:
    v3.inject(Fault(delay_s=0.6))
    started = time.monotonic()
    with pytest.raises(requests.Timeout):
        http.get(f"{v3.url}/api/v2/version", timeout=0.2)
    assert time.monotonic() - started < 0.6


def test_reset_fault_raises_connection_error(v3: FakeAirflow, http: requests.Session) -> None:
    v3.inject(Fault(reset=True, method="POST"))
    with pytest.raises(requests.ConnectionError):
        http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": 1})
    assert v3.requests == [("POST", "/api/v2/assets/events", 0)]
    assert http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": 1}).status_code == 200


def test_keep_alive_reuses_one_connection(v3: FakeAirflow, http: requests.Session) -> None:
    assert http.get(f"{v3.url}/api/v2/version").ok
    assert http.post(f"{v3.url}/api/v2/assets/events", json={"asset_id": 2}).ok
    assert http.get(f"{v3.url}/api/v2/assets", params={"uri_pattern": BEARS}).ok
    assert v3.connections == 1


def test_wait_for_events(v3: FakeAirflow, http: requests.Session) -> None:
    with pytest.raises(AssertionError, match="expected at least 1 event"):
        v3.wait_for_events(1, timeout_s=0.1)
    url = f"{v3.url}/api/v2/assets/events"
    poster = threading.Timer(0.05, lambda: http.post(url, json={"asset_id": 1}, timeout=5))
    poster.start()
    try:
        assert [event.uri for event in v3.wait_for_events(1, timeout_s=2)] == [BEARS]
    finally:
        poster.join()
