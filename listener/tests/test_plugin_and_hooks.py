"""The plugin and the hooks, loaded against a fake Airflow and called through pluggy as Airflow does."""

from __future__ import annotations

import importlib
import json
import logging
import time
import types
from datetime import datetime, timedelta, timezone

import pytest

from dataset_forwarder_listener import config
from dataset_forwarder_listener.envelope import LINEAGE_KEY
from dataset_forwarder_listener.sender import BackgroundSender, Sender, SqsTransport
from tests.conftest import QUEUE_URL
from tests.fakes import airflow as fake_airflow
from tests.fakes.sqs import StubSqs, connection_error

START = datetime(2026, 11, 23, 23, 0, tzinfo=timezone.utc)


@pytest.fixture
def configured(monkeypatch, tmp_path):
    monkeypatch.setenv(config.QUEUE_URL, QUEUE_URL)
    monkeypatch.setenv(config.DEPLOYMENT, "team-a-prod")
    monkeypatch.setenv(config.SPOOL_DIR, str(tmp_path / "spool"))
    return tmp_path / "spool"


def load_plugin(monkeypatch, version, **kwargs):
    manager = fake_airflow.install(monkeypatch, version, **kwargs)
    plugin = importlib.import_module("dataset_forwarder_listener.plugin")
    for listener in plugin.DatasetForwarderPlugin.listeners:
        manager.register(listener)
    return plugin, manager


def use_stub(listener, client):
    """Point the listener's sender at a stub SQS client."""
    sender = listener.sender.sender if isinstance(listener.sender, BackgroundSender) else listener.sender
    sender.transport = SqsTransport(QUEUE_URL, client_factory=lambda: client)


def asset_event(**overrides):
    fields = {
        "asset": types.SimpleNamespace(uri="s3://bucket/bears", name="bears", extra={"static": True}),
        "extra": {"rows": 42},
        "source_dag_id": "producer",
        "source_task_id": "get_bear",
        "source_run_id": "manual__1",
        "source_map_index": -1,
        "source_aliases": [],
        "partition_key": None,
    }
    fields.update(overrides)
    return types.SimpleNamespace(**fields)


def test_unconfigured_plugin_registers_nothing_and_warns_once(monkeypatch, caplog):
    monkeypatch.delenv(config.QUEUE_URL, raising=False)

    with caplog.at_level(logging.WARNING):
        plugin, _ = load_plugin(monkeypatch, "3.3.2")
        plugin.get_listener()

    assert plugin.DatasetForwarderPlugin.name == "dataset_forwarder"
    assert plugin.DatasetForwarderPlugin.listeners == []
    warnings = [r for r in caplog.records if config.QUEUE_URL in r.getMessage()]
    assert len(warnings) == 1


def test_listener_that_cannot_be_built_leaves_airflow_alone(monkeypatch, configured, caplog):
    monkeypatch.setattr(config, "load", lambda: 1 / 0)

    with caplog.at_level(logging.WARNING):
        plugin, _ = load_plugin(monkeypatch, "3.3.2")

    assert plugin.DatasetForwarderPlugin.listeners == []
    assert "could not be set up" in caplog.text


@pytest.mark.parametrize(
    ("version", "expected"),
    [("3.3.2", (3, 3)), ("2.11.0rc1", (2, 11)), ("3", (3, 0)), ("dev", (0, 0)), ("2.9.3+astro.1", (2, 9))],
)
def test_airflow_release(monkeypatch, version, expected):
    plugin, _ = load_plugin(monkeypatch, "3.3.2")

    assert plugin.airflow_release(version) == expected


