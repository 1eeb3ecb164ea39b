"""DAG-run outcomes (docs/envelope.md) from real Airflow 3.3 and 2.11: `dag_run` envelopes on the queue (moto server).

One migrated deployment per Airflow version serves the module. `airflow dags test` covers the in-process path; a
scheduler (+ api-server / webserver) covers production: runs finished by the scheduler, the loop guard over a
`trigger_dag` conf and over the trails of the asset events that started a run, a cleared run finishing again (a new
outcome, a new id), and a state set through the REST API (Airflow 3 reports it from the api-server; Airflow 2 calls
no hook there, and the scheduler's finished-run sweep finds it: on 2.11 and 2.9, with a run marked while the
scheduler was down, and the sweep's envelope of a scheduler-decided run compared with the hook's). Negative checks
wait for a later outcome reported by the same process, so nothing sleeps.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from jsonschema import Draft202012Validator

from devkit.airflow_env import AirflowDeployment, ensure_airflow_venv, poll
from devkit.listener_support import Message, MotoSqs, dags_test, env_changed, envelope_validator, spool_leftovers
from devkit.paths import listener_extras
from tests.e2e.test_listener import migrated_deployment_fixture, target

pytestmark = pytest.mark.e2e

AF3_NAME = "team-a"
AF2_NAME = "team-b"
AF29_NAME = "team-c"
AIRFLOW29_VERSION = "2.9.3"
SWEEP_STATE = "dag_run_sweep.state"  # the sweep's watermark, in the spool directory
SWEEP_STARTED = "this scheduler looks every 1 s for finished runs"
SWEEP_FAILED = "the DAG-run sweep failed"
GLOBS = "dagrun_*"
SELECTED = ("dagrun_ok", "dagrun_fail", "dagrun_consumer")  # the DAGs of DAGS_BODY that GLOBS selects
# No asset event of these DAGs matches: only dag_run envelopes reach the queue (INCLUDE does not filter DAG runs).
NO_ASSETS = "none://*"
TRIGGER = "s3://bucket/in"

DAGS_BODY = f"""
from datetime import datetime, timezone

START = datetime(2024, 1, 1, tzinfo=timezone.utc)

with DAG("dagrun_ok", schedule=None, start_date=START, catchup=False):
    @task
    def fine():
        return 1

    fine()

with DAG("dagrun_fail", schedule=None, start_date=START, catchup=False):
    @task(retries=0)
    def boom():
        raise RuntimeError("this task fails on purpose")

    boom()

with DAG("dagrun_consumer", schedule=[Asset("{TRIGGER}")], start_date=START, catchup=False):
    @task
    def eat():
        return 1

    eat()

with DAG("not_forwarded", schedule=None, start_date=START, catchup=False):
    @task
    def also_fine():
        return 1

    also_fine()
"""
AIRFLOW3_DAGS = "from airflow.sdk import DAG, Asset, task\n" + DAGS_BODY
AIRFLOW2_DAGS = (
    "from airflow import DAG\nfrom airflow.datasets import Dataset as Asset\nfrom airflow.decorators import task\n"
    + DAGS_BODY
)
EXTRA_KEYS = {"dag_id", "run_id", "state", "run_type", "logical_date", "start_date", "end_date"}


@pytest.fixture(scope="module")
def airflow29_venv() -> Path:
    return ensure_airflow_venv(AIRFLOW29_VERSION, listener_extras())


af3 = migrated_deployment_fixture("airflow3_venv", "af3-runs", AF3_NAME, AIRFLOW3_DAGS)
af2 = migrated_deployment_fixture("airflow2_venv", "af2-runs", AF2_NAME, AIRFLOW2_DAGS)
af29 = migrated_deployment_fixture("airflow29_venv", "af29-runs", AF29_NAME, AIRFLOW2_DAGS)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return envelope_validator()


def runs_target(queue: str, spool: Path) -> dict[str, str | None]:
    """Airflow 2's sweep looks every second (default 10 s); Airflow 3 has none."""
    return target(
        queue, spool, DATASET_FORWARDER_DAG_RUNS=GLOBS, DATASET_FORWARDER_INCLUDE=NO_ASSETS,
        DATASET_FORWARDER_DAG_RUN_SWEEP_S="1",
    )  # fmt: skip


