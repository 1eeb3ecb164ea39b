"""The trigger_dag action over the HTTPS way in, against the fake Airflow 2.11 and 3.3 (real HTTP on 127.0.0.1),
through the `Downstream` seam the forwarder uses: run id, body and conf (docs/targets.md), 409, 404, `targets test`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from dataset_forwarder.actions.trigger_dag import TriggerDag
from dataset_forwarder.downstream import Downstreams
from dataset_forwarder.envelope import Envelope, parse_envelope
from dataset_forwarder.outcomes import AUTH, TIMEOUT, UNKNOWN_DAG, DeliveryFailed, MayHaveLanded
from dataset_forwarder.services import Services
from dataset_forwarder.targets import InvalidTarget, ParseRules, Target, parse_target
from dataset_forwarder.transport import Transport
from dataset_forwarder.ways_in.mwaa import MwaaClients
from devkit.airflow_api import FakeAirflow, Fault
from devkit.envelopes import envelope
from tests.unit.test_airflow_client import DictSecrets

BEARS = "s3://bucket/bears"
RULES = ParseRules(allow_http=True, mwaa_environments=("team-c-prod",))
SECRET = "/dataset-forwarder/secrets/team-b"
UPSTREAM_EXTRA = {"rows": 42, "nested": {"a": [1, 2]}, "dataset_forwarder": {"id": "from-an-earlier-hop"}}


def trigger_target(url: str, *, dag_id: str = "consumer", **fields: Any) -> Target:
    return parse_target(
        "team-b", {"url": url, "action": "trigger_dag", "dag_id": dag_id, "datasets": [BEARS], **fields}, rules=RULES
    )


def an_envelope(**fields: Any) -> Envelope:
    body = envelope(BEARS, extra=fields.pop("extra", dict(UPSTREAM_EXTRA)), **fields)
    return parse_envelope(json.dumps(body))


@pytest.fixture
def transport() -> Iterator[Transport]:
    with Transport(pool_size=4, max_hosts=8) as http:
        yield http


@pytest.fixture
def downstreams(transport: Transport) -> Downstreams:
    secrets = DictSecrets({SECRET: "the-token"})
    return Downstreams(Services(transport, secrets, MwaaClients(lambda: None, endpoint_override=True)))


@pytest.fixture(params=["2", "3"])
def fake(request: pytest.FixtureRequest) -> Iterator[FakeAirflow]:
    with FakeAirflow(request.param) as started:
        started.add_dag("consumer")
        yield started


def _root(fake: FakeAirflow) -> str:
    return "/api/v2" if fake.version == "3" else "/api/v1"


# -- the target parameter -----------------------------------------------------------------------


def test_a_trigger_dag_target_parses_and_round_trips() -> None:
    target = trigger_target("https://airflow.example.com", dag_id="refresh_dashboards")

    assert target.action == TriggerDag("refresh_dashboards")
    assert target.to_json()["action"] == "trigger_dag"
    assert parse_target("team-b", target.to_json(), rules=RULES) == target


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"action": "trigger_dag"}, "'dag_id' is required"),
        ({"action": "trigger_dag", "dag_id": ""}, "'dag_id' is required"),
        ({"action": "trigger_dag", "dag_id": "has space"}, "'dag_id' is required"),
        ({"action": "trigger_dag", "dag_id": "x" * 251}, "'dag_id' is required"),
        ({"action": "trigger_dag", "dag_id": ["consumer"]}, "'dag_id' is required"),
        ({"dag_id": "consumer"}, "'dag_id' belongs to"),
        ({"action": "run_dag", "dag_id": "consumer"}, "'action' must be one of"),
    ],
)
def test_a_bad_trigger_dag_target_is_refused_at_parse_time(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidTarget, match=message):
        parse_target("team-b", {"url": "https://airflow.example.com", "datasets": [BEARS], **fields}, rules=RULES)


def test_a_dag_id_too_long_for_mwaas_64_character_path_is_refused_at_parse_time() -> None:
    mwaa = {"mwaa": {"environment": "team-c-prod"}, "action": "trigger_dag", "datasets": [BEARS]}
    fits = "d" * (64 - len("/dags//dagRuns"))

    assert parse_target("team-c", {**mwaa, "dag_id": fits}, rules=RULES).action == TriggerDag(fits)
    with pytest.raises(InvalidTarget, match=r"too long for this way in.*65 characters, at most 64"):
        parse_target("team-c", {**mwaa, "dag_id": fits + "d"}, rules=RULES)
    # Over HTTPS there is no such limit: Airflow's own 250 characters apply.
    assert trigger_target("https://airflow.example.com", dag_id="d" * 250).action == TriggerDag("d" * 250)


# -- delivering ---------------------------------------------------------------------------------


def test_airflow3_gets_the_run_id_a_null_logical_date_and_the_conf_of_design_9_3(downstreams: Downstreams) -> None:
    with FakeAirflow("3") as fake:
        fake.add_dag("consumer", partitioned=True)
        sent = an_envelope(partition_key="2026-12-06", trail=["team-a-prod", "team-x"])

        posted = downstreams.get(trigger_target(fake.url)).deliver(sent)

        (run,) = fake.dag_runs
        assert run.body == {
            "dag_run_id": f"dataset_forwarder__{sent.id}",
            "logical_date": None,
            "conf": {
                "dataset_forwarder": {
                    "id": sent.id,
                    "uri": BEARS,
                    "extra": {"rows": 42, "nested": {"a": [1, 2]}},
                    "partition_key": "2026-12-06",
                    "source": sent.source,
                    "trail": ["team-a-prod", "team-x"],
                }
            },
            "partition_key": "2026-12-06",  # Airflow 3.2+ and a partitioned DAG: the run's own partition key
        }
        assert (run.dag_id, run.run_id, run.logical_date) == ("consumer", f"dataset_forwarder__{sent.id}", None)
        assert (posted.status, posted.api, posted.already_there) == (200, "v2", False)
        assert posted.downstream_id == f"dataset_forwarder__{sent.id}"
        assert fake.count("POST", "/api/v2/dags/consumer/dagRuns") == 1


def test_airflow2_gets_the_run_id_and_the_conf_without_a_logical_date(downstreams: Downstreams) -> None:
    with FakeAirflow("2") as fake:
        fake.add_dag("consumer")
        sent = an_envelope()

        posted = downstreams.get(trigger_target(fake.url)).deliver(sent)

        (run,) = fake.dag_runs
        assert set(run.body) == {"dag_run_id", "conf"}
        assert run.run_id == f"dataset_forwarder__{sent.id}"
        assert run.conf == {
            "dataset_forwarder": {
                "id": sent.id,
                "uri": BEARS,
                "extra": {"rows": 42, "nested": {"a": [1, 2]}},
                "partition_key": None,
                "source": sent.source,
                "trail": ["team-a-prod"],
            }
        }
        assert (posted.status, posted.api, posted.already_there) == (200, "v1", False)


def test_the_credentials_of_the_target_authorize_the_trigger(downstreams: Downstreams) -> None:
    with FakeAirflow("3", auth="bearer", token="the-token") as fake:
        fake.add_dag("consumer")

        downstreams.get(trigger_target(fake.url, auth={"type": "bearer", "secret": SECRET})).deliver(an_envelope())

        (run,) = fake.dag_runs
        assert run.authorization == "Bearer the-token"


def test_a_run_that_exists_is_already_there_and_not_started_again(fake: FakeAirflow, downstreams: Downstreams) -> None:
    downstream = downstreams.get(trigger_target(fake.url))
    sent = an_envelope()
    first = downstream.deliver(sent)

    again = downstream.deliver(sent)

    assert (first.already_there, again.already_there) == (False, True)
    assert again.status == 409
    assert again.downstream_id == f"dataset_forwarder__{sent.id}"
    assert [run.run_id for run in fake.dag_runs] == [f"dataset_forwarder__{sent.id}"]
    assert fake.count("POST", f"{_root(fake)}/dags/consumer/dagRuns") == 2


def test_an_unknown_dag_is_a_permanent_unknown_dag(fake: FakeAirflow, downstreams: Downstreams) -> None:
    with pytest.raises(DeliveryFailed) as caught:
        downstreams.get(trigger_target(fake.url, dag_id="no_such_dag")).deliver(an_envelope())

    assert caught.value.error == UNKNOWN_DAG
    assert not caught.value.transient
    assert "no DAG no_such_dag" in caught.value.detail
    assert "404" in caught.value.detail
    assert fake.dag_runs == []


@pytest.mark.parametrize(
    ("status", "error", "transient"), [(503, "http_503", True), (429, "http_429", True), (422, "http_422", False)]
)
def test_other_answers_are_classified_as_for_asset_events(
    fake: FakeAirflow, downstreams: Downstreams, status: int, error: str, transient: bool
) -> None:
    fake.inject(Fault(status=status, method="POST"))

    with pytest.raises(DeliveryFailed) as caught:
        downstreams.get(trigger_target(fake.url)).deliver(an_envelope())

    assert (caught.value.error, caught.value.transient) == (error, transient)
    assert fake.dag_runs == []


def test_refused_credentials_are_auth(downstreams: Downstreams) -> None:
    with FakeAirflow("2", auth="basic", password="right") as fake:
        fake.add_dag("consumer")
        target = trigger_target(fake.url, airflow="2", auth={"type": "basic", "username": "admin", "secret": SECRET})

        with pytest.raises(DeliveryFailed) as caught:
            downstreams.get(target).deliver(an_envelope())

        assert caught.value.error == AUTH
        assert "the-token" not in caught.value.detail


def test_a_trigger_whose_answer_was_lost_is_found_by_its_409_on_the_retry(downstreams: Downstreams) -> None:
    with FakeAirflow("3") as fake:
        fake.add_dag("consumer")
        fake.inject(Fault(delay_s=1.0, method="POST"))
        downstream = downstreams.get(trigger_target(fake.url, timeout_s=0.3))
        sent = an_envelope()
        with pytest.raises(DeliveryFailed) as caught:
            downstream.deliver(sent)
        assert (caught.value.error, isinstance(caught.value, MayHaveLanded)) == (TIMEOUT, True)
        fake.wait_for_dag_runs(1, timeout_s=5)  # the slow POST still created the run

        # The forwarder's retry asks first (nothing to look up for this action), then posts and learns of the 409.
        assert downstream.already_received(sent, deadline=float("inf")) is None  # None: only the POST can tell
        retried = downstream.deliver(sent)

        assert retried.already_there
        assert len(fake.dag_runs) == 1


def test_the_did_it_land_check_asks_the_target_nothing(fake: FakeAirflow, downstreams: Downstreams) -> None:
    downstream = downstreams.get(trigger_target(fake.url, airflow=fake.version))

    assert downstream.already_received(an_envelope(), deadline=float("inf")) is None  # the POST's 409 tells
    assert fake.requests == []


def test_an_event_id_airflow_refuses_as_a_run_id_is_a_permanent_failure(
    fake: FakeAirflow, downstreams: Downstreams
) -> None:
    """Ids the listener writes (hex) are always accepted; a hand-written one may not match allowed_run_id_pattern."""
    with pytest.raises(DeliveryFailed) as caught:
        downstreams.get(trigger_target(fake.url)).deliver(an_envelope(event_id="not/a run id"))

    assert (caught.value.error, caught.value.transient) == ("http_400", False)
    assert fake.dag_runs == []


# -- targets test -------------------------------------------------------------------------------


def test_checks_say_whether_the_dag_exists_and_is_paused(fake: FakeAirflow, downstreams: Downstreams) -> None:
    fake.add_dag("paused_one", paused=True)

    active = downstreams.get(trigger_target(fake.url)).checks([BEARS])
    paused = downstreams.get(trigger_target(fake.url, dag_id="paused_one")).checks([BEARS])
    missing = downstreams.get(trigger_target(fake.url, dag_id="gone")).checks([BEARS])

    assert [(c.name, c.ok, c.detail) for c in active] == [("dag consumer", True, "exists, active")]
    [(name, ok, detail)] = [(c.name, c.ok, c.detail) for c in paused]
    assert (name, ok) == ("dag paused_one", True)
    assert detail.startswith("exists, paused")
    assert [(c.ok, c.detail) for c in missing] == [(False, "does not exist downstream")]
    assert fake.count("GET", f"{_root(fake)}/dags/paused_one") == 1


def test_access_proves_the_credentials_with_one_read(fake: FakeAirflow, downstreams: Downstreams) -> None:
    access = downstreams.get(trigger_target(fake.url)).access()

    assert access.airflow_major == fake.version
    assert access.identity == "no credentials"


def test_a_dag_that_is_not_partitioned_gets_the_key_in_its_conf_only_after_one_refusal(
    downstreams: Downstreams,
) -> None:
    with FakeAirflow("3") as fake:
        fake.add_dag("consumer")
        downstream = downstreams.get(trigger_target(fake.url))

        downstream.deliver(an_envelope(partition_key="2026-12-06"))
        downstream.deliver(an_envelope(partition_key="2026-12-07"))

        assert [run.conf["dataset_forwarder"]["partition_key"] for run in fake.dag_runs] == ["2026-12-06", "2026-12-07"]
        assert all("partition_key" not in run.body for run in fake.dag_runs)
        assert fake.count("POST", "/api/v2/dags/consumer/dagRuns") == 3  # 400 once, then never offered again


def test_an_airflow2_409_for_another_run_at_the_same_instant_is_not_taken_for_ours(downstreams: Downstreams) -> None:
    with FakeAirflow("2") as fake:
        fake.add_dag("consumer")
        detail = "DAGRun with DAG ID: 'consumer' and DAGRun logical date: '2026-12-06 00:00:00+00:00' already exists"
        fake.inject(Fault(status=409, method="POST", body=json.dumps({"detail": detail, "status": 409})))

        with pytest.raises(DeliveryFailed) as caught:
            downstreams.get(trigger_target(fake.url, airflow="2")).deliver(an_envelope())

        assert caught.value.error == "http_409"
        assert caught.value.transient  # the next try gets another logical date
        assert fake.dag_runs == []
