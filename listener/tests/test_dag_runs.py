"""The DAG-run listener, loaded by the plugin against a fake Airflow and called through pluggy as Airflow does."""

from __future__ import annotations

import json
import logging
import time
import types
from datetime import datetime, timedelta, timezone

import pytest

from dataset_forwarder_listener import config
from dataset_forwarder_listener.envelope import LINEAGE_KEY
from dataset_forwarder_listener.sender import BackgroundSender
from tests.conftest import QUEUE_URL
from tests.fakes import airflow as fake_airflow
from tests.fakes.sqs import StubSqs
from tests.test_plugin_and_hooks import load_plugin, use_stub

STARTED = datetime(2026, 12, 6, 6, 0, tzinfo=timezone.utc)


class DagRun:
    """Airflow's DagRun as the hooks see it. ``session``: the session it is bound to (None: detached, as under
    ``airflow dags test``, where reading a relationship raises)."""

    def __init__(self, dag_id="etl_daily", state="success", session=None, consumed=(), relationship="", **fields):
        self.dag_id = dag_id
        self.run_id = fields.pop("run_id", "manual__2026-12-06T06:00:00+00:00")
        self.state = state
        self.run_type = fields.pop("run_type", "manual")
        self.logical_date = fields.pop("logical_date", None)
        self.start_date = fields.pop("start_date", STARTED)
        self.end_date = fields.pop("end_date", STARTED + timedelta(minutes=1))
        self.clear_number = fields.pop("clear_number", 0)
        self.conf = fields.pop("conf", {})
        self.session = session
        self._consumed = list(consumed)
        assert not fields, fields
        if relationship:  # the relationship exists on the class, as on Airflow's models
            setattr(type(self), relationship, property(DagRun._read_consumed))

    def _read_consumed(self):
        if self.session is None:
            raise RuntimeError("DetachedInstanceError: lazy load operation cannot proceed")
        assert self.session.autoflush is False, "read with autoflush on"
        self.session.reads_without_autoflush += 1
        return self._consumed


@pytest.fixture
def configured(monkeypatch, tmp_path):
    monkeypatch.setenv(config.QUEUE_URL, QUEUE_URL)
    monkeypatch.setenv(config.DEPLOYMENT, "team-a-prod")
    monkeypatch.setenv(config.SPOOL_DIR, str(tmp_path / "spool"))
    return tmp_path / "spool"


@pytest.fixture(autouse=True)
def _forget_relationships():
    yield
    for name in ("consumed_asset_events", "consumed_dataset_events"):
        if hasattr(DagRun, name):
            delattr(DagRun, name)


def event_with_trail(*trail):
    return types.SimpleNamespace(extra={"rows": 1, LINEAGE_KEY: {"id": "x", "trail": list(trail)}})


def listeners_of(monkeypatch, version, dag_runs="etl_*"):
    if dag_runs is not None:
        monkeypatch.setenv(config.DAG_RUNS, dag_runs)
    plugin, manager = load_plugin(monkeypatch, version)
    return plugin.DatasetForwarderPlugin.listeners, manager


def dag_run_listener(monkeypatch, version="3.3.2"):
    listeners, manager = listeners_of(monkeypatch, version)
    assert len(listeners) == (2 if version.startswith("3") else 3)  # Airflow 2: and the sweep's lifecycle listener
    client = StubSqs()
    use_stub(listeners[0], client)
    return listeners[1], manager, client


def bodies(listener, client):
    listener.sender.close(timeout_s=5)
    return [json.loads(body) for body in client.bodies]


@pytest.mark.parametrize("version", ["3.3.2", "2.11.2"])
@pytest.mark.parametrize("dag_runs", [None, "", " , "])
def test_without_dag_run_globs_no_dag_run_listener_is_registered(monkeypatch, configured, version, dag_runs):
    listeners, _ = listeners_of(monkeypatch, version, dag_runs)

    assert [type(listener).__name__ for listener in listeners] == [
        "AssetListener" if version.startswith("3") else "DatasetListener"
    ]


