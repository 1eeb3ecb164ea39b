"""Helpers for the listener's end-to-end tests: moto server's SQS, envelope checks, unreachable endpoints, log timing.

Kept apart from `airflow_env.py` (which knows nothing about the listener) so the listener tests read as scenarios.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from devkit.airflow_env import AirflowDeployment, poll
from devkit.moto_env import AWS_NOISE, MotoServer, aws_session, fake_aws_env
from devkit.paths import REPO_ROOT

SCHEMA_PATH = REPO_ROOT / "events" / "envelope.schema.json"
UNSET = None


def envelope_validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


# --------------------------------------------------------------------------------------------------- SQS


@dataclass(frozen=True)
class Message:
    """One SQS message as the forwarder would receive it."""

    body: dict[str, Any]
    attributes: dict[str, str]

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def uri(self) -> str:
        return str(self.body["uri"])

    @property
    def source(self) -> dict[str, Any]:
        source: dict[str, Any] = self.body.get("source") or {}
        return source


class MotoSqs:
    """moto server on 127.0.0.1 (own thread) and a client for its SQS."""

    def __init__(self) -> None:
        self._server = MotoServer().start()
        self.port = self._server.port
        self.endpoint = self._server.endpoint
        self.client = aws_session().client("sqs", endpoint_url=self.endpoint)
        self._queues = 0

    def stop(self) -> None:
        self._server.stop()

    def create_queue(self, label: str) -> str:
        self._queues += 1
        name = re.sub(r"[^A-Za-z0-9_-]", "-", f"{label}-{self._queues}")[:80]
        url: str = self.client.create_queue(QueueName=name)["QueueUrl"]
        return url

    def drain(self, queue_url: str) -> list[Message]:
        """Every message visible now, deleted from the queue."""
        messages: list[Message] = []
        while True:
            batch = self.client.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"], WaitTimeSeconds=0
            ).get("Messages", [])
            if not batch:
                return messages
            for raw in batch:
                attributes = {k: v["StringValue"] for k, v in (raw.get("MessageAttributes") or {}).items()}
                messages.append(Message(json.loads(raw["Body"]), attributes))
            self.client.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)],
            )

    def wait_for(
        self,
        queue_url: str,
        until: Callable[[list[Message]], bool],
        *,
        what: str,
        timeout_s: float = 30,
        seen: list[Message] | None = None,
        diagnose: Callable[[], str] = lambda: "",
    ) -> list[Message]:
        """Drain the queue until `until(everything received so far)` holds; returns everything received."""
        received = seen if seen is not None else []

        def check() -> bool:
            received.extend(self.drain(queue_url))
            return until(received)

        poll(
            check,
            timeout_s=timeout_s,
            what=what,
            diagnose=lambda: f"received: {[m.body for m in received]}\n{diagnose()}",
        )
        return received


# --------------------------------------------------------------------------------------------------- environment


def listener_env(
    moto: MotoSqs, queue_url: str, deployment: str, spool_dir: Path, **more: str | None
) -> dict[str, str | None]:
    """What an upstream deployment sets for the listener, pointed at moto (None removes a variable)."""
    env: dict[str, str | None] = {
        **fake_aws_env(moto.endpoint),
        **dict.fromkeys(AWS_NOISE, UNSET),
        "DATASET_FORWARDER_QUEUE_URL": queue_url,
        "DATASET_FORWARDER_DEPLOYMENT": deployment,
        "DATASET_FORWARDER_SPOOL_DIR": str(spool_dir),
    }
    env.update(more)
    return env


def apply_env(base: Mapping[str, str], changes: Mapping[str, str | None]) -> dict[str, str]:
    merged = dict(base)
    for key, value in changes.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


@contextlib.contextmanager
def env_changed(deployment: AirflowDeployment, **changes: str | None) -> Iterator[None]:
    """Run CLI commands or start processes of `deployment` with some variables changed (None: unset)."""
    saved = deployment.env
    deployment.env = apply_env(saved, changes)
    try:
        yield
    finally:
        deployment.env = saved


# --------------------------------------------------------------------------------------------------- dags test


@dataclass(frozen=True)
class DagsTest:
    done: subprocess.CompletedProcess[str]
    elapsed_s: float

    @property
    def output(self) -> str:
        return self.done.stdout + self.done.stderr

    @property
    def run_state(self) -> str | None:
        """The DAG run's final state as `airflow dags test` logs it ("success", "failed"), None if not logged."""
        found = re.findall(r"DagRun Finished: dag_id=\w+, .*?state=(\w+)", self.output)
        return found[-1] if found else None

    def tail(self, chars: int = 6000) -> str:
        return f"exit {self.done.returncode} after {self.elapsed_s:.1f} s\n{self.output[-chars:]}"


def dags_test(deployment: AirflowDeployment, dag_id: str, **changes: str | None) -> DagsTest:
    with env_changed(deployment, **changes):
        started = time.monotonic()
        done = deployment.dags_test(dag_id, timeout_s=180)
        return DagsTest(done, time.monotonic() - started)


_AF2_LOG_TIME = r"\[(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d{4})\]"


def af2_success_hook_s(output: str, task_id: str) -> float:
    """Airflow 2 `dags test`: seconds between "Marking task as SUCCESS" and "[DAG TEST] end task" of `task_id`.

    `on_task_instance_success` runs between these two lines (TI saved -> listeners -> commit -> end task), so the gap
    is the listener's cost plus a few ms of Airflow's own work: a clock for the hook that machine load barely moves.
    """
    marked = re.findall(
        _AF2_LOG_TIME + r" \{taskinstance\.py:\d+\} INFO - Marking task as SUCCESS\. dag_id=\w+, "
        rf"task_id={re.escape(task_id)},",
        output,
    )
    ended = re.findall(
        _AF2_LOG_TIME + rf" \{{dag\.py:\d+\}} INFO - \[DAG TEST\] end task task_id={re.escape(task_id)} ", output
    )
    if len(marked) != 1 or len(ended) != 1:
        raise AssertionError(f"expected one success and one end line for {task_id}, got {marked} / {ended}")
    fmt = "%Y-%m-%dT%H:%M:%S.%f%z"
    return (datetime.strptime(ended[0], fmt) - datetime.strptime(marked[0], fmt)).total_seconds()


# --------------------------------------------------------------------------------------------------- unreachable SQS


@contextlib.contextmanager
def closed_port() -> Iterator[str]:
    """An http://127.0.0.1:PORT URL that refuses connections (bound, never listening: no one else gets the port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def hanging_endpoint() -> Iterator[str]:
    """An http://127.0.0.1:PORT URL that accepts TCP connections (kernel backlog) and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# --------------------------------------------------------------------------------------------------- spool


def spooled(spool_dir: Path) -> list[dict[str, Any]]:
    """Envelopes waiting in the spool (top level; not in flight, not rejected)."""
    if not spool_dir.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(spool_dir.glob("*.json")) if not p.name.startswith(".")]


def spool_leftovers(spool_dir: Path) -> list[str]:
    """Every envelope file anywhere under the spool: waiting, in flight or rejected."""
    if not spool_dir.is_dir():
        return []
    return sorted(str(p.relative_to(spool_dir)) for p in spool_dir.rglob("*.json"))


def plugins_json(output: str) -> list[dict[str, Any]]:
    """The JSON list printed by `airflow plugins -o json` (log lines may surround it)."""
    for line in output.splitlines():
        if line.startswith("[{") or line.strip() == "[]":
            plugins: list[dict[str, Any]] = json.loads(line)
            return plugins
    raise AssertionError(f"no JSON plugin list in:\n{output[-3000:]}")
