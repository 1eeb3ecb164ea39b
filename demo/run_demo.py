#!/usr/bin/env python3
"""`make demo`: an upstream Airflow's task triggers a DAG in a downstream Airflow, through the forwarder, locally.

    upstream team-a (Airflow 3, listener)  ->  local stack (moto: SQS, SSM, DynamoDB from template.yaml;
    poller + the real handler)  ->  downstream team-b (Airflow 3, consumer DAGs scheduled on the datasets)

Steps, one line each: the Airflow venv, the local stack, both deployments, the targets registered with the CLI,
a producer run and its timeline down to the consumer's DAG run; a `trigger_dag` target that starts a DAG with the
event in its conf; then a delivery that fails (team-b has no DAG on the new dataset yet) and ends in the DLQ, the
fix, `dlq redrive`, and the consumer's one run; last, team-a's DAG etl_daily fails and team-b's on-failure DAG
runs (a `trigger_dag` target on its outcome). Exit 1 if anything
did not happen. Everything it starts is stopped at the end; `make demo-down` (`run_demo.py --down`) stops what an
interrupted run left, by the PIDs in its state file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devkit.airflow_env import (
    AirflowDeployment,
    cache_dir,
    ensure_airflow_venv,
    venv_key,
)
from devkit.local_forwarding import (
    EventTrace,
    ForwardedRun,
    LocalStackProcess,
    consumer_dag,
    from_producer_run,
    parse_time,
    producer_dag,
    task_end,
    trigger_run_id,
    triggered_dag,
    wait_for_forwarded_run,
    wait_until,
)
from devkit.paths import listener_extras

AIRFLOW_VERSION = os.environ.get("DEMO_AIRFLOW_VERSION", "3.3.2")
UPSTREAM, DOWNSTREAM = "team-a", "team-b"
BEARS, WOLVES, LAKE = "s3://lake/bears", "s3://lake/wolves", "s3://lake/*"
REPORT, REFRESH_TARGET, REFRESH_DAG = "s3://reports/daily", "team-b-refresh", "refresh_dashboards"
SECRET_VARIABLE = "TEAM_B_PASSWORD"  # noqa: S105 - the name of the variable that holds it
STATE_NAME = "state.json"
FAILING, ON_FAILURE, ONCALL_TARGET = "etl_daily", "on_team_a_failure", f"{DOWNSTREAM}-oncall"
FAILED_OUTCOMES = f"dagrun://{UPSTREAM}/*/failed"
_SIMPLE_DAG = """
from datetime import datetime, timezone

from airflow.sdk import DAG, task

with DAG({dag_id!r}, schedule=None, start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task(retries=0)
    def {task}(**context):
        {body}

    {task}()
"""
FAILING_DAG = _SIMPLE_DAG.format(dag_id=FAILING, task="load", body="raise RuntimeError('the source is not there')")
ON_FAILURE_DAG = _SIMPLE_DAG.format(
    dag_id=ON_FAILURE, task="page", body='print("paging on-call for", context["dag_run"].conf["dataset_forwarder"])'
)


def demo_dir() -> Path:
    return cache_dir() / "demo"


# --------------------------------------------------------------------------------------------------- output


class StepFailed(RuntimeError):
    pass


class Demo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started = time.monotonic()
        self.deployments: list[AirflowDeployment] = []
        self.stack: LocalStackProcess | None = None
        self._details: list[str] = []

    def line(self, status: str, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {status:<4} {text}", flush=True)

    def detail(self, text: str) -> None:
        """Indented lines shown under the current step's line (kept until it is printed)."""
        self._details.extend(text.splitlines())

    @contextlib.contextmanager
    def step(self, doing: str) -> Iterator[Callable[[str], None]]:
        """One step: `done(text)` sets its ok line; an exception prints FAIL and ends the demo."""
        said: list[str] = []
        self._details = []
        try:
            yield said.append
        except Exception as exc:
            self.line("FAIL", f"{doing}: {exc}".splitlines()[0])
            raise StepFailed(f"{doing}: {exc}") from exc
        finally:
            details, self._details = self._details, []
        self.line("ok", said[-1] if said else doing)
        for line in details:
            print(f"{'':16}{line}", flush=True)

    # -- state for `--down`

    def save_state(self) -> None:
        state = {
            "root": str(self.root),
            "process_groups": [p.popen.pid for d in self.deployments for p in d._processes],
            "local_state_dir": str(self.stack.state_dir) if self.stack else None,
        }
        (demo_dir() / STATE_NAME).write_text(json.dumps(state, indent=2))


# --------------------------------------------------------------------------------------------------- cleanup


def _is_airflow(pid: int) -> bool:
    try:
        return b"airflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _groups_working_in(root: Path) -> set[int]:
    """Process groups of the Airflow processes whose working directory is under `root` (a deployment's home)."""
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(root) and _is_airflow(int(entry.name)):
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(int(entry.name)))
    return groups


