"""DAG-run outcomes and partitions across deployments, end to end (issue 15; docs/dag-outcomes.md).

Real upstream Airflow (its listener with DATASET_FORWARDER_DAG_RUNS) -> SQS on moto server -> the local stack's
poller -> the real handler -> real downstream Airflow. Three running deployments serve the module:

    up3   Airflow 3.3   outcome_ok / outcome_fail / produce_partition / ping (ping is scheduled on pong's success)
    down3 Airflow 3.3   consumers of up3's and af2's outcomes, the on-call DAG, the partitioned consumer, pong
    af2   Airflow 2.11  outcome_ok / outcome_fail, consumers of up3's and its own outcomes, the on-call DAG

so outcomes travel 3.3 -> 3.3, 3.3 -> 2.11, 2.11 -> 3.3 and 2.11 -> 2.11 (af2 to itself, through the stack), each
both ways downstream: (a) a DAG scheduled on
the `dagrun://` asset/dataset and (b) a `trigger_dag` target with the outcome in the run's conf. Targets "up3" and
"down3" carry their deployments' names, as the loop guard needs (the trail lists deployments).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devkit.airflow_env import AirflowDeployment
from devkit.local_forwarding import LocalStackProcess, asset_events, wait_until
from tests.e2e.conftest import deployments_running

pytestmark = pytest.mark.e2e

PARTITIONED = "s3://e2e/partitioned"
PARTITION_KEY = "2026-12-06"
ONCALL = "oncall"
RUN_ID_PREFIX = "dataset_forwarder__"


def _header(major: int) -> str:
    if major >= 3:
        return "from airflow.sdk import DAG, Asset, PartitionedAssetTimetable, task\n"
    return (
        "from airflow import DAG\nfrom airflow.datasets import Dataset as Asset\nfrom airflow.decorators import task\n"
    )


def _dag(dag_id: str, schedule: str = "None", body: str = "return 1", outlets: str = "[]") -> str:
    return f"""
with DAG({dag_id!r}, schedule={schedule}, start_date=START, catchup=False):
    @task(retries=0, outlets={outlets})
    def work(**context):
        {body}

    work()
