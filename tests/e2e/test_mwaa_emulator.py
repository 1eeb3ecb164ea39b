"""boto3's `mwaa` client -> the local MWAA emulator -> real Airflow 2.11 and 3.3: the version and a DAG run.

The emulator's relay (REST root per major, basic auth on 2, a JWT from /auth/token on 3) and its answer shapes are
checked against real Airflow, including the 409 a repeated `dag_run_id` gets (what a `trigger_dag` retry relies on).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from dataset_forwarder_cli.local.mwaa import MwaaEmulator
from devkit.airflow_env import AirflowDeployment, DeploymentFactory

DAG = """
from datetime import datetime, timezone

{imports}

with DAG("refresh", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task
    def refresh():
        return 1

    refresh()
"""
DAGS = {
    3: DAG.format(imports="from airflow.sdk import DAG, task"),
    2: DAG.format(imports="from airflow import DAG\nfrom airflow.decorators import task"),
}


def _ready(deployment: AirflowDeployment) -> AirflowDeployment:
    deployment.migrate()
    deployment.start(scheduler=False)  # a DAG run is created by the API alone; nothing needs to run it
    deployment.wait_healthy(timeout_s=120)
    return deployment


def test_boto3_mwaa_client_reaches_real_airflow_2_and_3_through_the_emulator(
    airflow3_venv: Path, airflow2_venv: Path, deployment_factory: DeploymentFactory
) -> None:
    deployments = {
        f"mwaa-af{major}": deployment_factory(venv, name=f"af{major}", dags={"refresh.py": DAGS[major]})
        for major, venv in ((3, airflow3_venv), (2, airflow2_venv))
    }
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(_ready, deployments.values()))

    with MwaaEmulator() as emulator:
        for name, deployment in deployments.items():
            user = deployment.user
            emulator.add_environment(
                name, deployment.url, airflow=str(deployment.major), username=user.username, password=user.password
            )
        mwaa = emulator.client()

        for name, deployment in deployments.items():
            version = mwaa.invoke_rest_api(Name=name, Path="/version", Method="GET")
            assert version["RestApiStatusCode"] == 200
            assert version["RestApiResponse"]["version"] == deployment.version

            run_id = f"dataset_forwarder__{name}"
            body = {"dag_run_id": run_id, "conf": {"dataset_forwarder": {"id": name}}}
            if deployment.major >= 3:
                body["logical_date"] = None
            created = mwaa.invoke_rest_api(Name=name, Path="/dags/refresh/dagRuns", Method="POST", Body=body)
            assert created["RestApiStatusCode"] == 200
            assert created["RestApiResponse"]["dag_run_id"] == run_id

            (run,) = [r for r in deployment.dag_runs("refresh") if r["dag_run_id"] == run_id]
            assert run["conf"] == {"dataset_forwarder": {"id": name}}

            with pytest.raises(mwaa.exceptions.RestApiClientException) as again:
                mwaa.invoke_rest_api(Name=name, Path="/dags/refresh/dagRuns", Method="POST", Body=body)
            assert again.value.response["RestApiStatusCode"] == 409

        assert [(call.environment, call.path, call.rest_api_status) for call in emulator.calls] == [
            (name, path, status)
            for name in deployments
            for path, status in (("/version", 200), ("/dags/refresh/dagRuns", 200), ("/dags/refresh/dagRuns", 409))
        ]