def stop_leftovers(quiet: bool = False) -> None:
    """Stop what a previous run recorded in the state file: Airflow process groups and the local stack."""
    state_file = demo_dir() / STATE_NAME
    try:
        state = json.loads(state_file.read_text())
    except (FileNotFoundError, ValueError):
        if not quiet:
            print("demo: nothing to stop")
        return
    recorded = {pid for pid in state.get("process_groups", []) if _is_airflow(pid)}
    # a deployment killed while it was still starting may not be recorded yet: its processes work in its home
    groups = sorted(recorded | (_groups_working_in(Path(state["root"])) if state.get("root") else set()))
    groups = [pid for pid in groups if pid > 1 and pid != os.getpgid(0)]
    for pid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while any(_is_airflow(pid) for pid in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    if state.get("local_state_dir"):
        message = LocalStackProcess(Path(state["local_state_dir"])).down()
        if not quiet:
            print(f"demo: {message}")
    if not quiet:
        print(f"demo: stopped {len(groups)} Airflow process group(s)")
    state_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- the demo


def start_deployment(
    demo: Demo, venv: Path, name: str, dags: dict[str, str], env: dict[str, str] | None = None
) -> AirflowDeployment:
    deployment = AirflowDeployment(venv, demo.root / name, name=name, dags=dags)
    deployment.env.update(env or {})
    demo.deployments.append(deployment)
    deployment.migrate()
    deployment.start()
    demo.save_state()
    deployment.wait_healthy(timeout_s=120)
    return deployment


@dataclass
class World:
    stack: LocalStackProcess
    upstream: AirflowDeployment
    downstream: AirflowDeployment


def timeline(demo: Demo, world: World, producer: str, run_id: str, forwarded: ForwardedRun) -> float:
    """Print what happened to one event, relative to the producer task's success; returns the end-to-end latency."""
    trace: EventTrace = world.stack.event_trace(str(forwarded.lineage()["id"]))
    task_done = task_end(world.upstream, producer, run_id)
    downstream_event = next(e for e in forwarded.events if (e.get("extra") or {}).get("producer_run_id") == run_id)
    consumer = forwarded.run
    rows: list[tuple[float | None, str, str]] = [
        (task_done, UPSTREAM, f"task {producer}.produce succeeded (run {run_id})"),
        (trace.sent_at, UPSTREAM, "listener's SendMessage accepted by the events queue (SQS SentTimestamp)"),
        (trace.first_invoked_at, "local", "event source invoked the forwarder with the record"),
        (trace.delivered_at(DOWNSTREAM), "local", f"forwarder delivered the event to target {DOWNSTREAM}"),
        (forwarded.created_at, DOWNSTREAM, f"DAG run {consumer['dag_id']} created ({consumer['dag_run_id']})"),
    ]
    if consumer.get("end_date"):
        rows.append((parse_time(consumer["end_date"]), DOWNSTREAM, f"{consumer['dag_id']} {consumer['state']}"))
    demo.detail(f"timeline of event {trace.event_id} ({downstream_event.get('uri')}):")
    for at, where, what in rows:
        offset = f"{at - task_done:+7.2f} s" if at is not None else "      ? s"
        demo.detail(f"  {offset}  {where:<7} {what}")
    demo.detail(f"extra received by {DOWNSTREAM}: {json.dumps(downstream_event.get('extra'), sort_keys=True)}")
    return forwarded.created_at - task_done


def set_up(demo: Demo) -> World:
    with demo.step("Airflow venv") as done:
        cached = (cache_dir() / venv_key(AIRFLOW_VERSION, listener_extras()) / ".adf-complete.json").exists()
        venv = ensure_airflow_venv(AIRFLOW_VERSION, listener_extras())
        done(f"Airflow {AIRFLOW_VERSION} venv with the listener: {venv} ({'cached' if cached else 'built'})")

    with demo.step("local stack") as done:
        demo.stack = LocalStackProcess(demo.root / "local")
        demo.save_state()
        stack = demo.stack.up()
        info = stack.stack
        done(
            f"local stack up (pid {stack.pid}): moto on {info['endpoint']}, stack {info['stack_name']} from "
            f"template.yaml; event source BatchSize {info['batch_size']}, window {info['batching_window_s']:g} s, "
            f"MaximumConcurrency {info['maximum_concurrency']}"
        )

    with demo.step("Airflow deployments") as done:
        producers = {
            "produce_bears.py": producer_dag(3, "produce_bears", [BEARS]),
            "produce_wolves.py": producer_dag(3, "produce_wolves", [WOLVES]),
            "produce_report.py": producer_dag(3, "produce_report", [REPORT]),
            f"{FAILING}.py": FAILING_DAG,
        }
        consumers = {
            "consume_bears.py": consumer_dag(3, "consume_bears", [BEARS]),
            f"{REFRESH_DAG}.py": triggered_dag(3, REFRESH_DAG),
            f"{ON_FAILURE}.py": ON_FAILURE_DAG,
        }
        # the listener also sends the outcome of every finished etl_daily run (docs/dag-outcomes.md)
        listener = {**stack.upstream_env(UPSTREAM, demo.root / "spool"), "DATASET_FORWARDER_DAG_RUNS": FAILING}
        with ThreadPoolExecutor(2) as pool:
            up = pool.submit(start_deployment, demo, venv, UPSTREAM, producers, listener)
            down = pool.submit(start_deployment, demo, venv, DOWNSTREAM, consumers)
            world = World(stack, up.result(), down.result())
        done(
            f"{UPSTREAM} on {world.upstream.url} (listener -> events queue) and {DOWNSTREAM} on "
            f"{world.downstream.url} (consume_bears scheduled on {BEARS}): api-server + scheduler each"
        )

    with demo.step("register the target") as done:
        downstream = world.downstream
        command = [
            *("targets", "put", DOWNSTREAM, "--url", downstream.url, "--dataset", LAKE),
            *("--auth", "airflow-token", "--username", downstream.user.username),
            *("--token-env", SECRET_VARIABLE, "--allow-http"),
        ]
        stack.cli(*command, env={SECRET_VARIABLE: downstream.user.password})
        checked = json.loads(
            stack.cli("targets", "test", DOWNSTREAM, "--dataset", BEARS, "--allow-http", "--json").stdout
        )
        done(f"dataset-forwarder {' '.join(command).replace(LAKE, repr(LAKE))}")
        demo.detail(f"targets test {DOWNSTREAM}: {_checks(checked)}")

    # registered before the first event: the function caches targets for CONFIG_TTL_S (the template's default)
    with demo.step("register a trigger_dag target") as done:
        command = [
            *("targets", "put", REFRESH_TARGET, "--url", downstream.url, "--dataset", REPORT),
            *("--action", "trigger_dag", "--dag-id", REFRESH_DAG),
            *("--auth", "airflow-token", "--username", downstream.user.username),
            *("--token-env", SECRET_VARIABLE, "--allow-http"),
        ]
        stack.cli(*command, env={SECRET_VARIABLE: downstream.user.password})
        done(f"dataset-forwarder {' '.join(command)}")

    with demo.step("register the on-failure target") as done:
        command = [
            *("targets", "put", ONCALL_TARGET, "--url", downstream.url, "--dataset", FAILED_OUTCOMES),
            *("--action", "trigger_dag", "--dag-id", ON_FAILURE),
            *("--auth", "airflow-token", "--username", downstream.user.username),
            *("--token-env", SECRET_VARIABLE, "--allow-http"),
        ]
        stack.cli(*command, env={SECRET_VARIABLE: downstream.user.password})
        done(f"dataset-forwarder {' '.join(command).replace(FAILED_OUTCOMES, repr(FAILED_OUTCOMES))}")
    return world


def happy_path(demo: Demo, world: World) -> None:
    upstream, downstream = world.upstream, world.downstream
    with demo.step("producer run") as done:
        run_id = upstream.trigger_dag("produce_bears")["dag_run_id"]
        upstream.wait_for_dag_run("produce_bears", where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
        done(f"triggered produce_bears on {UPSTREAM}: run {run_id} succeeded")

    with demo.step("downstream DAG run") as done:
        forwarded = wait_for_forwarded_run(downstream, "consume_bears", from_producer_run(run_id), timeout_s=90)
        downstream.wait_for_dag_run("consume_bears", where=lambda r: r["dag_run_id"] == forwarded.run_id)
        forwarded = wait_for_forwarded_run(downstream, "consume_bears", from_producer_run(run_id))
        lineage = forwarded.lineage(BEARS)
        if lineage.get("trail") != [UPSTREAM] or (lineage.get("source") or {}).get("run_id") != run_id:
            raise StepFailed(f"no dataset_forwarder lineage in what {DOWNSTREAM} received: {forwarded.events}")
        latency = timeline(demo, world, "produce_bears", run_id, forwarded)
        done(
            f"{DOWNSTREAM} ran consume_bears, triggered by the forwarded event; "
            f"producer task success -> downstream DAG run created: {latency:.2f} s"
        )

    with demo.step("second producer run") as done:
        # the first event paid for cold starts: the listener's SQS client in team-a's api-server, the forwarder's
        # AWS clients, API version probe, JWT and asset lookup; the next one finds them warm
        run_id = upstream.trigger_dag("produce_bears")["dag_run_id"]
        upstream.wait_for_dag_run("produce_bears", where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
        again = wait_for_forwarded_run(downstream, "consume_bears", from_producer_run(run_id), timeout_s=90)
        task_done = task_end(upstream, "produce_bears", run_id)
        trace = world.stack.event_trace(str(again.lineage()["id"]))
        steps = [
            ("on the queue", trace.sent_at),
            ("delivered", trace.delivered_at(DOWNSTREAM)),
            ("DAG run created", again.created_at),
        ]
        shown = ", ".join(f"{what} +{at - task_done:.2f} s" for what, at in steps if at is not None)
        done(f"produce_bears again, everything warm: task success -> {shown}")


def trigger_path(demo: Demo, world: World) -> None:
    upstream, downstream = world.upstream, world.downstream
    with demo.step("triggered DAG run") as done:
        run_id = upstream.trigger_dag("produce_report")["dag_run_id"]
        upstream.wait_for_dag_run("produce_report", where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)

        def started() -> list[dict[str, Any]]:
            return [
                r
                for r in downstream.dag_runs(REFRESH_DAG)
                if ((r.get("conf") or {}).get("dataset_forwarder") or {}).get("source", {}).get("run_id") == run_id
            ]

        [run] = wait_until(started, f"a run of {REFRESH_DAG} on {DOWNSTREAM}", timeout_s=60, interval_s=0.1)
        downstream.wait_for_dag_run(REFRESH_DAG, where=lambda r: r["dag_run_id"] == run["dag_run_id"])
        event = run["conf"]["dataset_forwarder"]
        if run["dag_run_id"] != trigger_run_id(event["id"]) or event["trail"] != [UPSTREAM]:
            raise StepFailed(f"{REFRESH_DAG} ran without the forwarded event: {run}")
        created = parse_time(run.get("queued_at"))
        latency = f"{created - task_end(upstream, 'produce_report', run_id):.2f} s" if created else "?"
        done(
            f"produce_report ran on {UPSTREAM}; {DOWNSTREAM} ran {REFRESH_DAG} (run {run['dag_run_id']}), its task "
            f"read the event from dag_run.conf; producer task success -> DAG run created: {latency}"
        )
        shown = {k: event[k] for k in ("id", "uri", "extra", "trail")}
        demo.detail(f'dag_run.conf["dataset_forwarder"]: {json.dumps(shown, sort_keys=True)}')


def failing_path(demo: Demo, world: World) -> None:
    stack, upstream, downstream = world.stack, world.upstream, world.downstream
    print("a delivery that fails, and its replay:", flush=True)
    with demo.step("failing delivery") as done:
        run_id = upstream.trigger_dag("produce_wolves")["dag_run_id"]
        upstream.wait_for_dag_run("produce_wolves", where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
        letters = wait_until(
            lambda: stack.dead_letters(target=DOWNSTREAM), "a dead letter for team-b", timeout_s=60, interval_s=0.5
        )
        [letter] = letters
        done(
            f"produce_wolves ran on {UPSTREAM}; {WOLVES} matches {DOWNSTREAM}'s {LAKE!r} but no DAG there uses it: "
            f"dead letter {letter['target']}/{letter['error']} after {letter['attempts']} attempt(s)"
        )
        demo.detail(
            f"$ dataset-forwarder dlq list  ->  {letter['target']}  {letter['error']}  {letter['uri']}  "
            f"event {letter['event_id']}: {letter['detail']}"
        )

    with demo.step("fix downstream") as done:
        (downstream.dags_folder / "consume_wolves.py").write_text(consumer_dag(3, "consume_wolves", [WOLVES]))
        downstream.airflow("dags", "reserialize")
        wait_until(lambda: downstream.find_asset(WOLVES), f"{WOLVES} known to {DOWNSTREAM}", timeout_s=30)
        done(f"{DOWNSTREAM} deploys consume_wolves, scheduled on {WOLVES}")

    with demo.step("redrive") as done:
        output = stack.cli("dlq", "redrive", "--target", DOWNSTREAM).stdout.strip().splitlines()
        done(f"dataset-forwarder dlq redrive --target {DOWNSTREAM}: {output[-1] if output else 'done'}")

    with demo.step("replayed delivery") as done:
        replayed = wait_for_forwarded_run(downstream, "consume_wolves", from_producer_run(run_id), timeout_s=90)
        downstream.wait_for_dag_run("consume_wolves", where=lambda r: r["dag_run_id"] == replayed.run_id)
        time.sleep(2)  # a second run would show up by now
        runs = downstream.dag_runs("consume_wolves")
        left = stack.dead_letters()
        bears = downstream.dag_runs("consume_bears")
        if len(bears) != 2:
            raise StepFailed(f"consume_bears ran {len(bears)} times for 2 events")
        if len(runs) != 1 or left:
            raise StepFailed(f"expected one consume_wolves run and an empty DLQ, got {len(runs)} run(s), {left}")
        done(f"{DOWNSTREAM} ran consume_wolves once, triggered by the replayed event; the DLQ is empty")


def dag_outcome_path(demo: Demo, world: World) -> None:
    upstream, downstream = world.upstream, world.downstream
    print(f"{UPSTREAM}'s DAG fails, {DOWNSTREAM}'s on-failure DAG runs:", flush=True)
    with demo.step("failing DAG") as done:
        run_id = upstream.trigger_dag(FAILING)["dag_run_id"]
        upstream.wait_for_dag_run(FAILING, state="failed", where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
        done(
            f"{FAILING} failed on {UPSTREAM} (run {run_id}): its outcome goes out as dagrun://{UPSTREAM}/{FAILING}/failed"
        )

    with demo.step("on-failure DAG run") as done:

        def triggered() -> dict[str, Any] | None:
            runs = downstream.dag_runs(ON_FAILURE)
            forwarded = [r for r in runs if (r.get("conf") or {}).get("dataset_forwarder", {}).get("extra")]
            return next((r for r in forwarded if r["conf"]["dataset_forwarder"]["extra"].get("run_id") == run_id), None)

        oncall = wait_until(triggered, f"a run of {ON_FAILURE} for {run_id}", timeout_s=90, interval_s=0.5)
        downstream.wait_for_dag_run(ON_FAILURE, where=lambda r: r["dag_run_id"] == oncall["dag_run_id"])
        outcome = oncall["conf"]["dataset_forwarder"]
        done(f"{DOWNSTREAM} ran {ON_FAILURE} ({oncall['dag_run_id']}), started by target {ONCALL_TARGET}")
        demo.detail(f'dag_run.conf["dataset_forwarder"]: uri {outcome["uri"]}, extra {json.dumps(outcome["extra"])}')


def run(demo: Demo) -> None:
    print(
        f"airflow-dataset-forwarder demo: {UPSTREAM} (Airflow {AIRFLOW_VERSION}) -> local stack from template.yaml "
        f"-> {DOWNSTREAM} (Airflow {AIRFLOW_VERSION})",
        flush=True,
    )
    world = set_up(demo)
    happy_path(demo, world)
    trigger_path(demo, world)
    failing_path(demo, world)
    dag_outcome_path(demo, world)


def _checks(report: dict[str, Any]) -> str:
    return "; ".join(f"{c['detail']}" + ("" if c["ok"] else " FAILED") for c in report.get("checks", []))


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def cleanup(demo: Demo, keep: bool) -> None:
    with ThreadPoolExecutor(max(1, len(demo.deployments))) as pool:
        for deployment in demo.deployments:
            pool.submit(deployment.stop)
    if demo.stack is not None:
        with contextlib.suppress(Exception):
            demo.stack.down()
    (demo_dir() / STATE_NAME).unlink(missing_ok=True)
    if not keep:
        shutil.rmtree(demo.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", action="store_true", help="stop what an interrupted demo left running")
    parser.add_argument("--keep", action="store_true", help="keep the deployments' homes and logs afterwards")
    args = parser.parse_args(argv)
    demo_dir().mkdir(parents=True, exist_ok=True)
    if args.down:
        stop_leftovers()
        return 0
    stop_leftovers(quiet=True)
    for old in demo_dir().glob("run-*"):
        shutil.rmtree(old, ignore_errors=True)
    root = demo_dir() / f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}"
    root.mkdir(parents=True)
    demo = Demo(root)
    signal.signal(signal.SIGTERM, _interrupt)
    failed = False
    try:
        run(demo)
    except StepFailed as exc:
        failed = True
        cause = exc.__cause__
        if cause is not None and not isinstance(cause, StepFailed | TimeoutError):
            traceback.print_exception(cause, file=sys.stderr)
        for deployment in demo.deployments:
            print(deployment.logs(30), file=sys.stderr)
        if demo.stack is not None:
            print(demo.stack.log_tail(30), file=sys.stderr)
    except KeyboardInterrupt:
        demo.line("stop", "interrupted")
        failed = True
    finally:
        keep = args.keep or failed
        with demo.step("clean up") as done:
            cleanup(demo, keep)
            done(
                "stopped both Airflow deployments and the local stack"
                + (f"; homes and logs kept in {root}" if keep else "")
            )
    print(f"demo {'FAILED' if failed else 'passed'} in {time.monotonic() - demo.started:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