@pytest.mark.parametrize("version", ["3.3.2", "2.11.2"])
def test_finished_runs_of_matching_dags_are_sent_as_dag_run_envelopes(
    monkeypatch,
    configured,
    envelope_validator,
    version,
):
    listener, manager, client = dag_run_listener(monkeypatch, version)
    # Both majors hand the envelope to the one background sender of the process, never to a synchronous send.
    assert isinstance(listener.sender, BackgroundSender)

    manager.hook.on_dag_run_success(dag_run=DagRun(), msg="success")
    manager.hook.on_dag_run_failed(dag_run=DagRun(dag_id="etl_weekly", state="failed"), msg="task_failure")
    manager.hook.on_dag_run_success(dag_run=DagRun(dag_id="reports"), msg="success")  # not matching
    manager.hook.on_dag_run_running(dag_run=DagRun(state="running"), msg="started")

    sent = bodies(listener, client)
    # the background sender promises every envelope, not their order (the first may go alone, the rest batched)
    assert sorted((e["uri"], e["extra"]["state"]) for e in sent) == [
        ("dagrun://team-a-prod/etl_daily/success", "success"),
        ("dagrun://team-a-prod/etl_weekly/failed", "failed"),
    ]
    for envelope in sent:
        envelope_validator.validate(envelope)
        assert envelope["kind"] == "dag_run"
        assert envelope["source"]["airflow_version"] == version
        assert envelope["trail"] == ["team-a-prod"]
    daily = next(e for e in sent if e["extra"]["dag_id"] == "etl_daily")
    assert daily["extra"] == {
        "dag_id": "etl_daily",
        "run_id": "manual__2026-12-06T06:00:00+00:00",
        "state": "success",
        "run_type": "manual",
        "logical_date": None,
        "start_date": "2026-12-06T06:00:00+00:00",
        "end_date": "2026-12-06T06:01:00+00:00",
    }
    [message] = [m for m in client.sent if json.loads(m["MessageBody"])["id"] == daily["id"]]
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attributes == {
        "uri": "dagrun://team-a-prod/etl_daily/success",
        "event_id": daily["id"],
        "source_deployment": "team-a-prod",
    }


def test_the_dag_run_listener_shares_the_asset_listener_s_background_sender(monkeypatch, configured):
    (assets, runs), _ = listeners_of(monkeypatch, "3.3.2")
    (datasets, runs2, sweeper), _ = listeners_of(monkeypatch, "2.11.2")

    assert runs.sender is assets.sender
    assert runs2.sender is datasets.background
    assert sweeper.sweep.sender is datasets.background
    assert sweeper.sweep.recent is runs2.recent  # the sweep leaves alone what the hook reported


def test_same_outcome_twice_has_one_id_and_a_cleared_rerun_a_new_one(monkeypatch, configured):
    listener, manager, client = dag_run_listener(monkeypatch)

    manager.hook.on_dag_run_success(dag_run=DagRun(), msg="success")
    # Reported again for the same state change (another process; the scheduler loop retried): a new end date.
    manager.hook.on_dag_run_success(dag_run=DagRun(end_date=STARTED + timedelta(minutes=2)), msg="success")
    # Cleared and finished again: Airflow counted the clear and started the run anew.
    rerun = DagRun(clear_number=1, start_date=STARTED + timedelta(hours=1), end_date=STARTED + timedelta(hours=2))
    manager.hook.on_dag_run_success(dag_run=rerun, msg="success")

    sent = bodies(listener, client)  # in any order: the sender promises every envelope, not their order
    assert len(sent) == 3
    ids_by_start = {}
    for envelope in sent:
        ids_by_start.setdefault(envelope["extra"]["start_date"], set()).add(envelope["id"])
    first_try, after_clear = (ids_by_start[start] for start in sorted(ids_by_start))
    assert len(first_try) == 1  # the same outcome reported twice: one id
    assert after_clear.isdisjoint(first_try)  # the cleared rerun: a new id


def test_run_started_through_trigger_dag_extends_the_conf_trail_or_stops_a_loop(monkeypatch, configured):
    listener, manager, client = dag_run_listener(monkeypatch)
    conf_from_elsewhere = {LINEAGE_KEY: {"id": "e1", "uri": "dagrun://team-z/x/success", "trail": ["team-z"]}}
    conf_looped = {LINEAGE_KEY: {"id": "e2", "trail": ["team-a-prod", "team-z"]}}

    manager.hook.on_dag_run_success(dag_run=DagRun(conf=conf_looped), msg="success")
    manager.hook.on_dag_run_failed(dag_run=DagRun(state="failed", conf=conf_from_elsewhere), msg="task_failure")

    [envelope] = bodies(listener, client)
    assert envelope["trail"] == ["team-z", "team-a-prod"]
    assert envelope["extra"]["state"] == "failed"
    assert "uri" not in envelope["extra"]  # the conf is never forwarded