def check_run_envelope(
    message: Message,
    validator: Draft202012Validator,
    deployment: AirflowDeployment,
    *,
    dag_id: str,
    run_id: str,
    state: str,
    run_type: str,
    trail: list[str],
) -> None:
    body = message.body
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, (errors, body)
    uri = f"dagrun://{deployment.name}/{dag_id}/{state}"
    assert body["kind"] == "dag_run", body
    assert body["uri"] == body["name"] == uri, body
    assert set(body["extra"]) == EXTRA_KEYS, body
    assert {k: body["extra"][k] for k in ("dag_id", "run_id", "state", "run_type")} == {
        "dag_id": dag_id, "run_id": run_id, "state": state, "run_type": run_type,
    }, body  # fmt: skip
    assert body["extra"]["start_date"], body
    assert body["extra"]["end_date"], body
    assert body["source"] == {
        "deployment": deployment.name, "airflow_version": deployment.version,
        "dag_id": dag_id, "run_id": run_id, "task_id": None, "map_index": None,
    }, body  # fmt: skip
    assert body["trail"] == trail, body
    assert body["only_targets"] is None
    assert message.attributes == {"uri": uri, "event_id": body["id"], "source_deployment": deployment.name}


def logged_run_id(output: str, dag_id: str) -> str:
    found = re.findall(rf"DagRun Finished: dag_id={re.escape(dag_id)}, .*?run_id=([^,\s]+),", output)
    assert found, output[-3000:]
    return found[-1]


# --------------------------------------------------------------------------------------------------- airflow dags test


@pytest.mark.parametrize("which", ["af3", "af2"])
def test_dags_test_sends_one_envelope_per_finished_run(
    which: str, request: pytest.FixtureRequest, moto: MotoSqs, validator: Draft202012Validator, tmp_path: Path
) -> None:
    deployment: AirflowDeployment = request.getfixturevalue(which)
    queue, spool = moto.create_queue(f"{which}-dags-test-runs"), tmp_path / "spool"

    ok = dags_test(deployment, "dagrun_ok", **runs_target(queue, spool))
    assert ok.run_state == "success", ok.tail()
    [message] = moto.drain(queue)  # `dags test` has exited and drained its sender
    check_run_envelope(
        message, validator, deployment, dag_id="dagrun_ok", run_id=logged_run_id(ok.output, "dagrun_ok"),
        state="success", run_type="manual", trail=[deployment.name],
    )  # fmt: skip

    failed = dags_test(deployment, "dagrun_fail", **runs_target(queue, spool))
    assert failed.run_state == "failed", failed.tail()
    [message] = moto.drain(queue)
    check_run_envelope(
        message, validator, deployment, dag_id="dagrun_fail", run_id=logged_run_id(failed.output, "dagrun_fail"),
        state="failed", run_type="manual", trail=[deployment.name],
    )  # fmt: skip
    assert spool_leftovers(spool) == []


# --------------------------------------------------------------------------------------------------- scheduler