def test_airflow_3_2_plus_forwards_asset_events_with_extra_and_source(monkeypatch, configured, envelope_validator):
    plugin, manager = load_plugin(monkeypatch, "3.3.2")
    [listener] = plugin.DatasetForwarderPlugin.listeners
    client = StubSqs()
    use_stub(listener, client)

    assert hasattr(listener, "on_asset_event_emitted")
    assert not hasattr(listener, "on_asset_changed")  # would forward every event twice on 3.2+
    manager.hook.on_asset_event_emitted(asset_event=asset_event())
    manager.hook.on_asset_changed(asset=asset_event().asset)
    listener.sender.close(timeout_s=5)

    [body] = client.bodies
    envelope = json.loads(body)
    envelope_validator.validate(envelope)
    assert envelope["uri"] == "s3://bucket/bears"
    assert envelope["name"] == "bears"
    assert envelope["extra"] == {"rows": 42}
    assert envelope["source"] == {
        "deployment": "team-a-prod",
        "airflow_version": "3.3.2",
        "dag_id": "producer",
        "task_id": "get_bear",
        "run_id": "manual__1",
        "map_index": -1,
    }
    assert envelope["trail"] == ["team-a-prod"]


def test_airflow_3_2_plus_carries_the_asset_event_s_partition_key(monkeypatch, configured, envelope_validator):
    plugin, manager = load_plugin(monkeypatch, "3.3.2")
    [listener] = plugin.DatasetForwarderPlugin.listeners
    client = StubSqs()
    use_stub(listener, client)

    manager.hook.on_asset_event_emitted(asset_event=asset_event(partition_key="2026-12-06|eu"))
    manager.hook.on_asset_event_emitted(asset_event=asset_event())
    listener.sender.close(timeout_s=5)

    envelopes = [json.loads(body) for body in client.bodies]
    assert [e["partition_key"] for e in envelopes] == ["2026-12-06|eu", None]
    assert [e["kind"] for e in envelopes] == ["asset_event", "asset_event"]
    for envelope in envelopes:
        envelope_validator.validate(envelope)


def test_airflow_3_loop_guard_and_include_filter(monkeypatch, configured):
    monkeypatch.setenv(config.INCLUDE, "s3://bucket/*")
    plugin, manager = load_plugin(monkeypatch, "3.3.2")
    [listener] = plugin.DatasetForwarderPlugin.listeners
    client = StubSqs()
    use_stub(listener, client)
    elsewhere = types.SimpleNamespace(uri="s3://elsewhere/x", name="x")

    manager.hook.on_asset_event_emitted(asset_event=asset_event(extra={LINEAGE_KEY: {"trail": ["team-a-prod"]}}))
    manager.hook.on_asset_event_emitted(asset_event=asset_event(asset=elsewhere))
    manager.hook.on_asset_event_emitted(asset_event=asset_event(extra={LINEAGE_KEY: {"trail": ["team-x"]}}))
    listener.sender.close(timeout_s=5)

    [body] = client.bodies
    assert json.loads(body)["trail"] == ["team-x", "team-a-prod"]


def test_airflow_3_0_and_3_1_fall_back_to_on_asset_changed(monkeypatch, configured, caplog, envelope_validator):
    plugin, manager = load_plugin(monkeypatch, "3.1.5", event_hook=False)
    [listener] = plugin.DatasetForwarderPlugin.listeners
    client = StubSqs()
    use_stub(listener, client)

    assert not hasattr(listener, "on_asset_event_emitted")
    with caplog.at_level(logging.WARNING):
        manager.hook.on_asset_changed(asset=types.SimpleNamespace(uri="s3://bucket/bears", name="bears"))
        manager.hook.on_asset_changed(asset=types.SimpleNamespace(uri="s3://bucket/bears", name="bears"))
    listener.sender.close(timeout_s=5)

    assert len(client.bodies) == 2
    envelope = json.loads(client.bodies[0])
    envelope_validator.validate(envelope)
    assert envelope["extra"] == {}
    assert envelope["source"]["dag_id"] is None
    assert envelope["source"]["airflow_version"] == "3.1.5"
    assert json.loads(client.bodies[1])["id"] != envelope["id"]
    assert len([r for r in caplog.records if "no on_asset_event_emitted" in r.getMessage()]) == 1


def test_airflow_3_hook_failure_never_reaches_airflow(monkeypatch, configured, caplog):
    _, manager = load_plugin(monkeypatch, "3.3.2")

    with caplog.at_level(logging.WARNING):
        manager.hook.on_asset_event_emitted(asset_event=object())

    assert "on_asset_event_emitted failed" in caplog.text


