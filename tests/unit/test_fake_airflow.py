"""Self-test of devkit/airflow_api.py: the fake Airflow must behave as the real API does."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import pytest
import requests

from devkit.airflow_api import FakeAirflow, Fault

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


# --------------------------------------------------------------------------------------------- DAGs and DAG runs


def test_v3_dag_run_is_created_with_its_id_and_conf_and_a_null_logical_date(http: requests.Session) -> None:
    with FakeAirflow("3", auth="bearer", token="t1") as fake:
        fake.add_dag("consumer")
        url = f"{fake.url}/api/v2/dags/consumer/dagRuns"
        body = {"dag_run_id": "dataset_forwarder__e1", "logical_date": None, "conf": {"k": "v"}}

        unauthenticated = http.post(url, json=body)
        created = http.post(url, json=body, headers={"Authorization": "Bearer t1"})

        assert unauthenticated.status_code == 401
        assert created.status_code == 200
        answer = created.json()
        assert (answer["dag_run_id"], answer["dag_id"], answer["logical_date"]) == (
            "dataset_forwarder__e1",
            "consumer",
            None,
        )
        assert (answer["state"], answer["run_type"], answer["conf"]) == ("queued", "manual", {"k": "v"})
        (run,) = fake.dag_runs
        assert (run.dag_id, run.run_id, run.conf, run.logical_date) == (
            "consumer",
            "dataset_forwarder__e1",
            {"k": "v"},
            None,
        )
        assert run.body == body
        assert run.authorization == "Bearer t1"


def test_v3_trigger_body_is_strict_and_logical_date_is_required(http: requests.Session) -> None:
    with FakeAirflow("3") as fake:
        fake.add_dag("consumer")
        url = f"{fake.url}/api/v2/dags/consumer/dagRuns"

        missing = http.post(url, json={"dag_run_id": "r1", "conf": {}})
        extra = http.post(url, json={"dag_run_id": "r1", "logical_date": None, "execution_date": None})
        naive = http.post(url, json={"dag_run_id": "r1", "logical_date": "2026-12-06T00:00:00"})
        bad_conf = http.post(url, json={"dag_run_id": "r1", "logical_date": None, "conf": [1]})
        not_json = http.post(url, data=b"{", headers={"Content-Type": "application/json"})

        assert missing.status_code == 422
        assert [(e["type"], e["loc"]) for e in missing.json()["detail"]] == [("missing", ["body", "logical_date"])]
        assert extra.status_code == 422
        assert [(e["type"], e["loc"]) for e in extra.json()["detail"]] == [
            ("extra_forbidden", ["body", "execution_date"])
        ]
        assert naive.status_code == 422
        assert bad_conf.status_code == 422
        assert not_json.status_code == 422
        assert fake.dag_runs == []


def test_v3_duplicate_run_id_is_409_unknown_dag_404_bad_run_id_400(http: requests.Session) -> None:
    with FakeAirflow("3") as fake:
        fake.add_dag("consumer")
        fake.add_dag("other")
        body = {"dag_run_id": "r1", "logical_date": None}

        first = http.post(f"{fake.url}/api/v2/dags/consumer/dagRuns", json=body)
        again = http.post(f"{fake.url}/api/v2/dags/consumer/dagRuns", json={**body, "conf": {"x": 1}})
        same_id_other_dag = http.post(f"{fake.url}/api/v2/dags/other/dagRuns", json=body)
        unknown = http.post(f"{fake.url}/api/v2/dags/nope/dagRuns", json=body)
        bad_id = http.post(
            f"{fake.url}/api/v2/dags/consumer/dagRuns", json={"dag_run_id": "a/b c", "logical_date": None}
        )
        partition = http.post(
            f"{fake.url}/api/v2/dags/consumer/dagRuns",
            json={"dag_run_id": "r2", "logical_date": None, "partition_key": "p"},
        )

        assert (first.status_code, again.status_code, same_id_other_dag.status_code) == (200, 409, 200)
        assert again.json()["detail"]["reason"] == "Unique constraint violation"
        assert (unknown.status_code, unknown.json()) == (404, {"detail": "Dag with dag_id: 'nope' not found"})
        assert bad_id.status_code == 400
        assert partition.status_code == 400
        assert [(r.dag_id, r.run_id, r.conf) for r in fake.dag_runs] == [("consumer", "r1", {}), ("other", "r1", {})]


def test_v2_dag_run_is_created_409_on_a_duplicate_404_on_an_unknown_dag(http: requests.Session) -> None:
    with FakeAirflow("2", auth="basic") as fake:
        fake.add_dag("consumer")
        auth = ("admin", "admin-pw")
        url = f"{fake.url}/api/v1/dags/consumer/dagRuns"
        body = {"dag_run_id": "dataset_forwarder__e1", "conf": {"k": "v"}}

        denied = http.post(url, json=body)
        created = http.post(url, json=body, auth=auth)
        again = http.post(url, json=body, auth=auth)
        unknown = http.post(f"{fake.url}/api/v1/dags/nope/dagRuns", json=body, auth=auth)
        unknown_field = http.post(url, json={"dag_run_id": "r2", "partition_key": "p"}, auth=auth)
        bad_id = http.post(url, json={"dag_run_id": "a b"}, auth=auth)

        assert denied.status_code == 403
        assert created.status_code == 200
        answer = created.json()
        assert (answer["dag_run_id"], answer["conf"], answer["state"]) == (
            "dataset_forwarder__e1",
            {"k": "v"},
            "queued",
        )
        assert answer["logical_date"] == answer["execution_date"] is not None
        assert again.status_code == 409
        assert again.headers["Content-Type"] == "application/problem+json"
        assert (
            again.json()["detail"]
            == "DAGRun with DAG ID: 'consumer' and DAGRun ID: 'dataset_forwarder__e1' already exists"
        )
        assert (unknown.status_code, unknown.json()["title"]) == (404, "DAG not found")
        assert unknown_field.status_code == 400
        assert "partition_key" in unknown_field.json()["detail"]
        assert bad_id.status_code == 400
        (run,) = fake.runs_for("consumer")
        assert (run.run_id, run.conf) == ("dataset_forwarder__e1", {"k": "v"})


@pytest.mark.parametrize(("version", "root"), [("2", "/api/v1"), ("3", "/api/v2")])
def test_get_dag_tells_whether_it_is_paused(version: str, root: str, http: requests.Session) -> None:
    with FakeAirflow(version) as fake:
        fake.add_dag("consumer", paused=True)
        fake.add_dag("a.b-c_d")

        paused = http.get(f"{fake.url}{root}/dags/consumer")
        active = http.get(f"{fake.url}{root}/dags/{quote('a.b-c_d', safe='')}")
        missing = http.get(f"{fake.url}{root}/dags/nope")
        fake.set_paused("consumer", False)
        unpaused = http.get(f"{fake.url}{root}/dags/consumer")

        assert (paused.status_code, paused.json()["dag_id"], paused.json()["is_paused"]) == (200, "consumer", True)
        assert (active.json()["dag_id"], active.json()["is_paused"]) == ("a.b-c_d", False)
        assert missing.status_code == 404
        assert unpaused.json()["is_paused"] is False


def test_a_paused_dag_still_gets_its_run_and_a_seeded_run_makes_a_409(http: requests.Session) -> None:
    with FakeAirflow("3") as fake:
        fake.add_dag("consumer", paused=True)
        fake.seed_dag_run("consumer", "dataset_forwarder__old")

        paused = http.post(f"{fake.url}/api/v2/dags/consumer/dagRuns", json={"dag_run_id": "r1", "logical_date": None})
        seeded = http.post(
            f"{fake.url}/api/v2/dags/consumer/dagRuns",
            json={"dag_run_id": "dataset_forwarder__old", "logical_date": None},
        )

        assert (paused.status_code, seeded.status_code) == (200, 409)
        assert [run.run_id for run in fake.wait_for_dag_runs(2, timeout_s=1)] == ["dataset_forwarder__old", "r1"]