class Live:
    """A running deployment whose listener sends to its own queue; collects the dag_run envelopes it receives."""

    def __init__(self, deployment: AirflowDeployment, moto: MotoSqs, queue: str) -> None:
        self.deployment = deployment
        self.moto = moto
        self.queue = queue
        self.seen: list[Message] = []

    def run(self, dag_id: str, state: str = "success", conf: dict[str, Any] | None = None) -> str:
        run_id = str(self.deployment.trigger_dag(dag_id, conf=conf)["dag_run_id"])
        self.deployment.wait_for_dag_run(dag_id, state=state, where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
        return run_id

    def run_from_asset_event(self, trail: list[str]) -> str:
        """Post an event for the consumer's asset (as a forwarder would) and wait for the run it starts."""
        deployment = self.deployment
        deployment.wait_queue_drained("dagrun_consumer")
        before = {r["dag_run_id"] for r in deployment.dag_runs("dagrun_consumer")}
        deployment.create_asset_event(TRIGGER, extra={"dataset_forwarder": {"id": "up-1", "trail": trail}})
        [run] = deployment.wait_for_dag_run(
            "dagrun_consumer", where=lambda r: r["dag_run_id"] not in before, timeout_s=120
        )
        return str(run["dag_run_id"])

    def wait_for(self, uri: str, run_id: str, count: int = 1) -> list[Message]:
        def matching(got: list[Message]) -> list[Message]:
            return [m for m in got if m.uri == uri and m.body["extra"].get("run_id") == run_id]

        self.moto.wait_for(
            self.queue, lambda got: len(matching(got)) >= count, what=f"{count} x {uri} of {run_id}",
            seen=self.seen, diagnose=self.deployment.logs, timeout_s=60,
        )  # fmt: skip
        return matching(self.seen)

    def uri(self, dag_id: str, state: str) -> str:
        return f"dagrun://{self.deployment.name}/{dag_id}/{state}"

    def patch_state(self, dag_id: str, run_id: str, state: str) -> None:
        path = f"{self.deployment.api_prefix}/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        self.deployment.api_json("PATCH", path, json={"state": state})

    def clear(self, dag_id: str, run_id: str) -> None:
        path = f"{self.deployment.api_prefix}/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/clear"
        self.deployment.api_json("POST", path, json={"dry_run": False})


@pytest.fixture
def live(request: pytest.FixtureRequest, moto: MotoSqs, tmp_path: Path) -> Iterator[Live]:
    deployment: AirflowDeployment = request.getfixturevalue(request.param)
    queue = moto.create_queue(f"{request.param}-live-runs")
    with env_changed(deployment, **runs_target(queue, tmp_path / "spool")):
        deployment.start()
    try:
        deployment.wait_healthy()
        yield Live(deployment, moto, queue)
    finally:
        deployment.stop()


@pytest.mark.parametrize("live", ["af3", "af2"], indirect=True)
def test_scheduler_reports_outcomes_with_trails_and_stops_loops(live: Live, validator: Draft202012Validator) -> None:
    deployment, name = live.deployment, live.deployment.name
    asset_triggered = "asset_triggered" if deployment.major >= 3 else "dataset_triggered"

    # Not reported: a DAG outside the globs; a run triggered by a forwarded event that had passed through here;
    # a run started by an asset event whose trail holds this deployment (read from the run's consumed events).
    live.run("not_forwarded")
    live.run("dagrun_ok", conf={"dataset_forwarder": {"id": "e0", "trail": ["team-z", name]}})
    live.run_from_asset_event(trail=["team-z", name])
    # Reported, with the trail of what started them extended by this deployment.
    failed = live.run("dagrun_fail", state="failed", conf={"dataset_forwarder": {"id": "e1", "trail": ["team-z"]}})
    consumer = live.run_from_asset_event(trail=["team-y"])
    plain = live.run("dagrun_ok")
    live.wait_for(live.uri("dagrun_ok", "success"), plain)  # the scheduler's sender sends in order: a barrier

    assert sorted((m.uri, m.body["extra"]["run_id"]) for m in live.seen) == sorted(
        [
            (live.uri("dagrun_fail", "failed"), failed),
            (live.uri("dagrun_consumer", "success"), consumer),
            (live.uri("dagrun_ok", "success"), plain),
        ]
    ), [m.body for m in live.seen]
    by_dag = {m.body["extra"]["dag_id"]: m for m in live.seen}
    check_run_envelope(
        by_dag["dagrun_fail"], validator, deployment, dag_id="dagrun_fail", run_id=failed, state="failed",
        run_type="manual", trail=["team-z", name],
    )  # fmt: skip
    check_run_envelope(
        by_dag["dagrun_consumer"], validator, deployment, dag_id="dagrun_consumer", run_id=consumer,
        state="success", run_type=asset_triggered, trail=["team-y", name],
    )  # fmt: skip
    check_run_envelope(
        by_dag["dagrun_ok"], validator, deployment, dag_id="dagrun_ok", run_id=plain, state="success",
        run_type="manual", trail=[name],
    )  # fmt: skip

    # Cleared and run again: a new outcome of the same run, so a new id (the forwarder's ledger would drop a repeat).
    first = by_dag["dagrun_ok"]
    live.clear("dagrun_ok", plain)
    both = live.wait_for(live.uri("dagrun_ok", "success"), plain, count=2)
    assert both[1].id != first.id, [m.body for m in both]
    assert both[1].body["extra"]["start_date"] != first.body["extra"]["start_date"], [m.body for m in both]
    check_run_envelope(
        both[1], validator, deployment, dag_id="dagrun_ok", run_id=plain, state="success", run_type="manual",
        trail=[name],
    )  # fmt: skip

    # A state set through the REST API: Airflow 3 calls the hook in the api-server; Airflow 2 calls none, and the
    # scheduler's sweep finds the change (DATASET_FORWARDER_DAG_RUN_SWEEP_S, 1 s here).
    live.patch_state("dagrun_ok", plain, "failed")
    [patched] = live.wait_for(live.uri("dagrun_ok", "failed"), plain)
    check_run_envelope(
        patched, validator, deployment, dag_id="dagrun_ok", run_id=plain, state="failed", run_type="manual",
        trail=[name],
    )  # fmt: skip
    # Each outcome once: on Airflow 2 the sweep read every row up to the patched one (it reads in the order of their
    # updates, and the sender keeps that order), the scheduler's outcomes and the loop-guarded runs included.
    assert Counter((m.uri, m.body["extra"]["run_id"]) for m in live.seen) == {
        (live.uri("dagrun_fail", "failed"), failed): 1,
        (live.uri("dagrun_consumer", "success"), consumer): 1,
        (live.uri("dagrun_ok", "success"), plain): 2,  # the run, and its cleared rerun
        (live.uri("dagrun_ok", "failed"), plain): 1,
    }, [m.body for m in live.seen]


# --------------------------------------------------------------------------------------------------- Airflow 2's sweep


def set_paused(deployment: AirflowDeployment, dag_id: str, paused: bool) -> None:
    deployment.api_json(
        "PATCH",
        f"{deployment.api_prefix}/dags/{dag_id}",
        params={"update_mask": "is_paused"},
        json={"is_paused": paused},
    )


def queued_run(live: Live, dag_id: str) -> str:
    """A run of the (paused) DAG that no scheduler starts: it stays queued."""
    return str(live.deployment.trigger_dag(dag_id)["dag_run_id"])


def rewind_watermark(spool: Path, moment: datetime) -> None:
    """Set the sweep's watermark as a scheduler that last looked at `moment` would have left it (0600)."""
    path = spool / SWEEP_STATE
    path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"version": 1, "updated_at": moment.isoformat()}, file)