def dataset_event(event_id, uri_extra=None, timestamp=START + timedelta(seconds=5)):
    return types.SimpleNamespace(
        id=event_id,
        extra=uri_extra if uri_extra is not None else {"rows": event_id},
        source_dag_id="producer",
        source_task_id="get_bear",
        source_run_id="manual__1",
        source_map_index=-1,
        timestamp=timestamp,
    )


def task_instance(start_date=START):
    return types.SimpleNamespace(
        dag_id="producer", task_id="get_bear", run_id="manual__1", map_index=-1, start_date=start_date
    )


@pytest.fixture
def af2(monkeypatch, configured):
    plugin, manager = load_plugin(monkeypatch, "2.11.2")
    [listener] = plugin.DatasetForwarderPlugin.listeners
    hooks = importlib.import_module("dataset_forwarder_listener.hooks_af2")
    queries = []

    def events_of_try(session, ti, since):
        queries.append((session, ti, since))
        return [(dataset_event(1), "s3://bucket/bears"), (dataset_event(2), "s3://bucket/wolves")]

    monkeypatch.setattr(hooks, "events_of_try", events_of_try)
    client = StubSqs()
    use_stub(listener, client)
    return types.SimpleNamespace(listener=listener, manager=manager, client=client, queries=queries, hooks=hooks)


def test_airflow_2_sends_the_try_s_events_before_the_hook_returns(af2, envelope_validator):
    assert isinstance(af2.listener.sender, Sender)

    af2.manager.hook.on_task_instance_success(previous_state=None, task_instance=task_instance(), session="S")

    assert [q[0] for q in af2.queries] == ["S"]
    assert af2.queries[0][2] == START
    envelopes = [json.loads(b) for b in af2.client.bodies]
    assert [e["uri"] for e in envelopes] == ["s3://bucket/bears", "s3://bucket/wolves"]
    assert envelopes[0]["extra"] == {"rows": 1}
    assert envelopes[0]["name"] is None
    assert envelopes[0]["source"]["run_id"] == "manual__1"
    assert envelopes[0]["emitted_at"] == "2026-11-23T23:00:05+00:00"
    for envelope in envelopes:
        envelope_validator.validate(envelope)


def rest_event(event_id=7):
    """A DatasetEvent row as the REST API makes it: no source ids, the map index column's default."""
    return types.SimpleNamespace(
        id=event_id, extra={"rows": 5, "from_rest_api": True}, source_dag_id=None, source_task_id=None,
        source_run_id=None, source_map_index=-1, timestamp=START + timedelta(seconds=9),
    )  # fmt: skip


@pytest.fixture
def forwarding_manager(af2):
    managers = importlib.import_module("dataset_forwarder_listener.manager_af2")
    base = managers.DatasetManager
    base.events["s3://bucket/bears"] = rest_event()
    return types.SimpleNamespace(
        manager=managers.ForwardingDatasetManager(),
        module=managers,
        base=base,
        client=af2.client,
        listener=af2.listener,
    )


def close_background(forwarding_manager):
    """Let the manager's background sender send what it has (close waits for that, within its budget)."""
    forwarding_manager.listener.background.close(timeout_s=5)


def bears():
    return types.SimpleNamespace(uri="s3://bucket/bears")


def test_airflow_2_manager_forwards_an_event_without_task(forwarding_manager, envelope_validator):
    returned = forwarding_manager.manager.register_dataset_change(dataset=bears(), extra={"rows": 5}, session="S")
    close_background(forwarding_manager)

    assert returned is forwarding_manager.base.events["s3://bucket/bears"]  # Airflow's result, unchanged
    assert forwarding_manager.base.calls == [
        {"task_instance": None, "uri": "s3://bucket/bears", "extra": {"rows": 5}, "session": "S"}
    ]
    [envelope] = [json.loads(b) for b in forwarding_manager.client.bodies]
    assert envelope["extra"] == {"rows": 5, "from_rest_api": True}
    assert envelope["source"] == {
        "deployment": "team-a-prod", "airflow_version": "2.11.2",
        "dag_id": None, "task_id": None, "run_id": None, "map_index": None,
    }  # fmt: skip
    assert envelope["emitted_at"] == "2026-11-23T23:00:09+00:00"
    envelope_validator.validate(envelope)