"""


def _source(major: int, dags: Sequence[str]) -> str:
    start = "from datetime import datetime, timezone\n\nSTART = datetime(2024, 1, 1, tzinfo=timezone.utc)\n"
    return _header(major) + start + "".join(dags)


def _outcomes() -> list[str]:
    return [_dag("outcome_ok"), _dag("outcome_fail", body="raise RuntimeError('this task fails on purpose')")]


def _on(uri: str, dag_id: str) -> str:
    return _dag(dag_id, schedule=f"[Asset({uri!r})]")


UP3_DAGS = [
    *_outcomes(),
    _dag(
        "produce_partition",
        outlets=f"[Asset({PARTITIONED!r})]",
        body=f"context['outlet_events'][Asset({PARTITIONED!r})].add_partitions({PARTITION_KEY!r})",
    ),
    _on("dagrun://down3/pong/success", "ping"),  # started by hand; pong's success would start it again
]
DOWN3_DAGS = [
    _on("dagrun://up3/outcome_ok/success", "on_up3_success"),
    _on("dagrun://af2/outcome_ok/success", "on_af2_success"),
    _dag(ONCALL),
    _dag("on_partition", schedule=f"PartitionedAssetTimetable(assets=Asset({PARTITIONED!r}))"),
    _dag("pong"),
]
AF2_DAGS = [
    *_outcomes(),
    _on("dagrun://up3/outcome_ok/success", "on_up3_success"),
    _on("dagrun://af2/outcome_ok/success", "on_af2_success"),
    _dag(ONCALL),
]

# Outcomes each deployment's listener sends; nothing else (INCLUDE matching no asset but up3's partitioned one).
LISTENER_ENV = {
    "up3": {"DATASET_FORWARDER_DAG_RUNS": "outcome_*,ping", "DATASET_FORWARDER_INCLUDE": PARTITIONED},
    "down3": {"DATASET_FORWARDER_DAG_RUNS": "pong", "DATASET_FORWARDER_INCLUDE": "none://*"},
    "af2": {"DATASET_FORWARDER_DAG_RUNS": "outcome_*", "DATASET_FORWARDER_INCLUDE": "none://*"},
}


@dataclass(frozen=True)
class TargetSpec:
    name: str
    deployment: str
    datasets: tuple[str, ...]
    dag_id: str | None = None  # a trigger_dag target when set


TARGETS = (
    TargetSpec(
        "down3-assets",
        "down3",
        ("dagrun://up3/outcome_ok/success", "dagrun://af2/outcome_ok/success", PARTITIONED),
    ),
    TargetSpec("down3-oncall", "down3", ("dagrun://up3/*/failed", "dagrun://af2/*/failed"), ONCALL),
    # af2 is also its own downstream (2.11 -> 2.11): these targets are not named after it, so not loop-guarded
    TargetSpec("af2-assets", "af2", ("dagrun://up3/outcome_ok/success", "dagrun://af2/outcome_ok/success")),
    TargetSpec("af2-oncall", "af2", ("dagrun://up3/*/failed", "dagrun://af2/*/failed"), ONCALL),
    # ping-pong: up3's ping succeeds -> down3's pong is triggered; pong succeeds -> up3's ping (loop guard stops it)
    TargetSpec("down3", "down3", ("dagrun://up3/ping/success",), "pong"),
    TargetSpec("up3", "up3", ("dagrun://down3/pong/success",)),
)


def put_target(stack: LocalStackProcess, spec: TargetSpec, deployment: AirflowDeployment) -> None:
    auth = ["--auth", "airflow-token"] if deployment.major >= 3 else ["--auth", "basic"]
    args = ["targets", "put", spec.name, "--url", deployment.url, "--allow-http", *auth]
    args += ["--username", deployment.user.username, "--token-env", "PASSWORD"]
    if spec.dag_id:
        args += ["--action", "trigger_dag", "--dag-id", spec.dag_id]
    for uri in spec.datasets:
        args += ["--dataset", uri]
    stack.cli(*args, env={"PASSWORD": deployment.user.password})


@dataclass
class World:
    stack: LocalStackProcess
    deployments: dict[str, AirflowDeployment]

    def __getitem__(self, name: str) -> AirflowDeployment:
        return self.deployments[name]

    def logs(self) -> str:
        return "\n".join(d.logs(40) for d in self.deployments.values()) + "\n" + self.stack.log_tail(60)

    def finish(self, name: str, dag_id: str, state: str) -> dict[str, Any]:
        """Trigger `dag_id` on deployment `name` over REST and wait until its run ends in `state`."""
        deployment = self[name]
        run_id = str(deployment.trigger_dag(dag_id)["dag_run_id"])
        [run] = deployment.wait_for_dag_run(
            dag_id, state=state, where=lambda r: r["dag_run_id"] == run_id, timeout_s=120
        )
        return run

    def wait_run(self, name: str, dag_id: str, where: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deployment = self[name]

        def found() -> dict[str, Any] | None:
            return next((r for r in deployment.dag_runs(dag_id) if where(r)), None)

        run: dict[str, Any] = wait_until(found, f"[{name}] {what}", timeout_s=90)
        if run["state"] != "success":
            [run] = deployment.wait_for_dag_run(
                dag_id, where=lambda r: r["dag_run_id"] == run["dag_run_id"], timeout_s=90
            )
        return run

    def loop_guarded(self, target: str, uri: str) -> list[dict[str, Any]]:
        return [
            r
            for r in self.stack.log_records()
            if str(r.get("message", "")).endswith("(loop guard)") and r.get("target") == target and r.get("uri") == uri
        ]


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest,
    airflow3_venv: Path,
    airflow2_venv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("dag-outcomes")
    stack = LocalStackProcess(root / "local", parameters={"ConfigTtlSeconds": "0"}).up()
    plan = {"up3": (airflow3_venv, UP3_DAGS), "down3": (airflow3_venv, DOWN3_DAGS), "af2": (airflow2_venv, AF2_DAGS)}
    deployments: dict[str, AirflowDeployment] = {}
    for name, (venv, dags) in plan.items():
        deployment = AirflowDeployment(venv, root / name, name=name, dags={"dags.py": ""})
        (deployment.dags_folder / "dags.py").write_text(_source(deployment.major, dags))
        deployment.env.update(stack.upstream_env(name, root / name / "spool"))
        deployment.env.update(LISTENER_ENV[name])
        deployments[name] = deployment
    world = World(stack, deployments)
    with deployments_running(request, stack, deployments, world.logs):
        for spec in TARGETS:
            put_target(stack, spec, deployments[spec.deployment])
        yield world


def _outcome_of(run: dict[str, Any], deployment: AirflowDeployment) -> str | None:
    """The upstream run id an asset-triggered run was started by (the `dagrun://` event's extra)."""
    events = deployment.upstream_events(run["dag_id"], str(run["dag_run_id"]))
    return next((str(e["extra"]["run_id"]) for e in events if "run_id" in (e.get("extra") or {})), None)


def _conf(run: dict[str, Any]) -> dict[str, Any]:
    forwarded: dict[str, Any] = (run.get("conf") or {}).get("dataset_forwarder") or {}
    return forwarded


# --------------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(
    ("up", "downs"),
    [("up3", ("down3", "af2")), ("af2", ("down3", "af2"))],
    ids=["from-3.3-to-3.3-and-2.11", "from-2.11-to-3.3-and-2.11"],
)
def test_success_schedules_and_failure_triggers_downstream(world: World, up: str, downs: tuple[str, ...]) -> None:
    ok = world.finish(up, "outcome_ok", "success")
    failed = world.finish(up, "outcome_fail", "failed")
    failed_uri = f"dagrun://{up}/outcome_fail/failed"

    for down in downs:
        deployment = world[down]
        # (a) the DAG scheduled on the outcome's asset/dataset, started by that outcome's event
        scheduled = world.wait_run(
            down,
            f"on_{up}_success",
            lambda r, d=deployment: _outcome_of(r, d) == ok["dag_run_id"],  # type: ignore[misc]
            f"the run scheduled on {up}'s success",
        )
        [event] = deployment.upstream_events(f"on_{up}_success", str(scheduled["dag_run_id"]))
        assert event["extra"]["state"] == "success", event
        assert event["extra"]["dag_id"] == "outcome_ok", event
        assert event["extra"]["dataset_forwarder"]["trail"] == [up], event

        # (b) the trigger_dag target's run, the outcome in its conf
        oncall = world.wait_run(
            down,
            ONCALL,
            lambda r: _conf(r).get("uri") == failed_uri,
            f"the on-call run for {failed_uri}",
        )
        forwarded = _conf(oncall)
        assert str(oncall["dag_run_id"]).startswith(RUN_ID_PREFIX), oncall
        assert forwarded["extra"]["run_id"] == failed["dag_run_id"], forwarded
        assert forwarded["extra"]["state"] == "failed", forwarded
        assert forwarded["extra"]["dag_id"] == "outcome_fail", forwarded
        assert forwarded["trail"] == [up], forwarded
        assert forwarded["source"]["deployment"] == up, forwarded
        assert not any(_conf(r).get("uri") == f"dagrun://{up}/outcome_ok/success" for r in deployment.dag_runs(ONCALL))


