"""The listener plugin inside real Airflow 3.3 and 2.11: what reaches the queue, and what never blocks Airflow.

One migrated deployment per Airflow version serves the whole module (each test points it at its own queue and spool
through environment variables); the Airflow 3 api-server + scheduler run only for the class that needs them. SQS is
moto server on 127.0.0.1. Negative checks ("not forwarded") wait for a later event sent through the same sender, so
nothing here sleeps to synchronise.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from devkit.airflow_env import AirflowDeployment, poll
from devkit.listener_support import (
    DagsTest,
    Message,
    MotoSqs,
    af2_success_hook_s,
    apply_env,
    closed_port,
    dags_test,
    env_changed,
    envelope_validator,
    hanging_endpoint,
    listener_env,
    plugins_json,
    spool_leftovers,
    spooled,
)

pytestmark = pytest.mark.e2e

BEARS = "s3://bucket/bears"
FISH = "s3://other/fish"  # outside DATASET_FORWARDER_INCLUDE: never sent
INCLUDE = "s3://bucket/*"
BEAR_EXTRA = {"rows": 42, "species": "grizzly"}
AF3_NAME = "team-a"
AF2_NAME = "team-b"
NOT_CONFIGURED = "DATASET_FORWARDER_QUEUE_URL is not set"
# The Airflow 3 background sender drains for at most this long at interpreter exit (BackgroundSender.close_timeout_s).
AF3_EXIT_DRAIN_S = 2.0
# Wall-clock noise allowed between two `airflow dags test` runs on a loaded 2-core machine.
WALL_SLACK_S = 6.0

AIRFLOW3_PRODUCER = f"""
from datetime import datetime, timezone

from airflow.sdk import DAG, Asset, Metadata, task

BEARS = Asset("{BEARS}")
FISH = Asset("{FISH}")