def test_airflow_2_manager_leaves_task_events_to_the_hook_and_passes_arguments_as_given(forwarding_manager):
    forwarding_manager.manager.register_dataset_change(task_instance=task_instance(), dataset=bears())
    forwarding_manager.manager.register_dataset_change(dataset=types.SimpleNamespace(uri="s3://unknown"))
    close_background(forwarding_manager)

    assert forwarding_manager.client.bodies == []  # a task's event (the hook sends it) and an unknown dataset
    # No session passed, none invented: Airflow's @provide_session opens its own (an explicit None would not).
    assert [call["session"] for call in forwarding_manager.base.calls] == [fake_airflow.OWN_SESSION] * 2


def test_airflow_2_manager_does_not_wait_for_a_hanging_queue_and_keeps_the_event_spooled(
    forwarding_manager, configured
):
    forwarding_manager.client.delay_s = 3.0  # SQS answers after 3 s (the send budget is 5 s)

    started = time.monotonic()
    forwarding_manager.manager.register_dataset_change(dataset=bears())
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, elapsed  # the request pays a spool write, not the send
    # Held, waiting or in flight, until SQS has answered. By name: the sender may claim it (spool/ -> inflight/)
    # while rglob walks the two directories, and then it is seen in both.
    assert len({path.name for path in configured.rglob("*.json")}) == 1
    close_background(forwarding_manager)
    assert len(forwarding_manager.client.bodies) == 1


def test_airflow_2_manager_returns_airflow_s_event_even_when_forwarding_raises(forwarding_manager, monkeypatch, caplog):
    def broken(events):
        raise RuntimeError("boom")

    monkeypatch.setattr(forwarding_manager.listener, "envelopes", broken)

    with caplog.at_level(logging.WARNING):
        returned = forwarding_manager.manager.register_dataset_change(dataset=bears())

    assert returned is forwarding_manager.base.events["s3://bucket/bears"]  # the REST call still succeeds
    assert "register_dataset_change failed" in caplog.text


def test_airflow_2_ids_follow_the_db_row_so_a_resend_is_recognised(af2):
    ti = task_instance()
    af2.manager.hook.on_task_instance_success(previous_state=None, task_instance=ti, session="S")
    af2.manager.hook.on_task_instance_success(previous_state=None, task_instance=ti, session="S")

    ids = [json.loads(b)["id"] for b in af2.client.bodies]
    assert ids[:2] == ids[2:]
    assert ids[0] != ids[1]


def test_airflow_2_without_start_date_uses_the_time_the_try_began(af2):
    ti = task_instance(start_date=None)

    af2.manager.hook.on_task_instance_running(previous_state=None, task_instance=ti, session="S")
    af2.manager.hook.on_task_instance_success(previous_state=None, task_instance=ti, session="S")
    af2.manager.hook.on_task_instance_success(previous_state=None, task_instance=ti, session="S")

    since_first, since_second = af2.queries[0][2], af2.queries[1][2]
    assert since_first is not None
    assert abs(datetime.now(timezone.utc) - since_first) < timedelta(seconds=5)
    assert since_second is None  # nothing recorded: every row of the try's ids


def test_airflow_2_queue_down_keeps_events_spooled_and_the_task_succeeds(af2, configured):
    af2.client.fail = connection_error()

    af2.manager.hook.on_task_instance_success(previous_state=None, task_instance=task_instance(), session="S")

    assert af2.client.calls == 1  # the second event is only spooled
    assert len(list(configured.glob("*.json"))) == 2


def test_airflow_2_hook_failure_never_reaches_airflow(af2, monkeypatch, caplog):
    def broken(session, ti, since):
        raise RuntimeError("db gone")

    monkeypatch.setattr(af2.hooks, "events_of_try", broken)

    with caplog.at_level(logging.WARNING):
        af2.manager.hook.on_task_instance_success(previous_state=None, task_instance=task_instance(), session="S")
        af2.manager.hook.on_task_instance_running(previous_state=None, task_instance=object(), session="S")

    assert "on_task_instance_success failed" in caplog.text
    assert "on_task_instance_running failed" in caplog.text
