"""Airflow 3.0/3.1's forwarding asset manager, against the fake Airflow, with the plugin's hooks registered."""

from __future__ import annotations

import importlib
import json
import logging
import time
import types
from datetime import datetime, timezone

import pytest

from dataset_forwarder_listener import config
from dataset_forwarder_listener.envelope import LINEAGE_KEY, UpstreamEvent, build
from tests.fakes import airflow as fake_airflow
from tests.fakes.sqs import StubSqs
from tests.test_plugin_and_hooks import configured, load_plugin, use_stub  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("configured")  # the listener is configured, spooling under tmp_path

REGISTERED = datetime(2026, 11, 23, 23, 0, 7, tzinfo=timezone.utc)
BEARS = "s3://bucket/bears"
LIMITS_WARNING = "no on_asset_event_emitted"


def asset(uri=BEARS, name="bears"):
    return types.SimpleNamespace(uri=uri, name=name)


def registered_event(event_id=11, extra=None, task=True):
    """An ``AssetEvent`` row as register_asset_change returns it: flushed, so with its id and timestamp."""
    source = ("producer", "get_bear", "manual__1", -1) if task else (None, None, None, -1)
    return types.SimpleNamespace(
        id=event_id,
        extra={"rows": 42} if extra is None else extra,
        source_dag_id=source[0],
        source_task_id=source[1],
        source_run_id=source[2],
        source_map_index=source[3],
        timestamp=REGISTERED,
    )


def task_instance():
    return types.SimpleNamespace(dag_id="producer", task_id="get_bear", run_id="manual__1", map_index=-1)


def forwarding(monkeypatch, version="3.1.8"):
    plugin, hooks = load_plugin(monkeypatch, version, event_hook=version >= "3.2")
    [listener] = plugin.DatasetForwarderPlugin.listeners
    client = StubSqs()
    use_stub(listener, client)
    module = importlib.import_module("dataset_forwarder_listener.manager_af3")
    return types.SimpleNamespace(
        manager=module.ForwardingAssetManager(), base=fake_airflow.AssetManager, hooks=hooks, listener=listener,
        client=client,
    )  # fmt: skip


def sent(setup):
    setup.listener.sender.close(timeout_s=5)  # sends what was submitted, within its budget
    return [json.loads(body) for body in setup.client.bodies]


@pytest.mark.parametrize("version", ["3.0.6", "3.1.8"])
def test_task_event_goes_out_once_with_its_extra_and_source(monkeypatch, caplog, envelope_validator, version):
    setup = forwarding(monkeypatch, version)
    setup.base.events[BEARS] = registered_event()

    with caplog.at_level(logging.WARNING):
        returned = setup.manager.register_asset_change(
            task_instance=task_instance(), asset=asset(), extra={"rows": 42}, session="S"
        )

    assert returned is setup.base.events[BEARS]  # Airflow's result, unchanged
    assert [(c["uri"], c["extra"], c["session"]) for c in setup.base.calls] == [(BEARS, {"rows": 42}, "S")]
    [envelope] = sent(setup)  # the on_asset_changed hook, called within the registration, sent nothing
    envelope_validator.validate(envelope)
    assert (envelope["uri"], envelope["name"], envelope["extra"]) == (BEARS, "bears", {"rows": 42})
    assert envelope["source"] == {
        "deployment": "team-a-prod", "airflow_version": version,
        "dag_id": "producer", "task_id": "get_bear", "run_id": "manual__1", "map_index": -1,
    }  # fmt: skip
    assert envelope["emitted_at"] == "2026-11-23T23:00:07+00:00"
    assert envelope["trail"] == ["team-a-prod"]
    assert LIMITS_WARNING not in caplog.text


