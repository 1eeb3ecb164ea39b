"""Self-test of the e2e tooling: a REST-created asset/dataset event makes a real Airflow run the consumer DAG."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devkit.airflow_env import DeploymentFactory, venv_key

BEARS = "s3://bucket/bears"

# The same two DAGs for both majors; Airflow 2 calls an asset a dataset.
DAGS = {
    "producer.py": f"""
from datetime import datetime, timezone

{{imports}}

with DAG("producer", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task(outlets=[Asset("{BEARS}")])
    def produce():
        return 42

    produce()
""",
    "consumer.py": f"""
from datetime import datetime, timezone

{{imports}}

with DAG("consumer", schedule=[Asset("{BEARS}")], start_date=datetime(2024, 1, 1, tzinfo=timezone.utc)):
    @task
    def consume():
        return 1

    consume()
""",
}
AIRFLOW3_IMPORTS = "from airflow.sdk import DAG, Asset, task"
AIRFLOW2_IMPORTS = (
    "from airflow import DAG\nfrom airflow.datasets import Dataset as Asset\nfrom airflow.decorators import task"
)
AIRFLOW3_DAGS = {name: source.format(imports=AIRFLOW3_IMPORTS) for name, source in DAGS.items()}
AIRFLOW2_DAGS = {name: source.format(imports=AIRFLOW2_IMPORTS) for name, source in DAGS.items()}


@contextmanager
def step(label: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"[e2e] {label}: {time.monotonic() - started:.1f} s", file=sys.stderr)


def _event_reaches_consumer(deployment_factory: DeploymentFactory, venv: Path, dags: dict[str, str]) -> None:
    deployment = deployment_factory(venv, name="upstream", dags=dags)
    tag = f"Airflow {deployment.version}"
    with step(f"{tag} migrate + reserialize"):
        deployment.migrate()
    with step(f"{tag} dags test producer"):
        tested = deployment.dags_test("producer")
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]

    with step(f"{tag} start -> healthy"):
        deployment.start()
        deployment.wait_healthy()

    with step(f"{tag} scheduler runs the consumer for the event of dags test"):
        # Posting ours while that event still waits in the queue would leave ours for a later run.
        deployment.wait_queue_drained("consumer")

    with step(f"{tag} REST event -> consumer run succeeded"):
        event = deployment.create_asset_event(BEARS, extra={"rows": 42})

        def triggered_by_ours(run: dict[str, Any]) -> bool:
            return any(e["id"] == event["id"] for e in deployment.upstream_events("consumer", run["dag_run_id"]))

        runs = deployment.wait_for_dag_run("consumer", where=triggered_by_ours)

    assert event["extra"]["from_rest_api"] is True
    upstream = deployment.upstream_events("consumer", runs[0]["dag_run_id"])
    assert [e["extra"]["rows"] for e in upstream if e["id"] == event["id"]] == [42], upstream


def test_airflow3_rest_asset_event_triggers_consumer(
    airflow3_venv: Path, deployment_factory: DeploymentFactory
) -> None:
    _event_reaches_consumer(deployment_factory, airflow3_venv, AIRFLOW3_DAGS)


def test_airflow2_rest_dataset_event_triggers_consumer(
    airflow2_venv: Path, deployment_factory: DeploymentFactory
) -> None:
    _event_reaches_consumer(deployment_factory, airflow2_venv, AIRFLOW2_DAGS)


def test_venv_key_follows_local_package_content(tmp_path: Path) -> None:
    package = tmp_path / "listener"
    (package / "src").mkdir(parents=True)
    (package / "src" / "plugin.py").write_text("VALUE = 1\n")
    first = venv_key("3.3.2", [str(package)])

    (package / "src" / "__pycache__").mkdir()
    (package / "src" / "__pycache__" / "plugin.cpython-311.pyc").write_bytes(b"\0")
    (package / "build").mkdir()
    (package / "tests").mkdir()
    (package / "tests" / "test_plugin.py").write_text("def test(): ...\n")
    assert venv_key("3.3.2", [str(package)]) == first

    (package / "src" / "plugin.py").write_text("VALUE = 2\n")
    second = venv_key("3.3.2", [str(package)])
    assert second != first
    (package / "src" / "tests").mkdir()  # shipped inside the package: counts
    (package / "src" / "tests" / "helpers.py").write_text("X = 1\n")
    assert venv_key("3.3.2", [str(package)]) != second
    assert venv_key("2.11.2", [str(package)]) != venv_key("3.3.2", [str(package)])
    assert venv_key("3.3.2", ["requests==2.32.3"]) != venv_key("3.3.2")
