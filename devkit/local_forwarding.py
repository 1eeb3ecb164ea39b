"""The whole path on one machine: real Airflow deployments on both sides, the local stack in between.

Shared by the end-to-end tests (`test_end_to_end.py`) and `make demo` (`demo/run_demo.py`):

- `LocalStackProcess` runs `dataset-forwarder local up` (moto server, the stack from template.yaml, the product's
  event-source poller feeding the real handler) with a state directory of its own, gives the environment an
  upstream listener and the CLI need, runs CLI commands, and reads the stack's JSON log (poller and handler lines);
- DAG sources for producers (a task outlet with a runtime extra) and consumers (scheduled on datasets/assets), for
  Airflow 2 and 3;
- helpers that read what happened from both sides' REST APIs: the producer task's end, the consumer runs, the
  events that triggered them, and a timeline of one event (task success -> queue -> delivery -> DAG run).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devkit.airflow_env import AirflowDeployment, AirflowError, poll
from devkit.envelopes import envelope as reference_envelope
from devkit.moto_env import AWS_NOISE
from devkit.paths import CLI_DIR, FUNCTION_DIR

# This worktree's CLI and core package, ahead of whatever checkout the venv's editable install was made from.
WORKTREE_PATHS = (CLI_DIR, FUNCTION_DIR)
CLI = [sys.executable, "-m", "dataset_forwarder_cli.main"]
LINEAGE = "dataset_forwarder"


def parse_time(value: str | None) -> float | None:
    """Epoch seconds of an ISO 8601 time as Airflow's API or Powertools' logs write it; None stays None."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    if "," in text:  # Powertools: "2026-11-25 12:47:09,583+0000"
        return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f%z").timestamp()
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# --------------------------------------------------------------------------------------------------- local stack