def test_rest_event_goes_out_and_its_id_follows_the_db_row(monkeypatch):
    setup = forwarding(monkeypatch)
    setup.base.events[BEARS] = registered_event(extra={"from_rest_api": True}, task=False)

    setup.manager.register_asset_change(asset=asset())  # no session passed: none invented

    [envelope] = sent(setup)
    assert envelope["extra"] == {"from_rest_api": True}
    assert envelope["source"]["dag_id"] is None
    # The id follows the event's DB id (not a key new to each call), so a resend of the row is recognised.
    rebuilt = build(
        UpstreamEvent(uri=BEARS, name="bears", event_key="11", timestamp=REGISTERED),
        deployment="team-a-prod",
        airflow_version="3.1.8",
    )
    assert rebuilt is not None
    assert envelope["id"] == rebuilt["id"]
    assert [c["session"] for c in setup.base.calls] == [fake_airflow.OWN_SESSION]


def test_include_rules_loop_guard_and_unknown_assets(monkeypatch):
    monkeypatch.setenv(config.INCLUDE, "s3://bucket/*")
    setup = forwarding(monkeypatch)
    fish = "s3://other/fish"
    setup.base.events[fish] = registered_event(event_id=1)
    looped = registered_event(event_id=2, extra={LINEAGE_KEY: {"trail": ["team-a-prod"]}})
    from_elsewhere = registered_event(event_id=3, extra={LINEAGE_KEY: {"trail": ["team-x"]}})

    setup.manager.register_asset_change(task_instance=task_instance(), asset=asset(fish, "fish"))
    setup.base.events[BEARS] = looped
    setup.manager.register_asset_change(task_instance=task_instance(), asset=asset())
    setup.base.events[BEARS] = from_elsewhere
    setup.manager.register_asset_change(task_instance=task_instance(), asset=asset())
    assert setup.manager.register_asset_change(asset=asset("s3://bucket/unknown")) is None

    [envelope] = sent(setup)
    assert envelope["trail"] == ["team-x", "team-a-prod"]


def test_failing_forward_never_reaches_airflow_and_the_hook_does_not_step_in(monkeypatch, caplog):
    setup = forwarding(monkeypatch)
    setup.base.events[BEARS] = registered_event()

    def broken(event):
        raise RuntimeError("boom")

    monkeypatch.setattr(setup.listener, "forward", broken)
    with caplog.at_level(logging.WARNING):
        returned = setup.manager.register_asset_change(task_instance=task_instance(), asset=asset())

    assert returned is setup.base.events[BEARS]  # the task's state update still succeeds
    assert "register_asset_change failed" in caplog.text
    assert sent(setup) == []


def test_the_request_pays_a_spool_write_not_the_send(monkeypatch):
    setup = forwarding(monkeypatch)
    setup.base.events[BEARS] = registered_event()
    setup.client.delay_s = 3.0  # SQS answers after 3 s (the send budget is 5 s)

    started = time.monotonic()
    setup.manager.register_asset_change(task_instance=task_instance(), asset=asset())

    assert time.monotonic() - started < 1.0
    assert len(sent(setup)) == 1


def test_events_registered_elsewhere_still_reach_the_hook(monkeypatch, caplog):
    """Asset watchers call the base AssetManager, not the configured one: the hook forwards those, as before."""
    setup = forwarding(monkeypatch)
    setup.base.events[BEARS] = registered_event()

    with caplog.at_level(logging.WARNING):
        setup.base.register_asset_change(asset=asset())

    [envelope] = sent(setup)
    assert envelope["extra"] == {}
    assert LIMITS_WARNING in caplog.text


def test_on_airflow_3_2_plus_the_manager_leaves_forwarding_to_the_event_hook(monkeypatch):
    setup = forwarding(monkeypatch, "3.3.2")
    setup.base.events[BEARS] = registered_event()

    returned = setup.manager.register_asset_change(task_instance=task_instance(), asset=asset())

    assert returned is setup.base.events[BEARS]
    [envelope] = sent(setup)  # from on_asset_event_emitted only
    assert envelope["extra"] == {"rows": 42}
    assert envelope["source"]["task_id"] == "get_bear"
