"""Target kinds end to end: `trigger_dag` over HTTPS, and MWAA `InvokeRestApi` (both actions, one cross-account role),
delivered by the real handler to a real Airflow 3.3 and a real Airflow 2.11.

One local stack (`dataset-forwarder local up`: moto server with the stack from template.yaml, the product's poller, the
real handler, and its MWAA emulator relaying to the two deployments) and two downstream deployments (api-server or
webserver + scheduler) for the module. No upstream Airflow: the listener is covered by test_end_to_end.py, so events
are put on the events queue as the listener would put them, with ids chosen by the test.

MWAA environments of the emulator (the stack allows exactly these: MwaaEnvironments / TargetRoleArns):
    mwaa-af3, mwaa-af2   the deployments, in the function's own account (the emulator's default allow-list)
    xacct-af3            af3 again, as a team account's environment: only sessions of ROLE_ARN may call it
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devkit.airflow_env import AirflowDeployment
from devkit.local_forwarding import (
    LINEAGE,
    LocalStackProcess,
    asset_events,
    consumer_dag,
    mwaa_spec,
    runs_of_event,
    trigger_run_id,
    triggered_dag,
    wait_for_forwarded_run,
    wait_until,
)
from tests.e2e.conftest import deployments_running

MAJORS = ("af3", "af2")
ROLE_ARN = "arn:aws:iam::210987654321:role/dataset-forwarder-invoke"
XACCT = "xacct-af3"
SENDER = "e2e-sender"  # the upstream deployment named in the envelopes
EXTRA = {"rows": 42, "note": "from the e2e sender"}
URI = "s3://kinds/{case}/{af}"
TRIGGERED = ("trig_https", "trig_redrive", "trig_dup", "trig_mwaa", "trig_xacct")


def _dags(af: str, major: int) -> dict[str, str]:
    dags = {f"{dag_id}.py": triggered_dag(major, dag_id) for dag_id in TRIGGERED}
    dags["consume_mwaa.py"] = consumer_dag(major, "consume_mwaa", [URI.format(case="mwaa-asset", af=af)])
    return dags


@dataclass
class Kinds:
    stack: LocalStackProcess
    deployments: dict[str, AirflowDeployment]

    def __getitem__(self, af: str) -> AirflowDeployment:
        return self.deployments[af]

    def logs(self) -> str:
        return "\n".join(d.logs(40) for d in self.deployments.values()) + "\n" + self.stack.log_tail(60)

    def settled(self, event_id: str, target: str, message: str = "delivered") -> dict[str, Any]:
        """The handler's log line `message` for this event and target, waiting for it."""
        lines: list[dict[str, Any]] = wait_until(
            lambda: self.stack.event_trace(event_id).lines(message, target),
            f"{message!r} logged for {event_id} -> {target}",
            timeout_s=60,
        )
        return lines[0]


@pytest.fixture(scope="module")
def kinds(
    request: pytest.FixtureRequest, airflow3_venv: Path, airflow2_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Kinds]:
    root = tmp_path_factory.mktemp("target-kinds")
    deployments = {
        af: AirflowDeployment(venv, root / af, name=af, dags=_dags(af, major))
        for af, venv, major in (("af3", airflow3_venv, 3), ("af2", airflow2_venv, 2))
    }
    passwords = {f"{af.upper()}_PASSWORD": d.user.password for af, d in deployments.items()}
    environments = [mwaa_spec(f"mwaa-{af}", d, f"{af.upper()}_PASSWORD") for af, d in deployments.items()]
    environments.append(mwaa_spec(XACCT, deployments["af3"], "AF3_PASSWORD"))
    stack = LocalStackProcess(
        root / "local",
        # targets are registered as the tests go: read them on every record
        parameters={
            "ConfigTtlSeconds": "0",
            "MwaaEnvironments": f"mwaa-af3,mwaa-af2,{XACCT}",
            "TargetRoleArns": ROLE_ARN,
        },
        mwaa_environments=environments,
        mwaa_allow=[f"{XACCT}={ROLE_ARN}"],  # replaces the default (the function's own account)
        env=passwords,
    )
    kinds = Kinds(stack, deployments)
    with deployments_running(request, stack, deployments, kinds.logs, stack_up=True):
        yield kinds