class LocalStackProcess:
    """`dataset-forwarder local up` in the background, with its own state directory; `down()` stops it."""

    def __init__(
        self,
        state_dir: Path,
        *,
        parameters: Mapping[str, str] | None = None,
        handler_env: Mapping[str, str] | None = None,
        mwaa_environments: Sequence[str] = (),
        mwaa_allow: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`mwaa_environments`/`mwaa_allow`: `local up --mwaa-environment/--mwaa-allow` values (see `mwaa_spec`);
        `env`: variables for the `local up` process only (the passwords those specs name with password-env=)."""
        self.state_dir = state_dir
        self.parameters = dict(parameters or {})
        self.handler_env = dict(handler_env or {})
        self.mwaa_environments = list(mwaa_environments)
        self.mwaa_allow = list(mwaa_allow)
        self.up_env = dict(env or {})
        self.state: dict[str, Any] = {}
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in AWS_NOISE}
        inherited = [self.base_env["PYTHONPATH"]] if self.base_env.get("PYTHONPATH") else []
        self.base_env["PYTHONPATH"] = os.pathsep.join([*map(str, WORKTREE_PATHS), *inherited])

    def up(self, timeout_s: float = 240) -> LocalStackProcess:
        args = ["local", "up", "--json", "--state-dir", str(self.state_dir), "--timeout", str(timeout_s)]
        for key, value in self.parameters.items():
            args += ["--parameter", f"{key}={value}"]
        for key, value in self.handler_env.items():
            args += ["--handler-env", f"{key}={value}"]
        for spec in self.mwaa_environments:
            args += ["--mwaa-environment", spec]
        for entry in self.mwaa_allow:
            args += ["--mwaa-allow", entry]
        done = self._run(args, env={**self.base_env, **self.up_env}, timeout_s=timeout_s + 30)
        if done.returncode != 0:
            raise RuntimeError(f"local up failed ({done.returncode}):\n{done.stderr}\n{done.stdout}\n{self.log_tail()}")
        self.state = json.loads(done.stdout)
        return self

    def down(self) -> str:
        done = self._run(["local", "down", "--state-dir", str(self.state_dir)], env=self.base_env, timeout_s=120)
        return (done.stdout + done.stderr).strip()

    @property
    def pid(self) -> int:
        return int(self.state["pid"])

    @property
    def stack(self) -> dict[str, Any]:
        stack: dict[str, Any] = self.state["stack"]
        return stack

    @property
    def log_path(self) -> Path:
        return self.state_dir / "local.log"

    def cli_env(self) -> dict[str, str]:
        """The environment `dataset-forwarder targets|dlq|send-test-event` need for this stack."""
        done = self._run(["local", "env", "--json", "--state-dir", str(self.state_dir)], env=self.base_env)
        if done.returncode != 0:
            raise RuntimeError(f"local env failed: {done.stderr}")
        variables: dict[str, str] = json.loads(done.stdout)
        return {**self.base_env, **variables}

    def upstream_env(self, deployment: str, spool_dir: Path) -> dict[str, str]:
        """What an upstream Airflow's listener gets: queue URL, endpoint and fake credentials, its own name."""
        done = self._run(
            ["local", "env", "--for", "upstream", "--json", "--state-dir", str(self.state_dir)], env=self.base_env
        )
        variables: dict[str, str] = json.loads(done.stdout)
        return {**variables, "DATASET_FORWARDER_DEPLOYMENT": deployment, "DATASET_FORWARDER_SPOOL_DIR": str(spool_dir)}

    def cli(
        self, *args: str, env: Mapping[str, str] | None = None, check: bool = True, timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`dataset-forwarder ARGS` against this stack."""
        done = self._run(list(args), env={**self.cli_env(), **(env or {})}, timeout_s=timeout_s)
        if check and done.returncode != 0:
            raise RuntimeError(f"dataset-forwarder {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done

    def put_target(
        self,
        name: str,
        deployment: AirflowDeployment,
        datasets: Sequence[str],
        *,
        dag_id: str | None = None,
        password: str | None = None,
    ) -> None:
        """`dataset-forwarder targets put` for a deployment, with its first user's credentials (JWT on 3.x).

        With `dag_id`, a `trigger_dag` target of that DAG; `password` replaces the user's (a wrong one, on purpose).
        """
        auth = ["--auth", "airflow-token"] if deployment.major >= 3 else ["--auth", "basic"]
        args = ["targets", "put", name, "--url", deployment.url, "--allow-http", *auth]
        args += ["--username", deployment.user.username, "--token-env", "PASSWORD", *_action_args(dag_id)]
        for uri in datasets:
            args += ["--dataset", uri]
        self.cli(*args, env={"PASSWORD": deployment.user.password if password is None else password})

    def put_mwaa_target(
        self, name: str, environment: str, datasets: Sequence[str], *, dag_id: str | None = None, role_arn: str = ""
    ) -> None:
        """`dataset-forwarder targets put NAME --mwaa-environment ENVIRONMENT` (IAM, no secret); `trigger_dag` with
        `dag_id`; `role_arn` assumed through STS for a cross-account environment."""
        args = ["targets", "put", name, "--mwaa-environment", environment, *_action_args(dag_id)]
        if role_arn:
            args += ["--role-arn", role_arn]
        for uri in datasets:
            args += ["--dataset", uri]
        self.cli(*args)

    def send_envelope(
        self, uri: str, extra: Mapping[str, Any] | None = None, *, event_id: str | None = None, deployment: str = "e2e"
    ) -> dict[str, Any]:
        """Put one envelope on the events queue as the listener would (no upstream Airflow); the envelope.

        Like `send-test-event`, but `event_id` may be chosen, e.g. to create its `trigger_dag` run beforehand.
        """
        import boto3

        env = self.cli_env()
        source = {
            "deployment": deployment,
            "airflow_version": None,
            "dag_id": "e2e_sender",
            "task_id": "send",
            "run_id": f"manual__{uuid.uuid4().hex[:8]}",
            "map_index": None,
        }
        emitted_at = datetime.now(UTC).isoformat()
        envelope = reference_envelope(
            uri, event_id=event_id, extra=dict(extra or {}), source=source, emitted_at=emitted_at, trail=[deployment]
        )
        sqs = boto3.client(
            "sqs",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        attributes = {
            "uri": {"DataType": "String", "StringValue": uri},
            "event_id": {"DataType": "String", "StringValue": envelope["id"]},
            "source_deployment": {"DataType": "String", "StringValue": deployment},
        }
        sqs.send_message(
            QueueUrl=env["DATASET_FORWARDER_QUEUE_URL"], MessageBody=json.dumps(envelope), MessageAttributes=attributes
        )
        return envelope

    def dead_letters(self, **filters: str) -> list[dict[str, Any]]:
        args = ["dlq", "list", "--json"]
        for key, value in filters.items():
            args += [f"--{key}", value]
        letters: list[dict[str, Any]] = json.loads(self.cli(*args).stdout)["dead_letters"]
        return letters

    @staticmethod
    def _run(args: list[str], env: Mapping[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args], env=dict(env), capture_output=True, text=True, timeout=timeout_s, check=False
        )

    # -- the stack's log: the poller's and the handler's JSON lines

    def log_records(self) -> list[dict[str, Any]]:
        records = []
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no local stack log)"
        return "----- local stack log -----\n" + "\n".join(text.splitlines()[-lines:])

    def event_trace(self, event_id: str) -> EventTrace:
        """What the poller and the handler logged about one event."""
        records = self.log_records()
        received = [
            (record, entry)
            for record in records
            if record.get("invocation")
            for entry in record.get("records", [])
            if entry.get("event_id") == event_id
        ]
        handler_lines = [
            r for r in records if r.get("event_id") == event_id and r.get("service") != "local-event-source"
        ]
        return EventTrace(event_id, received, handler_lines)


def _action_args(dag_id: str | None) -> list[str]:
    return ["--action", "trigger_dag", "--dag-id", dag_id] if dag_id else []


def mwaa_spec(environment: str, deployment: AirflowDeployment, password_env: str) -> str:
    """A `local up --mwaa-environment` value relaying `environment` to `deployment` as its first user, whose
    password `local up` reads from the variable `password_env` (see `LocalStackProcess(env=...)`)."""
    user = deployment.user.username
    return f"{environment}={deployment.url},airflow={deployment.major},user={user},password-env={password_env}"


@dataclass
class EventTrace:
    event_id: str
    received: list[tuple[dict[str, Any], dict[str, Any]]]  # (invocation log line, its record entry)
    handler_lines: list[dict[str, Any]]

    @property
    def sent_at(self) -> float | None:
        """SQS SentTimestamp: when the upstream listener's SendMessage was accepted."""
        stamps = [entry["sent_at_ms"] / 1000 for _, entry in self.received if entry.get("sent_at_ms")]
        return min(stamps) if stamps else None

    @property
    def first_invoked_at(self) -> float | None:
        stamps = [float(line["started_at"]) for line, _ in self.received if line.get("started_at")]
        return min(stamps) if stamps else None

    def lines(self, message: str, target: str | None = None) -> list[dict[str, Any]]:
        return [
            line
            for line in self.handler_lines
            if line.get("message") == message and (target is None or line.get("target") == target)
        ]

    def delivered_at(self, target: str) -> float | None:
        found = self.lines("delivered", target)
        return parse_time(found[0]["timestamp"]) if found else None


# --------------------------------------------------------------------------------------------------- DAG sources


def dag_imports(major: int, *, assets: bool) -> str:
    """The imports a DAG file needs on Airflow `major`: DAG and task, and with `assets` the asset class as `Dataset`."""
    if major >= 3:
        return "from airflow.sdk import DAG, Asset as Dataset, task" if assets else "from airflow.sdk import DAG, task"
    dataset = "from airflow.datasets import Dataset\n" if assets else ""
    return f"from airflow import DAG\n{dataset}from airflow.decorators import task"


def producer_dag(major: int, dag_id: str, uris: Sequence[str], extra: Mapping[str, Any] | None = None) -> str:
    """A DAG with one task `produce` whose outlets are `uris`; each event's extra is `extra` plus the run id."""
    static = dict(extra or {"rows": 42})
    header = dag_imports(major, assets=True)
    return f"""
from datetime import datetime, timezone

{header}

OUTLETS = [Dataset(uri) for uri in {list(uris)!r}]

with DAG({dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task(outlets=OUTLETS)
    def produce(**context):
        for outlet in OUTLETS:
            context["outlet_events"][outlet].extra = {{**{static!r}, "producer_run_id": context["run_id"]}}

    produce()
"""


def consumer_dag(major: int, dag_id: str, uris: Sequence[str]) -> str:
    """A DAG scheduled on every one of `uris` (all of them must have an event)."""
    header = dag_imports(major, assets=True)
    return f"""
from datetime import datetime, timezone

{header}

with DAG(
    {dag_id!r},
    schedule=[Dataset(uri) for uri in {list(uris)!r}],
    start_date=datetime(2024, 1, 1, tzinfo=timezone.utc),
    catchup=False,
):
    @task
    def consume():
        return 1

    consume()
"""


def triggered_dag(major: int, dag_id: str) -> str:
    """A DAG with no schedule, for `trigger_dag` targets: its task `check` fails unless the run's conf carries a
    forwarded event (`dataset_forwarder` with id, uri and trail), so a successful run proves the conf arrived."""
    header = dag_imports(major, assets=False)
    return f"""
from datetime import datetime, timezone

{header}

with DAG({dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task
    def check(**context):
        event = (context["dag_run"].conf or {{}})[{LINEAGE!r}]
        if not (event["id"] and event["uri"] and event["trail"]):
            raise ValueError(f"not a forwarded event: {{event}}")
        return event["id"]

    check()
"""


# --------------------------------------------------------------------------------------------------- what happened


def task_end(deployment: AirflowDeployment, dag_id: str, run_id: str, task_id: str = "produce") -> float:
    """When a task instance of a running deployment ended (epoch seconds)."""
    path = f"{deployment.api_prefix}/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}"
    body = deployment.api_json("GET", path)
    end = parse_time(body.get("end_date"))
    if end is None:
        raise AirflowError(f"[{deployment.name}] {dag_id}.{task_id} in {run_id} has no end_date: {body}")
    return end


def task_end_from_db(deployment: AirflowDeployment, dag_id: str, task_id: str = "produce") -> tuple[str, float]:
    """(run id, end) of the latest successful try of the task, read from the deployment's SQLite database.

    For producers run with `airflow dags test`, when no api-server runs.
    """
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{deployment.home / 'airflow.db'}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT run_id, end_date FROM task_instance WHERE dag_id = ? AND task_id = ? AND state = 'success' "
            "ORDER BY end_date DESC LIMIT 1",
            (dag_id, task_id),
        ).fetchone()
    if row is None:
        raise AirflowError(f"[{deployment.name}] no successful {dag_id}.{task_id} in the database")
    end = parse_time(str(row[1]).replace(" ", "T"))
    assert end is not None
    return str(row[0]), end


@dataclass
class ForwardedRun:
    """A downstream DAG run created by forwarded events, with the events that triggered it."""

    run: dict[str, Any]
    events: list[dict[str, Any]]

    @property
    def run_id(self) -> str:
        return str(self.run["dag_run_id"])

    @property
    def created_at(self) -> float:
        """When the scheduler created the run (`queued_at`; on 2.x read from its database, see `forwarded_runs`)."""
        created = parse_time(self.run.get("queued_at")) or parse_time(self.run.get("start_date"))
        assert created is not None, self.run
        return created

    def lineage(self, uri: str | None = None) -> dict[str, Any]:
        for event in self.events:
            if uri is None or _event_uri(event) == uri:
                lineage: dict[str, Any] = (event.get("extra") or {}).get(LINEAGE, {})
                return lineage
        return {}

    def extra(self, uri: str | None = None) -> dict[str, Any]:
        for event in self.events:
            if uri is None or _event_uri(event) == uri:
                extra: dict[str, Any] = event.get("extra") or {}
                return extra
        return {}


def _queued_at_from_db(deployment: AirflowDeployment, dag_id: str, run_id: str) -> str | None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{deployment.home / 'airflow.db'}?mode=ro", uri=True)) as db:
        row = db.execute("SELECT queued_at FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)).fetchone()
    return str(row[0]) if row and row[0] else None


def _event_uri(event: Mapping[str, Any]) -> str:
    return str(event.get("uri") or event.get("dataset_uri") or "")


def forwarded_runs(
    deployment: AirflowDeployment, dag_id: str, where: Callable[[ForwardedRun], bool] | None = None
) -> list[ForwardedRun]:
    """Runs of `dag_id` with their triggering events, oldest first; `where` filters them."""
    found = []
    for listed in sorted(deployment.dag_runs(dag_id), key=lambda r: r.get("queued_at") or r.get("logical_date") or ""):
        run = dict(listed)
        if "queued_at" not in run:  # Airflow 2's API leaves it out; its logical date is the event's time
            run["queued_at"] = _queued_at_from_db(deployment, dag_id, str(run["dag_run_id"]))
        forwarded = ForwardedRun(run, deployment.upstream_events(dag_id, str(run["dag_run_id"])))
        if where is None or where(forwarded):
            found.append(forwarded)
    return found


def wait_for_forwarded_run(
    deployment: AirflowDeployment,
    dag_id: str,
    where: Callable[[ForwardedRun], bool],
    *,
    timeout_s: float = 60,
    diagnose: Callable[[], str] | None = None,
) -> ForwardedRun:
    """The first run of `dag_id` matching `where`, waiting for it."""

    def check() -> ForwardedRun | None:
        runs = forwarded_runs(deployment, dag_id, where)
        return runs[0] if runs else None

    found: ForwardedRun = poll(
        check,
        timeout_s=timeout_s,
        what=f"[{deployment.name}] a run of {dag_id}",
        interval_s=0.1,
        diagnose=lambda: (diagnose() if diagnose else "") + "\n" + deployment.logs(),
    )
    return found


def from_producer_run(run_id: str, uri: str | None = None) -> Callable[[ForwardedRun], bool]:
    """Matches downstream runs triggered by an event carrying this producer run id in its extra."""

    def match(run: ForwardedRun) -> bool:
        return any(
            (event.get("extra") or {}).get("producer_run_id") == run_id and (uri is None or _event_uri(event) == uri)
            for event in run.events
        )

    return match


def produced_events(deployment: AirflowDeployment, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The asset/dataset events a producer DAG run emitted, as its own deployment recorded them (with `timestamp`)."""
    kind = "assets/events" if deployment.major >= 3 else "datasets/events"
    body = deployment.api_json(
        "GET", f"{deployment.api_prefix}/{kind}", params={"source_dag_id": dag_id, "source_run_id": run_id}
    )
    events: list[dict[str, Any]] = body["asset_events" if deployment.major >= 3 else "dataset_events"]
    return events


def asset_events(deployment: AirflowDeployment, uri: str) -> list[dict[str, Any]]:
    """Every event of the asset/dataset `uri` in a deployment."""
    asset = deployment.find_asset(uri)
    if asset is None:
        return []
    if deployment.major >= 3:
        body = deployment.api_json("GET", "/api/v2/assets/events", params={"asset_id": asset["id"], "limit": 100})
        events: list[dict[str, Any]] = body["asset_events"]
        return events
    body = deployment.api_json("GET", "/api/v1/datasets/events", params={"dataset_id": asset["id"], "limit": 100})
    events = body["dataset_events"]
    return events


def wait_until(check: Callable[[], Any], what: str, timeout_s: float = 60, interval_s: float = 0.2) -> Any:
    return poll(check, timeout_s=timeout_s, what=what, interval_s=interval_s, diagnose=lambda: "")


def trigger_run_id(event_id: str) -> str:
    """The run id a `trigger_dag` target gives the run it starts for an event (DESIGN 9.3)."""
    return f"dataset_forwarder__{event_id}"


def runs_of_event(deployment: AirflowDeployment, dag_id: str, event_id: str) -> list[dict[str, Any]]:
    """Runs of `dag_id` whose conf carries the forwarded event `event_id`, or whose run id is made from it."""
    return [
        run
        for run in deployment.dag_runs(dag_id)
        if ((run.get("conf") or {}).get(LINEAGE) or {}).get("id") == event_id
        or run["dag_run_id"] == trigger_run_id(event_id)
    ]
