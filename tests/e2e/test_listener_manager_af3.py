"""Airflow 3.0 and 3.1 with the forwarding asset manager (`[core] asset_manager_class`): one `airflow dags test` of
the producer per release, the listener installed from this checkout, and the queue (moto server) checked.

Without the manager these releases forward the asset without its extra or source (test_listener_releases.py);
with it, the one envelope of the task's event carries both, and the `on_asset_changed` hook sends nothing more.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.listener_support import MotoSqs, dags_test, envelope_validator, spool_leftovers
from tests.e2e.test_listener import (
    AIRFLOW3_PRODUCER,
    BEAR_EXTRA,
    BEARS,
    assert_succeeded,
    producer_run_id,
    target,
)
from tests.e2e.test_listener_releases import NO_EVENT_HOOK_WARNING, release_deployment

pytestmark = pytest.mark.e2e

ASSET_MANAGER = "dataset_forwarder_listener.manager_af3.ForwardingAssetManager"


@pytest.mark.parametrize("version", ["3.0.6", "3.1.8"])
def test_asset_manager_forwards_the_task_s_event_once_with_extra_and_source(
    version: str, moto: MotoSqs, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = f"team-mgr-{version.replace('.', '-')}"
    with release_deployment(request, version, name, AIRFLOW3_PRODUCER, moto, tmp_path) as (deployment, queue, spool):
        manager = {"AIRFLOW__CORE__ASSET_MANAGER_CLASS": ASSET_MANAGER}
        run = dags_test(deployment, "producer", **target(queue, spool, **manager))

        assert_succeeded(run)
        received = moto.drain(queue)  # `dags test` has exited: what it sent is on the queue
        assert [m.uri for m in received] == [BEARS], ([m.body for m in received], run.tail())  # once; FISH excluded
        body = received[0].body
        errors = [e.message for e in envelope_validator().iter_errors(body)]
        assert not errors, (errors, body)
        assert body["extra"] == BEAR_EXTRA
        source = body["source"]
        assert (source["deployment"], source["airflow_version"]) == (name, version)
        assert (source["dag_id"], source["task_id"], source["map_index"]) == ("producer", "get_bear", -1)
        assert source["run_id"] == producer_run_id(run)
        assert body["trail"] == [name]
        assert NO_EVENT_HOOK_WARNING not in run.output, run.tail()  # the hook left the event to the manager
        assert spool_leftovers(spool) == []