def test_partitioned_asset_event_reaches_a_partitioned_consumer_with_its_key(world: World) -> None:
    produced = world.finish("up3", "produce_partition", "success")
    down3 = world["down3"]

    def forwarded() -> list[dict[str, Any]]:
        return [
            e
            for e in asset_events(down3, PARTITIONED)
            if (e.get("extra") or {}).get("dataset_forwarder", {}).get("source", {}).get("run_id")
            == produced["dag_run_id"]
        ]

    [event] = wait_until(forwarded, "the partitioned event on down3", timeout_s=90)
    assert event["partition_key"] == PARTITION_KEY, event
    assert event["extra"]["dataset_forwarder"]["partition_key"] == PARTITION_KEY, event

    run = world.wait_run(
        "down3", "on_partition", lambda r: r.get("partition_key") == PARTITION_KEY, "the partitioned consumer's run"
    )
    assert run["partition_key"] == PARTITION_KEY, run


def test_two_deployments_triggering_each_other_on_success_stop_after_one_round(world: World) -> None:
    up3, down3 = world["up3"], world["down3"]
    pong_success = "dagrun://down3/pong/success"

    ping = world.finish("up3", "ping", "success")
    pong = world.wait_run(
        "down3", "pong", lambda r: _conf(r).get("extra", {}).get("run_id") == ping["dag_run_id"], "pong"
    )
    assert _conf(pong)["trail"] == ["up3"], pong

    # pong's outcome carries the trail [up3, down3]: target "up3" is on it, so ping is not started again
    [guarded] = wait_until(
        lambda: world.loop_guarded("up3", pong_success), "the loop guard on pong's outcome", timeout_s=90
    )
    assert guarded["kind"] == "dag_run", guarded
    # ... and no other target either: the same plan logs that the outcome goes nowhere (before any delivery)
    wait_until(
        lambda: [
            r
            for r in world.stack.log_records()
            if r.get("event_id") == guarded["event_id"] and r.get("message") == "no target matches the event"
        ],
        "the outcome routed nowhere",
        timeout_s=30,
    )
    assert [r["dag_run_id"] for r in up3.dag_runs("ping")] == [ping["dag_run_id"]]
    assert [r["dag_run_id"] for r in down3.dag_runs("pong")] == [pong["dag_run_id"]]
    assert asset_events(up3, pong_success) == []
    assert up3.queued_events("ping") == []