@pytest.mark.parametrize("which", ["af2", "af29"])
def test_airflow2_sweep_forwards_states_set_through_rest(
    which: str, request: pytest.FixtureRequest, moto: MotoSqs, validator: Draft202012Validator, tmp_path: Path
) -> None:
    deployment: AirflowDeployment = request.getfixturevalue(which)
    queue, spool = moto.create_queue(f"{which}-sweep"), tmp_path / "spool"
    live = Live(deployment, moto, queue)
    ok_success, ok_failed = live.uri("dagrun_ok", "success"), live.uri("dagrun_ok", "failed")
    fail_success, fail_failed = live.uri("dagrun_fail", "success"), live.uri("dagrun_fail", "failed")

    # History: a finished run from before the first start, which the sweep must not replay (it starts from now).
    old = dags_test(deployment, "dagrun_ok", **runs_target(moto.create_queue(f"{which}-history"), tmp_path / "h"))
    assert old.run_state == "success", old.tail()
    history = logged_run_id(old.output, "dagrun_ok")
    try:
        with env_changed(deployment, **runs_target(queue, spool)):
            deployment.start()
        deployment.wait_healthy()
        # Runs earlier tests of this module finished in the same deployment: the rewound look below may send them
        # again too (each with its one id), as it may `history`.
        earlier = {str(r["dag_run_id"]) for dag in SELECTED for r in deployment.dag_runs(dag)}
        set_paused(deployment, "dagrun_fail", True)

        # Runs the scheduler finishes: reported by its hook; the sweep leaves them alone.
        stable = live.run("dagrun_ok")
        [hooked] = live.wait_for(ok_success, stable)
        decided = live.run("dagrun_ok")
        [decided_hooked] = live.wait_for(ok_success, decided)
        # Marked success before it started (its DAG is paused, so it stays queued): Airflow stamps an end date.
        marked = queued_run(live, "dagrun_fail")
        live.patch_state("dagrun_fail", marked, "success")
        [by_sweep] = live.wait_for(fail_success, marked)
        errors = [e.message for e in validator.iter_errors(by_sweep.body)]
        assert not errors, (errors, by_sweep.body)
        assert by_sweep.body["extra"]["state"] == "success", by_sweep.body
        assert by_sweep.body["extra"]["start_date"] is None, by_sweep.body  # it never ran
        assert by_sweep.body["extra"]["end_date"], by_sweep.body
        assert by_sweep.body["source"]["deployment"] == deployment.name
        assert by_sweep.attributes["event_id"] == by_sweep.id
        # A finished run marked the other way keeps its end date on Airflow 2 (only unfinished -> finished stamps
        # one); the sweep reads the rows' updates, so it sees this one too.
        live.patch_state("dagrun_ok", decided, "failed")
        [flipped] = live.wait_for(ok_failed, decided)
        check_run_envelope(
            flipped, validator, deployment, dag_id="dagrun_ok", run_id=decided, state="failed", run_type="manual",
            trail=[deployment.name],
        )  # fmt: skip
        assert flipped.body["extra"]["end_date"] == decided_hooked.body["extra"]["end_date"], flipped.body
        # Sent once each: the sweep read `stable` and `decided` (as success) before the later updates it forwarded.
        assert Counter((m.uri, m.body["extra"]["run_id"]) for m in live.seen) == {
            (ok_success, stable): 1, (ok_success, decided): 1, (fail_success, marked): 1, (ok_failed, decided): 1,
        }, [m.body for m in live.seen]  # fmt: skip
        state_file = spool / SWEEP_STATE
        assert state_file.stat().st_mode & 0o777 == 0o600
        deployment.stop()

        # While no scheduler runs, a run is marked failed through the REST API.
        with env_changed(deployment, **runs_target(queue, spool)):
            deployment.start(scheduler=False)
        deployment.wait_healthy()
        down = queued_run(live, "dagrun_fail")
        live.patch_state("dagrun_fail", down, "failed")
        deployment.stop()
        # The restarted scheduler forwards it. With its watermark set back to before `stable` finished (and no
        # memory of what its hook sent), its sweep also sends `stable` again: the hook's envelope, the same id.
        rewind_watermark(spool, datetime.fromisoformat(hooked.body["extra"]["end_date"]) - timedelta(seconds=1))
        with env_changed(deployment, **runs_target(queue, spool)):
            deployment.start()
        deployment.wait_healthy()
        [after_restart] = live.wait_for(fail_failed, down)
        assert after_restart.body["extra"]["state"] == "failed", after_restart.body
        assert after_restart.body["extra"]["end_date"], after_restart.body
        again = live.wait_for(ok_success, stable, count=2)
        assert again[1].body == hooked.body, [m.body for m in again]
        assert again[1].attributes == hooked.attributes
        poll(
            lambda: json.loads(state_file.read_text())["updated_at"] > hooked.body["extra"]["end_date"],
            timeout_s=30, what="the watermark moved on", diagnose=deployment.logs,
        )  # fmt: skip
    finally:
        deployment.stop()
        set_paused_safely(deployment, "dagrun_fail")

    # One id per run outcome, however often it was sent (the run from before the first start may come again only
    # from the rewound look, which goes back a minute before the watermark, and then with its one id).
    ids: dict[tuple[str, str], set[str]] = {}
    for message in live.seen:
        ids.setdefault((message.uri, message.body["extra"]["run_id"]), set()).add(message.id)
    assert all(len(found) == 1 for found in ids.values()), ids
    ours = {stable, decided, marked, down}
    assert ours <= {run for _, run in ids} <= {*ours, history, *earlier}
    # The sweep ran in the scheduler only, once per start, and never failed.
    logs = {path.name: path.read_text(errors="replace") for path in deployment.home.glob("*.log")}
    assert logs["scheduler.log"].count(SWEEP_STARTED) >= 2, logs["scheduler.log"][-3000:]
    assert SWEEP_STARTED not in logs.get("webserver.log", ""), logs.get("webserver.log", "")[-3000:]
    assert not any(SWEEP_FAILED in text for text in logs.values()), {n: t[-3000:] for n, t in logs.items()}


def set_paused_safely(deployment: AirflowDeployment, dag_id: str) -> None:
    """Leave the module's deployment as it was (its DAGs unpaused) for the tests that follow, through the CLI."""
    deployment.airflow("dags", "unpause", dag_id, check=False)