def _wait_for_run(kinds: Kinds, af: str, dag_id: str, event_id: str) -> dict[str, Any]:
    """The run of `dag_id` that the event started, once it has succeeded (its task checked the conf)."""
    deployment = kinds[af]
    run_id = trigger_run_id(event_id)
    wait_until(lambda: runs_of_event(deployment, dag_id, event_id), f"[{af}] a run of {dag_id}", timeout_s=60)
    [run] = deployment.wait_for_dag_run(dag_id, where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
    return run


def _check_conf(run: dict[str, Any], envelope: dict[str, Any]) -> None:
    assert run["dag_run_id"] == f"dataset_forwarder__{envelope['id']}", run
    assert run["conf"] == {
        LINEAGE: {
            "id": envelope["id"],
            "uri": envelope["uri"],
            "extra": envelope["extra"],
            "partition_key": None,
            "source": envelope["source"],
            "trail": [SENDER],
        }
    }, run["conf"]


def _only_run(kinds: Kinds, af: str, dag_id: str, envelope: dict[str, Any]) -> None:
    """The DAG has run exactly once, for this event."""
    runs = kinds[af].dag_runs(dag_id)
    assert [r["dag_run_id"] for r in runs] == [trigger_run_id(envelope["id"])], runs
    assert runs_of_event(kinds[af], dag_id, envelope["id"]) == runs


# --------------------------------------------------------------------------------------------------- HTTPS way in


def _event_triggers_one_run(kinds: Kinds, af: str, target: str, uri: str, dag_id: str) -> None:
    """An event for ``uri`` (its `trigger_dag` target registered) starts one run of ``dag_id`` on ``af``, with the
    event in its conf, and is settled with that run's id."""
    envelope = kinds.stack.send_envelope(uri, EXTRA, deployment=SENDER)

    run = _wait_for_run(kinds, af, dag_id, envelope["id"])
    _check_conf(run, envelope)
    delivered = kinds.settled(envelope["id"], target)
    assert delivered["downstream_id"] == trigger_run_id(envelope["id"]), delivered
    _only_run(kinds, af, dag_id, envelope)


@pytest.mark.parametrize("af", MAJORS)
def test_https_trigger_dag_runs_the_dag_once_with_the_event_in_its_conf(kinds: Kinds, af: str) -> None:
    target, uri = f"https-trig-{af}", URI.format(case="https-trig", af=af)
    kinds.stack.put_target(target, kinds[af], [uri], dag_id="trig_https")

    _event_triggers_one_run(kinds, af, target, uri, "trig_https")


@pytest.mark.parametrize("af", MAJORS)
def test_https_trigger_dag_wrong_credential_dead_letters_then_redrive_after_the_fix_runs_it_once(
    kinds: Kinds, af: str
) -> None:
    stack, deployment = kinds.stack, kinds[af]
    target, uri = f"https-redrive-{af}", URI.format(case="https-redrive", af=af)
    stack.put_target(target, deployment, [uri], dag_id="trig_redrive", password="not-the-password")

    envelope = stack.send_envelope(uri, EXTRA, deployment=SENDER)

    [letter] = wait_until(lambda: stack.dead_letters(target=target), f"a dead letter for {target}", timeout_s=60)
    assert letter["error"] == "auth", letter
    assert "not-the-password" not in json.dumps(letter)
    assert deployment.dag_runs("trig_redrive") == []

    stack.put_target(target, deployment, [uri], dag_id="trig_redrive")
    redriven = stack.cli("dlq", "redrive", "--target", target)
    assert "1 dead letter(s) moved to the events queue" in redriven.stdout, redriven.stdout

    run = _wait_for_run(kinds, af, "trig_redrive", envelope["id"])
    _check_conf(run, envelope)
    kinds.settled(envelope["id"], target)
    assert stack.dead_letters(target=target) == []
    _only_run(kinds, af, "trig_redrive", envelope)


@pytest.mark.parametrize("af", MAJORS)
def test_trigger_dag_whose_run_is_already_there_is_a_duplicate_not_a_second_run(kinds: Kinds, af: str) -> None:
    """An earlier try that landed but lost its answer: the run exists, the POST gets 409, nothing else happens."""
    stack, deployment = kinds.stack, kinds[af]
    target, uri = f"https-dup-{af}", URI.format(case="https-dup", af=af)
    stack.put_target(target, deployment, [uri], dag_id="trig_dup")
    event_id = uuid.uuid4().hex
    body: dict[str, Any] = {"dag_run_id": trigger_run_id(event_id), "conf": {LINEAGE: {"id": event_id}}}
    if deployment.major >= 3:
        body["logical_date"] = None
    deployment.api_json("POST", f"{deployment.api_prefix}/dags/trig_dup/dagRuns", json=body)

    envelope = stack.send_envelope(uri, EXTRA, event_id=event_id, deployment=SENDER)

    kinds.settled(event_id, target, "the target already has it, not posted again")
    assert stack.event_trace(event_id).lines("delivered", target) == []
    assert stack.dead_letters(target=target) == []
    [run] = deployment.dag_runs("trig_dup")
    assert run["conf"] == {LINEAGE: {"id": event_id}}, run  # the forwarder's POST changed nothing
    _only_run(kinds, af, "trig_dup", envelope)


# --------------------------------------------------------------------------------------------------- MWAA way in


@pytest.mark.parametrize("af", MAJORS)
def test_mwaa_asset_event_runs_the_consumer_scheduled_on_the_asset(kinds: Kinds, af: str) -> None:
    target, uri = f"mwaa-asset-{af}", URI.format(case="mwaa-asset", af=af)
    kinds.stack.put_mwaa_target(target, f"mwaa-{af}", [uri])

    envelope = kinds.stack.send_envelope(uri, EXTRA, deployment=SENDER)

    run = wait_for_forwarded_run(
        kinds[af],
        "consume_mwaa",
        lambda r: r.lineage(uri).get("id") == envelope["id"],
        timeout_s=60,
        diagnose=kinds.logs,
    )
    extra = run.extra(uri)
    assert {k: extra[k] for k in EXTRA} == EXTRA, extra
    assert run.lineage(uri)["trail"] == [SENDER], extra
    kinds.settled(envelope["id"], target)
    [event] = asset_events(kinds[af], uri)
    assert event["extra"][LINEAGE]["id"] == envelope["id"], event
    assert len(kinds[af].dag_runs("consume_mwaa")) == 1


@pytest.mark.parametrize("af", MAJORS)
def test_mwaa_trigger_dag_runs_the_dag_once_with_the_event_in_its_conf(kinds: Kinds, af: str) -> None:
    target, uri = f"mwaa-trig-{af}", URI.format(case="mwaa-trig", af=af)
    kinds.stack.put_mwaa_target(target, f"mwaa-{af}", [uri], dag_id="trig_mwaa")

    _event_triggers_one_run(kinds, af, target, uri, "trig_mwaa")


def test_mwaa_cross_account_environment_admits_only_the_role_assumed_through_sts(kinds: Kinds) -> None:
    """Two targets on the team account's environment and one event: the one that assumes ROLE_ARN (moto STS) starts
    the run; the one calling with the function's own identity is refused by IAM and dead-lettered `auth`."""
    stack, uri = kinds.stack, URI.format(case="xacct", af="af3")
    stack.put_mwaa_target("xacct-role", XACCT, [uri], dag_id="trig_xacct", role_arn=ROLE_ARN)
    stack.put_mwaa_target("xacct-own-identity", XACCT, [uri], dag_id="trig_xacct")

    envelope = stack.send_envelope(uri, EXTRA, deployment=SENDER)

    run = _wait_for_run(kinds, "af3", "trig_xacct", envelope["id"])
    _check_conf(run, envelope)
    kinds.settled(envelope["id"], "xacct-role")
    [letter] = wait_until(
        lambda: stack.dead_letters(target="xacct-own-identity"), "a dead letter for xacct-own-identity", timeout_s=60
    )
    assert letter["error"] == "auth", letter
    assert letter["event_id"] == envelope["id"], letter
    _only_run(kinds, "af3", "trig_xacct", envelope)
