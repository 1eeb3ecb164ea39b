"""SingleFlight: concurrent cache misses share one lookup; a cold target is probed, authenticated and looked up once."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from dataset_forwarder import runtime, single_flight
from dataset_forwarder.outcomes import CONNECTION, DeliveryFailed
from dataset_forwarder.secrets import SecretStore
from dataset_forwarder.single_flight import SingleFlight
from dataset_forwarder.targets import Target
from dataset_forwarder.ways_in.auth import Auth
from dataset_forwarder.ways_in.https import HttpsWayIn
from devkit.airflow_api import FakeAirflow
from devkit.downstream import AirflowClient

WAITERS = 7
BEARS = "s3://bucket/bears"


@pytest.fixture
def joined(monkeypatch: pytest.MonkeyPatch) -> threading.Semaphore:
    """Released once by every caller that joined a flight and now waits for its result."""
    waiting = threading.Semaphore(0)

    class SignallingFuture(Future[Any]):
        def result(self, timeout: float | None = None) -> Any:
            waiting.release()
            return super().result(timeout)

    monkeypatch.setattr(single_flight, "Future", SignallingFuture)
    return waiting


def run_concurrently(flights: SingleFlight, call: Any) -> list[Any]:
    """WAITERS + 1 callers at once; returns what each got (a value or the exception it raised)."""

    def caller(_: int) -> Any:
        try:
            return flights.run("key", call)
        except DeliveryFailed as exc:
            return exc

    with ThreadPoolExecutor(max_workers=WAITERS + 1) as pool:
        return list(pool.map(caller, range(WAITERS + 1)))


def test_concurrent_callers_share_the_leaders_result(joined: threading.Semaphore) -> None:
    calls: list[str] = []

    def lookup() -> str:
        calls.append(threading.current_thread().name)
        for _ in range(WAITERS):  # finish only once every other caller has joined this flight
            assert joined.acquire(timeout=10)
        return "3"

    assert run_concurrently(SingleFlight(), lookup) == ["3"] * (WAITERS + 1)
    assert len(calls) == 1


def test_concurrent_callers_share_the_leaders_failure(joined: threading.Semaphore) -> None:
    calls: list[str] = []

    def lookup() -> str:
        calls.append(threading.current_thread().name)
        for _ in range(WAITERS):
            assert joined.acquire(timeout=10)
        raise DeliveryFailed(CONNECTION, "GET /api/v2/version on team-b: ConnectionError", transient=True)

    results = run_concurrently(SingleFlight(), lookup)

    assert len(calls) == 1
    assert all(isinstance(result, DeliveryFailed) and result.error == CONNECTION for result in results)


def test_a_call_after_the_flight_ended_runs_again() -> None:
    flights = SingleFlight()
    answers = iter(["first", "second"])

    assert flights.run("key", lambda: next(answers)) == "first"
    assert flights.run("key", lambda: next(answers)) == "second"
    with pytest.raises(ZeroDivisionError):
        flights.run("key", lambda: 1 / 0)
    assert flights.run("key", lambda: "after a failure") == "after a failure"


def test_a_cold_target_is_probed_authenticated_and_looked_up_once_for_concurrent_deliveries() -> None:
    fetched: list[str] = []

    def fetch_secret(name: str) -> str:
        fetched.append(name)
        return "admin-pw"

    with FakeAirflow("3", datasets=[BEARS], auth="airflow-token") as fake:
        http = runtime.http_transport(16)
        client = AirflowClient(http, SecretStore(fetch_secret, ttl_s=60))
        target = Target(
            name="team-b",
            way_in=HttpsWayIn(fake.url, Auth("airflow-token", secret="/secrets/team-b", username="admin")),
            airflow="auto",
            datasets=(BEARS,),
        )
        start = threading.Barrier(10)

        def deliver(_: int) -> int:
            start.wait(timeout=10)
            return client.deliver(target, BEARS, {"rows": 1}).status

        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(deliver, range(10)))
        http.close()

        assert statuses == [200] * 10
        assert len(fake.events) == 10
        assert fake.count("GET", "/api/v2/version") == 1
        assert fake.count("POST", "/auth/token") == 1
        assert fake.count("GET", "/api/v2/assets?") == 1
        assert fetched == ["/secrets/team-b"]
