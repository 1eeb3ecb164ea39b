"""The whole path with no fakes on it: real Airflow upstream -> listener -> SQS -> poller -> handler -> real Airflow.

One local stack (`dataset-forwarder local up`: moto server with the stack from template.yaml, the product's
event-source poller, the real handler) and four deployments for the module:

    up3   Airflow 3.3  upstream, api-server + scheduler (producers triggered over REST); a target in the loop test
    up2   Airflow 2.11 upstream, not running: producers run with `airflow dags test`
    down3 Airflow 3.3  downstream, api-server + scheduler; its listener forwards only s3://e2e/loop (loop test)
    down2 Airflow 2.11 downstream, webserver + scheduler

Every producer task sets a runtime extra with its run id; a downstream run is matched to its producer by it.
The measured end-to-end latency (producer task success -> downstream DAG run created) goes to
$E2E_LATENCY_OUT, by default a file in the temp directory: `make e2e-latency` records it in
bench/results/e2e_latency.json, so that a test run leaves the checkout as it found it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devkit.airflow_env import AirflowDeployment, User
from devkit.local_forwarding import (
    ForwardedRun,
    LocalStackProcess,
    asset_events,
    consumer_dag,
    forwarded_runs,
    from_producer_run,
    producer_dag,
    task_end,
    task_end_from_db,
    wait_for_forwarded_run,
    wait_until,
)
from tests.e2e.conftest import AIRFLOW2_VERSION, AIRFLOW3_VERSION, deployments_running

RESULTS = Path(
    os.environ.get("E2E_LATENCY_OUT") or Path(tempfile.gettempdir()) / "airflow-dataset-forwarder" / "e2e_latency.json"
)
MATRIX = "s3://e2e/matrix/{up}-{down}"
FANOUT = "s3://e2e/fanout"
FANIN_A, FANIN_B = "s3://e2e/fanin/a", "s3://e2e/fanin/b"
AUTH = "s3://e2e/auth"
LOOP = "s3://e2e/loop"
FORWARDER_USER = User("forwarder", "forwarder-pw")  # down3's user for the auth test: no JWT of it is cached
SETTLE_S = 4.0  # after the expected runs appear, how long an extra (duplicate) run is given to show up


def _producers(up: str, major: int) -> dict[str, str]:
    dags = {
        f"produce_for_{down}.py": producer_dag(major, f"produce_for_{down}", [MATRIX.format(up=up, down=down)])
        for down in ("down3", "down2")
    }
    if up == "up3":
        dags |= {
            "produce_fanout.py": producer_dag(major, "produce_fanout", [FANOUT]),
            "produce_fanin_a.py": producer_dag(major, "produce_fanin_a", [FANIN_A]),
            "produce_auth.py": producer_dag(major, "produce_auth", [AUTH]),
            "produce_loop.py": producer_dag(major, "produce_loop", [LOOP]),
        }
    else:
        dags["produce_fanin_b.py"] = producer_dag(major, "produce_fanin_b", [FANIN_B])
    return dags


def _consumers(down: str, major: int) -> dict[str, str]:
    dags = {
        f"consume_from_{up}.py": consumer_dag(major, f"consume_from_{up}", [MATRIX.format(up=up, down=down)])
        for up in ("up3", "up2")
    }
    dags["consume_fanout.py"] = consumer_dag(major, "consume_fanout", [FANOUT])
    if down == "down3":
        dags |= {
            "consume_fanin.py": consumer_dag(major, "consume_fanin", [FANIN_A, FANIN_B]),
            "consume_auth.py": consumer_dag(major, "consume_auth", [AUTH]),
            "produce_loop.py": producer_dag(major, "produce_loop", [LOOP]),
        }
    return dags


# --------------------------------------------------------------------------------------------------- fixtures


@dataclass
class World:
    stack: LocalStackProcess
    deployments: dict[str, AirflowDeployment]
    latencies: list[dict[str, Any]] = field(default_factory=list)

    def __getitem__(self, name: str) -> AirflowDeployment:
        return self.deployments[name]

    def logs(self) -> str:
        return "\n".join(d.logs(40) for d in self.deployments.values()) + "\n" + self.stack.log_tail(40)

    def produce(self, up: str, dag_id: str) -> tuple[str, float]:
        """Run producer `dag_id` on `up`: (run id, when its task succeeded)."""
        deployment = self[up]
        if up == "up2":  # not running: `airflow dags test` in its own process, listener included
            done = deployment.dags_test(dag_id, timeout_s=180)
            assert done.returncode == 0, f"{done.stdout[-3000:]}{done.stderr[-3000:]}"
            return task_end_from_db(deployment, dag_id)
        run_id = str(deployment.trigger_dag(dag_id)["dag_run_id"])
        deployment.wait_for_dag_run(dag_id, where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
        return run_id, task_end(deployment, dag_id, run_id)

    def record(self, case: str, up: str, down: str, task_done: float, run: ForwardedRun) -> None:
        lineage = run.lineage()
        trace = self.stack.event_trace(str(lineage.get("id")))
        self.latencies.append(
            {
                "case": case,
                "upstream": f"{up} (Airflow {self[up].version})",
                "downstream": f"{down} (Airflow {self[down].version})",
                "producer": "airflow dags test" if up == "up2" else "scheduler + api-server",
                "task_success_to_sqs_s": _delta(task_done, trace.sent_at),
                "task_success_to_delivered_s": _delta(task_done, trace.delivered_at(down)),
                "task_success_to_dag_run_created_s": round(run.created_at - task_done, 3),
            }
        )


def _delta(start: float, end: float | None) -> float | None:
    return None if end is None else round(end - start, 3)


@pytest.fixture(scope="module")
def world(
    request: pytest.FixtureRequest,
    airflow3_venv: Path,
    airflow2_venv: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    root = tmp_path_factory.mktemp("end-to-end")
    # targets are registered as the tests go: read them on every record (CONFIG_TTL_S 0), a template parameter
    stack = LocalStackProcess(root / "local", parameters={"ConfigTtlSeconds": "0"}).up()
    venvs = {"up3": airflow3_venv, "up2": airflow2_venv, "down3": airflow3_venv, "down2": airflow2_venv}
    deployments: dict[str, AirflowDeployment] = {}
    for name, venv in venvs.items():
        major = 3 if venv == airflow3_venv else 2
        dags = _producers(name, major) if name.startswith("up") else _consumers(name, major)
        users = (User("admin", "admin"), FORWARDER_USER) if name == "down3" else (User("admin", "admin"),)
        deployment = AirflowDeployment(venv, root / name, name=name, dags=dags, users=users)
        deployment.env.update(stack.upstream_env(name, root / name / "spool"))
        if name == "down3":
            deployment.env["DATASET_FORWARDER_INCLUDE"] = LOOP  # forwards on only what the loop test needs
        deployments[name] = deployment
    world = World(stack, deployments)
    try:
        with deployments_running(request, stack, deployments, world.logs, started=lambda name: name != "up2"):
            down3_datasets = [MATRIX.format(up="*", down="down3"), FANOUT, FANIN_A, FANIN_B, LOOP]
            stack.put_target("down3", deployments["down3"], down3_datasets)
            stack.put_target("down2", deployments["down2"], [MATRIX.format(up="*", down="down2"), FANOUT])
            yield world
    finally:
        _write_results(world)


def _write_results(world: World) -> None:
    measured = {row["case"] for row in world.latencies}
    if not {f"{up}->{down}" for up in ("up3", "up2") for down in ("down3", "down2")} <= measured:
        print(f"[e2e] latency not recorded: only {sorted(measured)} ran", file=sys.stderr)
        return
    created = [row["task_success_to_dag_run_created_s"] for row in world.latencies]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "what": "end-to-end latency: producer task success upstream -> DAG run created downstream",
        "path": "listener -> SQS (moto server) -> local event source poller -> forwarder handler -> Airflow REST API",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system()},
        "airflow": {"3": AIRFLOW3_VERSION, "2": AIRFLOW2_VERSION},
        "summary_s": {
            "n": len(created),
            "min": round(min(created), 3),
            "median": round(statistics.median(created), 3),
            "max": round(max(created), 3),
        },
        "runs": world.latencies,
    }
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[e2e] latency: {summary['summary_s']} -> {RESULTS}", file=sys.stderr)


def _settled_runs(deployment: AirflowDeployment, dag_id: str, match: Any) -> list[ForwardedRun]:
    time.sleep(SETTLE_S)
    return forwarded_runs(deployment, dag_id, match)


def _check_forwarded(run: ForwardedRun, uri: str, up: str, producer_run: str) -> None:
    extra = run.extra(uri)
    assert extra["rows"] == 42, extra
    assert extra["producer_run_id"] == producer_run, extra
    lineage = run.lineage(uri)
    assert lineage["trail"] == [up], lineage
    assert lineage["source"]["deployment"] == up, lineage
    assert lineage["source"]["run_id"] == producer_run, lineage
    assert lineage["source"]["task_id"] == "produce", lineage
    assert lineage["id"], lineage


# --------------------------------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("down", ["down3", "down2"])
@pytest.mark.parametrize("up", ["up3", "up2"])
def test_producer_event_triggers_the_downstream_dag_with_extra_and_lineage(world: World, up: str, down: str) -> None:
    run_id, task_done = world.produce(up, f"produce_for_{down}")

    consumer = f"consume_from_{up}"
    uri = MATRIX.format(up=up, down=down)
    run = wait_for_forwarded_run(
        world[down], consumer, from_producer_run(run_id, uri), timeout_s=60, diagnose=world.logs
    )

    _check_forwarded(run, uri, up, run_id)
    world.record(f"{up}->{down}", up, down, task_done, run)
    assert len(_settled_runs(world[down], consumer, from_producer_run(run_id))) == 1


def test_fan_out_triggers_each_downstream_exactly_once(world: World) -> None:
    run_id, task_done = world.produce("up3", "produce_fanout")

    for down in ("down3", "down2"):
        run = wait_for_forwarded_run(
            world[down], "consume_fanout", from_producer_run(run_id), timeout_s=60, diagnose=world.logs
        )
        _check_forwarded(run, FANOUT, "up3", run_id)
        world.record(f"fan-out up3->{down}", "up3", down, task_done, run)
    for down in ("down3", "down2"):
        assert len(_settled_runs(world[down], "consume_fanout", None)) == 1
        assert len(asset_events(world[down], FANOUT)) == 1


def test_fan_in_two_upstreams_feed_one_dag_that_needs_both(world: World) -> None:
    run_a, _ = world.produce("up3", "produce_fanin_a")
    wait_until(lambda: asset_events(world["down3"], FANIN_A), "the first event downstream", timeout_s=60)
    assert forwarded_runs(world["down3"], "consume_fanin") == []  # one of two datasets is not enough
    run_b, _ = world.produce("up2", "produce_fanin_b")

    run = wait_for_forwarded_run(
        world["down3"], "consume_fanin", from_producer_run(run_b, FANIN_B), timeout_s=60, diagnose=world.logs
    )

    _check_forwarded(run, FANIN_A, "up3", run_a)
    _check_forwarded(run, FANIN_B, "up2", run_b)
    assert len(_settled_runs(world["down3"], "consume_fanin", None)) == 1


def test_wrong_token_dead_letters_auth_then_fix_and_redrive_runs_the_consumer_once(world: World) -> None:
    down3, stack = world["down3"], world.stack
    target = "down3-forwarder"
    common = ["targets", "put", target, "--url", down3.url, "--dataset", AUTH, "--allow-http"]
    common += ["--auth", "airflow-token", "--username", FORWARDER_USER.username, "--token-env", "PASSWORD"]
    stack.cli(*common, env={"PASSWORD": "not-the-password"})

    run_id, _ = world.produce("up3", "produce_auth")

    letters = wait_until(lambda: stack.dead_letters(target=target), f"a dead letter for {target}", timeout_s=60)
    [letter] = letters
    assert letter["error"] == "auth", letter
    assert "not-the-password" not in json.dumps(letter)
    assert forwarded_runs(down3, "consume_auth") == []

    stack.cli(*common, env={"PASSWORD": FORWARDER_USER.password})
    redriven = stack.cli("dlq", "redrive", "--target", target)
    assert "1 dead letter(s) moved to the events queue" in redriven.stdout, redriven.stdout

    run = wait_for_forwarded_run(down3, "consume_auth", from_producer_run(run_id), timeout_s=60, diagnose=world.logs)
    _check_forwarded(run, AUTH, "up3", run_id)
    assert len(_settled_runs(down3, "consume_auth", None)) == 1
    assert stack.dead_letters(target=target) == []


def test_two_deployments_forwarding_to_each_other_do_not_loop(world: World) -> None:
    up3, down3, stack = world["up3"], world["down3"], world.stack
    stack.put_target("up3", up3, [LOOP])  # up3 now also receives LOOP; down3's target already has it

    world.produce("up3", "produce_loop")
    wait_until(lambda: asset_events(down3, LOOP), "the event forwarded to down3", timeout_s=60)
    world.produce("down3", "produce_loop")
    wait_until(lambda: len(asset_events(up3, LOOP)) >= 2, "the event forwarded to up3", timeout_s=60)

    # Each side re-sends what it received (its listener forwards LOOP): 6 loop-guard decisions in all, one for each
    # origin's own event (its own target is in the trail) and two for each echo (both targets are).
    def loop_guarded() -> list[dict[str, Any]]:
        return [r for r in stack.log_records() if str(r.get("message", "")).endswith("(loop guard)")]

    wait_until(lambda: len(loop_guarded()) >= 6, "the loop guard to stop both echoes", timeout_s=60)
    time.sleep(SETTLE_S)

    up_events, down_events = asset_events(up3, LOOP), asset_events(down3, LOOP)
    assert len(up_events) == 2, up_events  # its own, and down3's
    assert len(down_events) == 2, down_events  # up3's, and its own
    trails = sorted(
        tuple(e["extra"]["dataset_forwarder"]["trail"])
        for e in up_events + down_events
        if "dataset_forwarder" in (e.get("extra") or {})
    )
    assert trails == [("down3",), ("up3",)]
    guarded = loop_guarded()
    assert len(guarded) == 6, guarded
    assert {(r["target"], r["uri"]) for r in guarded} == {("up3", LOOP), ("down3", LOOP)}
