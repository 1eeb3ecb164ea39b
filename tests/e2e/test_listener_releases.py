"""The listener in other Airflow releases it supports: 2.9, 2.10, 3.0, 3.1 and 3.2 (each its newest patch).

test_listener.py covers 3.3 and 2.11 in depth; here each further minor release runs one `airflow dags test` of a
producer with the listener installed from this checkout, and the envelope on the queue (moto server) is checked.
The hook API differs between releases, and so does what the envelope can carry:
- 3.0, 3.1: only `on_asset_changed` exists: the asset is forwarded, without extra or source (and a warning says so);
- 3.2: `on_asset_event_emitted`, as in 3.3: extra and source;
- 2.10: the task's dataset events, extra included (set here through `outlet_events`);
- 2.9: the same hook path; `outlet_events` does not exist yet, so the event's extra is empty.
On 2.x the forwarding dataset manager is configured too (2.9 has an instance method, 2.10+ a classmethod): the
task's event still goes out once. `DATASET_FORWARDER_DAG_RUNS` names the producer, so its run's outcome goes out too,
as one `dag_run` envelope (the DAG-run hooks have the same signature on every release).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.airflow_env import AirflowDeployment, ensure_airflow_venv
from devkit.listener_support import MotoSqs, dags_test, envelope_validator, spool_leftovers
from devkit.paths import listener_extras
from tests.e2e.test_listener import (
    AIRFLOW2_PRODUCER,
    AIRFLOW3_PRODUCER,
    BEAR_EXTRA,
    BEARS,
    MANAGER,
    assert_succeeded,
    migrated_deployment,
    producer_run_id,
    target,
)

pytestmark = pytest.mark.e2e

RELEASES = ("2.9.3", "2.10.5", "3.0.6", "3.1.8", "3.2.2")
# Installed without Airflow's constraint files (not reachable here), a release gets today's dependencies, which it
# may predate, and its own `dags test` fails before any listener runs: 3.0.6's execution API rejects its task's
# state update (422); 3.2.2's execution API fails to build its models with today's FastAPI (a discriminated union)
# and, with an older FastAPI, finds no `svcs_registry` with svcs 26. Pinned back to releases of its time; a
# deployment installs with constraints anyway.
PINS: dict[str, tuple[str, ...]] = {
    "3.0.6": ("pydantic==2.11.7", "fastapi==0.116.1"),
    "3.2.2": ("fastapi==0.136.3", "svcs==25.1.0"),
}
NO_EVENT_HOOK_WARNING = "no on_asset_event_emitted"

AIRFLOW29_PRODUCER = f"""
from datetime import datetime, timezone

from airflow import DAG
from airflow.datasets import Dataset
from airflow.decorators import task

with DAG("producer", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task(outlets=[Dataset("{BEARS}"), Dataset("s3://other/fish")])
    def get_bear():
        return None

    get_bear()
"""


@contextlib.contextmanager
def release_deployment(
    request: pytest.FixtureRequest, version: str, name: str, producer: str, moto: MotoSqs, tmp_path: Path
) -> Iterator[tuple[AirflowDeployment, str, Path]]:
    """A migrated deployment ``name`` of Airflow ``version`` (with its PINS) and the listener from this checkout, with
    a fresh queue of the same name and a spool in ``tmp_path``: (deployment, queue, spool)."""
    venv = ensure_airflow_venv(version, (*listener_extras(), *PINS.get(version, ())))
    queue, spool = moto.create_queue(name), tmp_path / "spool"
    with contextlib.contextmanager(migrated_deployment)(request, venv, tmp_path, name, producer, moto) as deployment:
        yield deployment, queue, spool


def _producer(version: str) -> str:
    if version.startswith("2.9."):
        return AIRFLOW29_PRODUCER
    return AIRFLOW2_PRODUCER if version.startswith("2.") else AIRFLOW3_PRODUCER


@pytest.mark.parametrize("version", RELEASES)
def test_release_forwards_the_producer_s_event(
    version: str, moto: MotoSqs, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    name = f"team-{version.replace('.', '-')}"
    with release_deployment(request, version, name, _producer(version), moto, tmp_path) as (deployment, queue, spool):
        # Airflow 2: with the forwarding dataset manager too, which must leave task events to the hook.
        manager = {"AIRFLOW__CORE__DATASET_MANAGER_CLASS": MANAGER} if version.startswith("2.") else {}
        run = dags_test(
            deployment, "producer", **target(queue, spool, DATASET_FORWARDER_DAG_RUNS="producer", **manager)
        )

        assert_succeeded(run)
        received = moto.drain(queue)  # `dags test` has exited: what it sent is on the queue
        runs = [m for m in received if m.body.get("kind") == "dag_run"]
        messages = [m for m in received if m.body.get("kind") != "dag_run"]
        assert [m.uri for m in messages] == [BEARS], ([m.body for m in received], run.tail())  # FISH: not included
        assert [m.uri for m in runs] == [f"dagrun://{name}/producer/success"], ([m.body for m in received], run.tail())
        run_errors = [e.message for e in envelope_validator().iter_errors(runs[0].body)]
        assert not run_errors, (run_errors, runs[0].body)
        assert runs[0].body["extra"]["run_id"] == producer_run_id(run)
        assert runs[0].body["source"]["airflow_version"] == version
        body = messages[0].body
        errors = [e.message for e in envelope_validator().iter_errors(body)]
        assert not errors, (errors, body)
        assert body["trail"] == [name]
        source = body["source"]
        assert (source["deployment"], source["airflow_version"]) == (name, version)
        release = tuple(int(part) for part in version.split(".")[:2])
        if release in ((3, 0), (3, 1)):  # on_asset_changed: the asset, nothing of the event
            assert body["extra"] == {}
            assert source["dag_id"] is None
            assert NO_EVENT_HOOK_WARNING in run.output, run.tail()
        else:
            assert NO_EVENT_HOOK_WARNING not in run.output, run.tail()
            assert body["extra"] == ({} if release == (2, 9) else BEAR_EXTRA)
            assert (source["dag_id"], source["task_id"]) == ("producer", "get_bear")
            assert source["run_id"] == producer_run_id(run)
        assert spool_leftovers(spool) == []