@pytest.mark.parametrize(
    ("version", "run_type", "relationship"),
    [("3.3.2", "asset_triggered", "consumed_asset_events"), ("2.11.2", "dataset_triggered", "consumed_dataset_events")],
)
def test_asset_triggered_run_reads_its_consumed_events_trails_in_the_caller_s_session(
    monkeypatch,
    configured,
    version,
    run_type,
    relationship,
):
    listener, manager, client = dag_run_listener(monkeypatch, version)
    session = fake_airflow.Session()
    consumed = [event_with_trail("team-x"), event_with_trail("team-y", "team-x")]
    looped = [event_with_trail("team-a-prod")]

    manager.hook.on_dag_run_success(
        dag_run=DagRun(run_type=run_type, session=session, consumed=consumed, relationship=relationship),
        msg="success",
    )
    manager.hook.on_dag_run_success(
        dag_run=DagRun(run_id="r2", run_type=run_type, session=session, consumed=looped, relationship=relationship),
        msg="success",
    )

    [envelope] = bodies(listener, client)
    assert envelope["trail"] == ["team-x", "team-y", "team-a-prod"]
    assert session.reads_without_autoflush == 2
    assert session.autoflush is True  # left as it was


def test_consumed_events_are_not_read_for_other_runs_nor_for_detached_runs(monkeypatch, configured):
    listener, manager, client = dag_run_listener(monkeypatch)
    session = fake_airflow.Session()

    # A manual run: its consumed events are not looked at (no query in the scheduler's loop).
    manual = DagRun(session=session, consumed=[event_with_trail("team-a-prod")], relationship="consumed_asset_events")
    manager.hook.on_dag_run_success(dag_run=manual, msg="success")
    # `airflow dags test`: detached, reading would raise; the outcome goes out with what the conf says.
    detached = DagRun(run_id="r2", run_type="asset_triggered", relationship="consumed_asset_events")
    manager.hook.on_dag_run_success(dag_run=detached, msg="success")

    sent = bodies(listener, client)
    assert [e["trail"] for e in sent] == [["team-a-prod"], ["team-a-prod"]]
    assert session.reads_without_autoflush == 0


def test_a_failing_read_of_consumed_events_still_reports_the_outcome(monkeypatch, configured, caplog):
    listener, manager, client = dag_run_listener(monkeypatch)

    class Broken:
        autoflush = True

        @property
        def no_autoflush(self):
            raise RuntimeError("database is locked")

    run = DagRun(run_type="asset_triggered", session=Broken(), relationship="consumed_asset_events")
    with caplog.at_level(logging.WARNING):
        manager.hook.on_dag_run_success(dag_run=run, msg="success")

    assert len(bodies(listener, client)) == 1
    assert "Could not read the asset events" in caplog.text


def test_the_hook_never_waits_for_sqs(monkeypatch, configured):
    listener, manager, client = dag_run_listener(monkeypatch, "2.11.2")
    client.delay_s = 3.0  # SQS answers after 3 s (the send budget is 5 s)

    started = time.monotonic()
    manager.hook.on_dag_run_failed(dag_run=DagRun(state="failed"), msg="task_failure")
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, elapsed  # a spool write and a queue put: the scheduler's loop goes on
    # spooled (waiting or being sent: Spool.count tolerates a claim between its listings)
    assert listener.sender.sender.spool.count() == 1
    assert len(bodies(listener, client)) == 1


def test_a_failing_hook_never_reaches_airflow(monkeypatch, configured, caplog):
    listener, manager, client = dag_run_listener(monkeypatch)

    with caplog.at_level(logging.WARNING):
        manager.hook.on_dag_run_success(dag_run=object(), msg="success")
        manager.hook.on_dag_run_failed(dag_run=DagRun(start_date="not a date"), msg="task_failure")

    assert "on_dag_run_success failed" in caplog.text
    assert "on_dag_run_failed failed" in caplog.text
    assert bodies(listener, client) == []