with DAG("producer", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task(outlets=[BEARS, FISH])
    def get_bear(*, outlet_events):
        outlet_events[FISH].extra = {{"rows": 7}}
        yield Metadata(BEARS, {BEAR_EXTRA!r})

    get_bear()
"""

AIRFLOW2_PRODUCER = f"""
from datetime import datetime, timezone

from airflow import DAG
from airflow.datasets import Dataset
from airflow.decorators import task

BEARS = Dataset("{BEARS}")
FISH = Dataset("{FISH}")

with DAG("producer", schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task(outlets=[BEARS, FISH])
    def get_bear(*, outlet_events=None):
        outlet_events[BEARS].extra = {BEAR_EXTRA!r}
        outlet_events[FISH].extra = {{"rows": 7}}

    get_bear()
"""


# --------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    return envelope_validator()


def migrated_deployment(
    request: pytest.FixtureRequest, venv: Path, home: Path, name: str, producer: str, moto: MotoSqs
) -> Iterator[AirflowDeployment]:
    """A migrated deployment whose listener is configured for moto; its logs are printed if a test failed."""
    env = listener_env(
        moto, moto.create_queue(f"{name}-default"), name, home / "spool-default", DATASET_FORWARDER_INCLUDE=INCLUDE
    )
    deployment = AirflowDeployment(venv, home / name, name=name, dags={"producer.py": producer})
    deployment.env = apply_env(deployment.env, env)
    failed_before = request.session.testsfailed
    try:
        deployment.migrate()
        yield deployment
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n{deployment.logs(80)}", file=sys.stderr)
        deployment.stop()


def migrated_deployment_fixture(venv_fixture: str, home: str, name: str, producer: str) -> Any:
    """A module-scoped fixture: ``migrated_deployment`` in the venv of fixture ``venv_fixture``, in a fresh ``home``."""

    @pytest.fixture(scope="module")
    def deployment(
        request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, moto: MotoSqs
    ) -> Iterator[AirflowDeployment]:
        venv = request.getfixturevalue(venv_fixture)
        yield from migrated_deployment(request, venv, tmp_path_factory.mktemp(home), name, producer, moto)

    return deployment


af3 = migrated_deployment_fixture("airflow3_venv", "af3", AF3_NAME, AIRFLOW3_PRODUCER)
af2 = migrated_deployment_fixture("airflow2_venv", "af2", AF2_NAME, AIRFLOW2_PRODUCER)


def target(queue_url: str, spool: Path, **more: str | None) -> dict[str, str | None]:
    """Environment changes that send one test's events to its own queue and spool."""
    return {"DATASET_FORWARDER_QUEUE_URL": queue_url, "DATASET_FORWARDER_SPOOL_DIR": str(spool), **more}


# --------------------------------------------------------------------------------------------------- checks


def check_envelope(
    message: Message,
    validator: Draft202012Validator,
    deployment: AirflowDeployment,
    *,
    uri: str,
    extra: dict[str, Any],
    dag_id: str | None,
    task_id: str | None,
    run_id: str | None,
    map_index: int | None,
    trail: list[str],
) -> None:
    body = message.body
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, (errors, body)
    assert body["version"] == 1
    assert body["uri"] == uri
    assert body["extra"] == extra
    assert body["source"] == {
        "deployment": deployment.name,
        "airflow_version": deployment.version,
        "dag_id": dag_id,
        "task_id": task_id,
        "run_id": run_id,
        "map_index": map_index,
    }
    assert body["trail"] == trail
    assert body["only_targets"] is None
    assert body["name"] == (uri if deployment.major >= 3 else None)  # Airflow 2 datasets have no name
    assert message.attributes == {"uri": uri, "event_id": body["id"], "source_deployment": deployment.name}


def post_loop_filter_and_forwarded_events(deployment: AirflowDeployment) -> None:
    """Three REST events of which only the last (extra rows=3) may be sent."""
    # Came back to this deployment through another one: must not go round again.
    deployment.create_asset_event(BEARS, extra={"rows": 1, "dataset_forwarder": {"trail": ["team-z", deployment.name]}})
    # Outside DATASET_FORWARDER_INCLUDE.
    deployment.create_asset_event(FISH, extra={"rows": 2})
    # Forwarded into this deployment by team-z: goes on, with this deployment added to the trail.
    deployment.create_asset_event(BEARS, extra={"rows": 3, "dataset_forwarder": {"id": "x", "trail": ["team-z"]}})


def assert_succeeded(run: DagsTest) -> None:
    assert run.done.returncode == 0, run.tail()
    assert run.run_state == "success", run.tail()


def producer_run_id(run: DagsTest) -> str:
    """The run id `airflow dags test` logged for the producer's DAG run (read from Airflow, not from the listener)."""
    found = re.findall(r"DagRun Finished: dag_id=producer, .*?run_id=([^,\s]+),", run.output)
    assert found, run.tail()
    return found[-1]


def dags_test_sends_the_bears_task_event(
    deployment: AirflowDeployment,
    moto: MotoSqs,
    validator: Draft202012Validator,
    queue: str,
    spool: Path,
    **env: str | None,
) -> None:
    """`dags test producer` succeeds, and then its task's BEARS event alone is on ``queue`` (FISH is outside the
    include glob), once, with the task's extra and source."""
    run = dags_test(deployment, "producer", **target(queue, spool, **env))

    assert_succeeded(run)
    messages = moto.drain(queue)
    assert [m.uri for m in messages] == [BEARS], ([m.body for m in messages], run.tail())
    check_envelope(
        messages[0], validator, deployment, uri=BEARS, extra=BEAR_EXTRA, dag_id="producer", task_id="get_bear",
        run_id=producer_run_id(run), map_index=-1, trail=[deployment.name],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- Airflow 3


def test_airflow3_dags_test_sends_task_event_with_runtime_extra(
    af3: AirflowDeployment, moto: MotoSqs, validator: Draft202012Validator, tmp_path: Path
) -> None:
    queue, spool = moto.create_queue("af3-dags-test"), tmp_path / "spool"

    # `dags test` has exited and drained its sender: what it sent is on the queue now.
    dags_test_sends_the_bears_task_event(af3, moto, validator, queue, spool)

    assert spool_leftovers(spool) == []


def test_airflow3_queue_unreachable_spools_then_next_run_delivers_both(
    af3: AirflowDeployment, moto: MotoSqs, tmp_path: Path
) -> None:
    queue, spool = moto.create_queue("af3-unreachable"), tmp_path / "spool"

    with closed_port() as dead_endpoint:
        down = dags_test(af3, "producer", **target(queue, spool, AWS_ENDPOINT_URL=dead_endpoint))
    assert_succeeded(down)
    # The send was tried and failed (logged by the direct send or by the spool catch-up, whichever came first).
    assert "stays spooled" in down.output or "Flushing the spool stopped" in down.output, down.tail()
    waiting = spooled(spool)
    assert [e["uri"] for e in waiting] == [BEARS], (spool_leftovers(spool), down.tail())
    assert moto.drain(queue) == []

    up = dags_test(af3, "producer", **target(queue, spool))
    assert_succeeded(up)
    messages = moto.drain(queue)
    ids = [m.id for m in messages]
    assert len(ids) == 2, [m.body for m in messages]
    assert len(set(ids)) == 2, [m.body for m in messages]
    assert waiting[0]["id"] in ids  # the spooled envelope went out unchanged: same id as the first try
    run_ids = {m.source["run_id"] for m in messages}
    assert run_ids == {producer_run_id(down), producer_run_id(up)}
    assert spool_leftovers(spool) == []
    print(f"\n[e2e] Airflow 3 dags test wall: queue down {down.elapsed_s:.1f} s, up {up.elapsed_s:.1f} s")
    # The dead queue cost at most the exit drain: the hook itself only spools and enqueues. (An Airflow 3 `dags test`
    # takes 15-25 s here, so the noise allowed grows with it.)
    slack_s = max(WALL_SLACK_S, 0.4 * up.elapsed_s)
    assert down.elapsed_s <= up.elapsed_s + AF3_EXIT_DRAIN_S + slack_s, (down.elapsed_s, up.elapsed_s)


@dataclass(frozen=True)
class Live:
    deployment: AirflowDeployment
    queue: str
    spool: Path


def rest_event_on_the_queue(
    live: Live, moto: MotoSqs, validator: Draft202012Validator
) -> tuple[dict[str, Any], Message]:
    """Post a REST event (no task made it) and check its envelope on the queue: null source, the REST extra."""
    event = live.deployment.create_asset_event(BEARS, extra={"rows": 5})

    [message] = moto.wait_for(live.queue, bool, what=f"REST event {event['id']}", diagnose=live.deployment.logs)
    assert event["source_dag_id"] is None, event
    check_envelope(
        message, validator, live.deployment, uri=BEARS, extra={"rows": 5, "from_rest_api": True},
        dag_id=None, task_id=None, run_id=None, map_index=None, trail=[live.deployment.name],
    )  # fmt: skip
    return event, message


def wait_spool_empty(live: Live) -> None:
    poll(
        lambda: spool_leftovers(live.spool) == [],
        timeout_s=10,
        what="spool emptied after the sends",
        diagnose=lambda: str(spool_leftovers(live.spool)),
    )


@pytest.fixture(scope="class")
def af3_live(af3: AirflowDeployment, moto: MotoSqs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Airflow 3 as in production: api-server (where the asset hooks run) + scheduler, stopped after the class."""
    queue, spool = moto.create_queue("af3-api-server"), tmp_path_factory.mktemp("af3-api") / "spool"
    with env_changed(af3, **target(queue, spool)):
        af3.start()
    af3.wait_healthy()
    yield Live(af3, queue, spool)
    af3.stop()


class TestAirflow3ApiServer:
    def _barrier(self, live: Live, moto: MotoSqs, seen: list[Message], label: str) -> Message:
        """Post a REST event and wait for it: the one sender thread has sent everything submitted before it."""
        event = live.deployment.create_asset_event(BEARS, extra={"barrier": label})
        moto.wait_for(
            live.queue,
            lambda got: any(m.body["extra"].get("barrier") == label for m in got),
            what=f"barrier event {label} ({event['id']}) on the queue",
            seen=seen,
            diagnose=live.deployment.logs,
        )
        return next(m for m in seen if m.body["extra"].get("barrier") == label)

    def test_triggered_run_event_is_sent_from_the_api_server(
        self, af3_live: Live, moto: MotoSqs, validator: Draft202012Validator
    ) -> None:
        deployment = af3_live.deployment
        run_id = deployment.trigger_dag("producer")["dag_run_id"]
        deployment.wait_for_dag_run("producer", where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)

        seen = moto.wait_for(
            af3_live.queue,
            lambda got: any(m.source.get("run_id") == run_id for m in got),
            what=f"the event of run {run_id}",
            diagnose=deployment.logs,
        )
        self._barrier(af3_live, moto, seen, "after-run")

        from_run = [m for m in seen if m.source.get("run_id") == run_id]
        assert len(from_run) == 1, [m.body for m in seen]  # one event: FISH is filtered out, BEARS sent once
        assert [m for m in seen if m.uri == FISH] == []
        check_envelope(
            from_run[0], validator, deployment, uri=BEARS, extra=BEAR_EXTRA,
            dag_id="producer", task_id="get_bear", run_id=run_id, map_index=-1, trail=[AF3_NAME],
        )  # fmt: skip

    def test_rest_event_is_sent_with_from_rest_api(
        self, af3_live: Live, moto: MotoSqs, validator: Draft202012Validator
    ) -> None:
        event, _ = rest_event_on_the_queue(af3_live, moto, validator)

        assert event["source_map_index"] == -1, event  # Airflow's column default; the envelope says null

    def test_partition_key_is_carried(self, af3_live: Live, moto: MotoSqs, validator: Draft202012Validator) -> None:
        deployment = af3_live.deployment
        asset = deployment.find_asset(BEARS)
        assert asset is not None
        body = {"asset_id": asset["id"], "extra": {"rows": 9}, "partition_key": "2026-12-06|eu"}
        event = deployment.api_json("POST", "/api/v2/assets/events", json=body)

        [message] = moto.wait_for(
            af3_live.queue, bool, what=f"partitioned event {event['id']}", diagnose=deployment.logs
        )
        assert message.body["partition_key"] == "2026-12-06|eu", message.body
        assert message.body["kind"] == "asset_event", message.body
        check_envelope(
            message, validator, deployment, uri=BEARS, extra={"rows": 9, "from_rest_api": True},
            dag_id=None, task_id=None, run_id=None, map_index=None, trail=[AF3_NAME],
        )  # fmt: skip

    def test_loop_guard_and_include_filter(
        self, af3_live: Live, moto: MotoSqs, validator: Draft202012Validator
    ) -> None:
        deployment = af3_live.deployment
        post_loop_filter_and_forwarded_events(deployment)

        seen: list[Message] = []
        moto.wait_for(
            af3_live.queue, lambda got: any(m.body["extra"].get("rows") == 3 for m in got),
            what="the event forwarded from team-z", seen=seen, diagnose=deployment.logs,
        )  # fmt: skip
        self._barrier(af3_live, moto, seen, "after-guard")

        assert [m.body["extra"].get("rows") for m in seen if "barrier" not in m.body["extra"]] == [3], [
            m.body for m in seen
        ]
        forwarded = next(m for m in seen if m.body["extra"].get("rows") == 3)
        check_envelope(
            forwarded, validator, deployment, uri=BEARS, extra={"rows": 3, "from_rest_api": True},
            dag_id=None, task_id=None, run_id=None, map_index=None, trail=["team-z", AF3_NAME],
        )  # fmt: skip

    def test_nothing_left_in_the_spool(self, af3_live: Live) -> None:
        wait_spool_empty(af3_live)


# --------------------------------------------------------------------------------------------------- Airflow 2


def test_airflow2_dags_test_sends_outlet_events_extra(
    af2: AirflowDeployment, moto: MotoSqs, validator: Draft202012Validator, tmp_path: Path
) -> None:
    queue, spool = moto.create_queue("af2-dags-test"), tmp_path / "spool"

    dags_test_sends_the_bears_task_event(af2, moto, validator, queue, spool)  # Airflow 2 sends before the hook returns

    assert spool_leftovers(spool) == []


def test_airflow2_queue_unreachable_task_succeeds_and_next_run_delivers_all(
    af2: AirflowDeployment, moto: MotoSqs, tmp_path: Path
) -> None:
    queue, spool = moto.create_queue("af2-unreachable"), tmp_path / "spool"
    budget_s = 2.0
    runs = {}

    with closed_port() as refused:  # nothing listens: connection refused
        runs["refused"] = dags_test(
            af2, "producer", **target(queue, spool, AWS_ENDPOINT_URL=refused, DATASET_FORWARDER_SEND_TIMEOUT_S="2")
        )
    assert_succeeded(runs["refused"])
    assert len(spooled(spool)) == 1, (spool_leftovers(spool), runs["refused"].tail())

    with hanging_endpoint() as hangs:  # accepts the connection, never answers: only the time budget ends the send
        runs["hanging"] = dags_test(
            af2, "producer", **target(queue, spool, AWS_ENDPOINT_URL=hangs, DATASET_FORWARDER_SEND_TIMEOUT_S="2")
        )
    assert_succeeded(runs["hanging"])
    assert "no answer from SQS within 2.0s" in runs["hanging"].output, runs["hanging"].tail()
    waiting = spooled(spool)
    assert len(waiting) == 2, (spool_leftovers(spool), runs["hanging"].tail())
    assert moto.drain(queue) == []

    runs["up"] = dags_test(af2, "producer", **target(queue, spool, DATASET_FORWARDER_SEND_TIMEOUT_S="2"))
    assert_succeeded(runs["up"])

    messages = moto.drain(queue)
    ids = [m.id for m in messages]
    assert len(ids) == 3, [m.body for m in messages]
    assert len(set(ids)) == 3, [m.body for m in messages]
    assert {e["id"] for e in waiting} <= set(ids)  # spooled envelopes keep their ids
    assert {m.source["run_id"] for m in messages} == {producer_run_id(r) for r in runs.values()}
    assert all(m.body["extra"] == BEAR_EXTRA for m in messages)
    assert spool_leftovers(spool) == []

    # The time the success hook took, from Airflow's own log lines around it, and the runs' wall times.
    hook_s = {label: af2_success_hook_s(run.output, "get_bear") for label, run in runs.items()}
    print(f"\n[e2e] Airflow 2 success hook: {hook_s}; wall: { {k: round(r.elapsed_s, 1) for k, r in runs.items()} }")
    assert hook_s["refused"] <= budget_s + 1.0, hook_s
    assert budget_s - 0.2 <= hook_s["hanging"] <= budget_s + 1.0, hook_s
    for label in ("refused", "hanging"):
        assert runs[label].elapsed_s <= runs["up"].elapsed_s + budget_s + WALL_SLACK_S, (label, runs)


MANAGER = "dataset_forwarder_listener.manager_af2.ForwardingDatasetManager"


def test_airflow2_with_the_forwarding_manager_sends_a_task_event_once(
    af2: AirflowDeployment, moto: MotoSqs, validator: Draft202012Validator, tmp_path: Path
) -> None:
    queue, spool = moto.create_queue("af2-manager-dags-test"), tmp_path / "spool"

    # The hook's event, not twice (the manager does not send it again).
    dags_test_sends_the_bears_task_event(
        af2, moto, validator, queue, spool, AIRFLOW__CORE__DATASET_MANAGER_CLASS=MANAGER
    )


@pytest.fixture(scope="class")
def af2_live(af2: AirflowDeployment, moto: MotoSqs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """Airflow 2's webserver, where REST-created events are registered, with the forwarding dataset manager."""
    queue, spool = moto.create_queue("af2-webserver"), tmp_path_factory.mktemp("af2-web") / "spool"
    with env_changed(af2, **target(queue, spool, AIRFLOW__CORE__DATASET_MANAGER_CLASS=MANAGER)):
        af2.start(scheduler=False)
    af2.wait_healthy()
    yield Live(af2, queue, spool)
    af2.stop()


class TestAirflow2RestEvents:
    def test_rest_event_is_sent_from_the_webserver(
        self, af2_live: Live, moto: MotoSqs, validator: Draft202012Validator
    ) -> None:
        event, message = rest_event_on_the_queue(af2_live, moto, validator)

        # Built from the row Airflow wrote: the event's own time, not the hook's.
        assert datetime.fromisoformat(message.body["emitted_at"]) == datetime.fromisoformat(event["timestamp"]), event

    def test_forwarded_into_airflow_2_goes_on_and_loops_and_filters_stop(
        self, af2_live: Live, moto: MotoSqs, validator: Draft202012Validator
    ) -> None:
        deployment = af2_live.deployment
        post_loop_filter_and_forwarded_events(deployment)

        # The first two are dropped before anything is queued for sending, so the third is all that ever comes.
        [message] = moto.wait_for(
            af2_live.queue, bool, what="the event forwarded from team-z", diagnose=deployment.logs
        )
        check_envelope(
            message, validator, deployment, uri=BEARS, extra={"rows": 3, "from_rest_api": True},
            dag_id=None, task_id=None, run_id=None, map_index=None, trail=["team-z", AF2_NAME],
        )  # fmt: skip
        wait_spool_empty(af2_live)


# --------------------------------------------------------------------------------------------------- not configured


@pytest.mark.parametrize("which", ["af3", "af2"])
def test_plugins_without_queue_url_warn_once_and_register_no_listener(
    which: str, request: pytest.FixtureRequest
) -> None:
    deployment: AirflowDeployment = request.getfixturevalue(which)

    with env_changed(deployment, DATASET_FORWARDER_QUEUE_URL=None):
        done = deployment.airflow("plugins", "--verbose", "-o", "json")
    output = done.stdout + done.stderr
    [plugin] = [p for p in plugins_json(done.stdout) if p["name"] == "dataset_forwarder"]
    assert plugin["listeners"] == [], plugin
    assert output.count(NOT_CONFIGURED) == 1, output[-3000:]

    # Configured, with one bad value: the listener registers and the log names the variable.
    with env_changed(deployment, DATASET_FORWARDER_SEND_TIMEOUT_S="soon"):
        done = deployment.airflow("plugins", "--verbose", "-o", "json")
    [plugin] = [p for p in plugins_json(done.stdout) if p["name"] == "dataset_forwarder"]
    hooks = "hooks_af3.AssetListener" if deployment.major >= 3 else "hooks_af2.DatasetListener"
    assert [str(listener) for listener in plugin["listeners"]] == [f"dataset_forwarder_listener.{hooks}"], plugin
    assert "DATASET_FORWARDER_SEND_TIMEOUT_S='soon'" in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]


def test_airflow2_dags_test_without_queue_url_sends_nothing(af2: AirflowDeployment, moto: MotoSqs) -> None:
    default_queue = af2.env["DATASET_FORWARDER_QUEUE_URL"]
    spool = Path(af2.env["DATASET_FORWARDER_SPOOL_DIR"])
    moto.drain(default_queue)

    run = dags_test(af2, "producer", DATASET_FORWARDER_QUEUE_URL=None)

    assert_succeeded(run)
    assert run.output.count(NOT_CONFIGURED) == 1, run.tail()
    assert moto.drain(default_queue) == []  # the queue it would use were the variable set
    assert not spool.exists(), spool_leftovers(spool)
