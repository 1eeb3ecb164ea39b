"""End-to-end latency of a forwarded event, run after run, and where the time goes.

    VENV/bin/python bench/e2e_latency.py [--quick] [--out FILE] [--runs N] [--trigger-runs N] [--no-trigger-dag]
                                         [--no-dag-run] [--no-asset-watcher]

Everything is real and on 127.0.0.1: one local stack (`dataset-forwarder local up`: moto server with the resources of
template.yaml, the Lambda-like event source long-polling the queue and running the real handler), one upstream
Airflow 3.3.2 with the listener installed (the cached venv of tests/e2e) and one downstream Airflow 3.3.2 whose
consumer DAG is scheduled on the asset; the target is registered with the CLI. The producer DAG is triggered N times
one after the other, each downstream run awaited (and finished) before the next trigger so that events never merge
into one run. A warm-up run first pays the cold starts (the listener's SQS client in the api-server, the handler's
clients, version probe, JWT and asset lookup); it is reported apart and left out of the percentiles.

Per run, each step's time is read where that step is recorded, never by watching from outside:
  task end_date                 upstream REST (the task instance)
  upstream asset event          upstream REST (`timestamp` of the event the producer run emitted; the hook runs then)
  on the queue                  SQS SentTimestamp, from the event source's invocation line in the stack's log
  handler invoked               the same line (`started_at`, when the batch was handed to the function)
  downstream asset event        downstream REST (`timestamp` of the event the forwarder's POST created)
  `delivered`                   the handler's log line (after the POST answered and the ledger recorded it)
  envelope emitted_at           the same line (the listener's clock when its hook built the envelope): cuts the
                                listener segment into Airflow's part before the hook and the send
  DAG run created               downstream REST (`queued_at` of the consumer run)
The segments between consecutive path steps add up to the total; `delivered` happens off that path (the scheduler
does not wait for the POST's answer to reach the handler), so it is shown aside.

Target kinds (unless --no-trigger-dag), side by side with that asset-event row, measured after it: two more producers
upstream, each matched by a `trigger_dag` target of its own that starts a DAG (schedule None) downstream, one over
HTTPS (JWT, like the asset-event target), one through the local stack's MWAA emulator (the handler's boto3 `mwaa`
client, SigV4, `InvokeRestApi` relayed to the same downstream). There the API call itself creates the run: the path
ends at its `queued_at` (set inside the POST), with no downstream scheduler loop; the segment `handler_and_api` is
handler invoked -> run created. Each run is found by the producer run id in its conf, and awaited until it succeeded.

DAG outcome (unless --no-dag-run): the upstream listener has DATASET_FORWARDER_DAG_RUNS set to one more upstream DAG
(its task has no outlets); each of its runs succeeding is forwarded as a `dag_run` event under
dagrun://bench-up/finish_latency/success, which a `trigger_dag` target of its own (over HTTPS) turns into a downstream
run. The path starts at that upstream run's end_date (REST): upstream run end_date -> SentTimestamp (`listener`: the
hook in the scheduler, spool, sender) -> handler invoked (`queue_wait`) -> downstream run queued_at
(`handler_and_api`); task end_date -> run end_date (the upstream scheduler finishing the run) is shown aside.

Baseline (unless --no-asset-watcher): Airflow 3's own event-driven scheduling. A second downstream Airflow 3.3.2
(its own cached venv with the amazon and common-messaging providers) schedules its consumer on an Asset with an
AssetWatcher on an SQS `MessageQueueTrigger` at its default poll interval, against a queue in the same moto server
(AWS_ENDPOINT_URL); the upstream listener is pointed at that queue. The trigger sleeps between polls, so a run's
latency depends on where in the sleep its event lands: before each baseline run a random delay (seeded) spreads the
events over the poll cycle instead of phase-locking them to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3

REPO_ROOT = Path(__file__).resolve().parents[1]

from harness import REGION, aws_environment  # noqa: E402 - bench/ is this script's directory

from dataset_forwarder_cli.local.poller import LAMBDA_LONG_POLL_S  # noqa: E402
from devkit.airflow_env import AirflowDeployment, AirflowError, ensure_airflow_venv, poll  # noqa: E402
from devkit.local_forwarding import (  # noqa: E402
    EventTrace,
    ForwardedRun,
    LocalStackProcess,
    consumer_dag,
    mwaa_spec,
    parse_time,
    produced_events,
    producer_dag,
    task_end,
    trigger_run_id,
    triggered_dag,
)
from devkit.paths import listener_extras  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "e2e_latency_runs.json"
AIRFLOW_VERSION = "3.3.2"
# The baseline's providers, pinned (the versions on the registry when this was written); aiobotocore for the trigger.
WATCHER_PROVIDERS = (
    "apache-airflow-providers-amazon[aiobotocore]==9.39.0",
    "apache-airflow-providers-common-messaging==2.1.2",
)
UPSTREAM, DOWNSTREAM, WATCHER = "bench-up", "bench-down", "bench-watcher"
URI = "s3://bench/e2e-latency"
PRODUCER, CONSUMER, WATCHER_CONSUMER = "produce_latency", "consume_latency", "consume_from_queue"
WATCHER_QUEUE = "bench-asset-watcher"
GOAL_P50_S = 3.0
SANE_TOTAL_S = 60.0  # a forwarded run slower than this is a broken setup, not a measurement
CLOCK_SLACK_S = 0.005  # SentTimestamp and Powertools' log times have millisecond resolution; Airflow's microseconds
SIZES = {
    "full": {"runs": 20, "trigger_runs": 20, "watcher_runs": 20},
    "quick": {"runs": 3, "trigger_runs": 2, "watcher_runs": 2},
}
FLOOR_URI = "s3://bench/e2e-latency/floor"  # downstream: an asset no DAG consumes (its owner DAG never runs)
FLOOR_ASSET_DAG, FLOOR_TRIGGERED_DAG = "floor_asset_owner", "floor_triggered"  # downstream, for the floors only
FLOOR_QUEUE, FLOOR_TABLE = "bench-floor", "bench-floor"  # in the stack's moto server, beside the stack's own
MWAA_ENVIRONMENT = "bench-mwaa"  # the local stack's MWAA emulator, relaying to the downstream
DOWNSTREAM_PASSWORD_VARIABLE = "BENCH_DOWN_PASSWORD"  # noqa: S105 - a variable name, not a password


@dataclass(frozen=True)
class TriggerPath:
    """A `trigger_dag` target of its own: a producer upstream whose event only it matches, and the DAG it starts."""

    key: str  # the result's section
    label: str
    target: str
    producer: str
    uri: str
    dag_id: str
    mwaa: bool  # through the MWAA emulator's InvokeRestApi (IAM, SigV4) instead of HTTPS + JWT
    dag_run: bool = False  # the event is the producer run's outcome (`dag_run`, dagrun:// URI), not an asset event


TRIGGER_PATHS = (
    TriggerPath("trigger_dag", "trigger_dag over HTTPS (JWT)", "bench-trigger", "produce_trigger",
                "s3://bench/e2e-latency/trigger", "triggered_latency", mwaa=False),
    TriggerPath("mwaa_trigger_dag", "trigger_dag through the MWAA emulator (InvokeRestApi)", "bench-mwaa-trigger",
                "produce_mwaa", "s3://bench/e2e-latency/mwaa", "triggered_mwaa", mwaa=True),
)  # fmt: skip
OUTCOME_DAG = "finish_latency"  # upstream, named in DATASET_FORWARDER_DAG_RUNS; its task has no outlets
DAG_RUN_PATH = TriggerPath("dag_run", "dag_run outcome (dagrun:// URI), trigger_dag over HTTPS (JWT)", "bench-dagrun",
                           OUTCOME_DAG, f"dagrun://{UPSTREAM}/{OUTCOME_DAG}/success", "triggered_by_outcome",
                           mwaa=False, dag_run=True)  # fmt: skip

WATCHER_DAG = """
from datetime import datetime, timezone

from airflow.providers.common.messaging.triggers.msg_queue import MessageQueueTrigger
from airflow.sdk import DAG, Asset, AssetWatcher, task

trigger = MessageQueueTrigger(scheme="sqs", sqs_queue={queue!r}{interval})
watched = Asset({uri!r}, watchers=[AssetWatcher(name="bench_sqs_watcher", trigger=trigger)])

with DAG({dag_id!r}, schedule=[watched], start_date=datetime(2024, 1, 1, tzinfo=timezone.utc), catchup=False):
    @task
    def consume():
        return 1

    consume()
"""


# =================================================================================================== timelines


@dataclass(frozen=True)
class Segment:
    name: str
    label: str
    start: str  # Timeline field
    end: str


@dataclass
class Timeline:
    """When each step of one event happened (epoch seconds), each read where the step is recorded."""

    producer_run_id: str
    consumer_run_id: str
    task_end: float
    upstream_event: float | None  # none for dag_run: the run's outcome is the event, no asset event upstream
    downstream_event: float | None  # none for trigger_dag: the API call creates the run itself
    run_created: float
    on_queue: float | None = None  # SQS SentTimestamp
    emitted: float | None = None  # the envelope's emitted_at (listener's clock, before SendMessage)
    invoked: float | None = None
    delivered: float | None = None
    event_id: str | None = None
    delivery_ms: float | None = None  # the handler's own timing of the delivery (`latency_ms` of `delivered`)
    receive_count: int | None = None
    events_in_run: int = 1
    copies: int = 1  # SQS messages that carried this event (the listener sends again when a send's answer is late)
    run_end: float | None = None  # dag_run: the upstream DAG run's end_date (when its outcome was decided)

    def seconds(self, segment: Segment) -> float | None:
        start, end = getattr(self, segment.start), getattr(self, segment.end)
        return None if start is None or end is None else end - start

    def to_json(self, segments: tuple[Segment, ...]) -> dict[str, Any]:
        values = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        values["segments_s"] = {s.name: _round(self.seconds(s)) for s in segments}
        return values


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


TOTAL = Segment("total", "task end_date -> DAG run queued_at", "task_end", "run_created")
FORWARDER_PATH = (
    Segment("upstream_airflow", "task end_date -> upstream asset event (Airflow records it, calls the hook)",
            "task_end", "upstream_event"),
    Segment("listener", "upstream asset event -> SQS SentTimestamp (hook, spool, sender, SendMessage)",
            "upstream_event", "on_queue"),
    Segment("queue_wait", "SentTimestamp -> handler invoked (long poll returns, batch handed over)",
            "on_queue", "invoked"),
    Segment("handler", "handler invoked -> downstream asset event (routing, ledger, downstream API)",
            "invoked", "downstream_event"),
    Segment("downstream_scheduler", "downstream asset event -> DAG run queued_at", "downstream_event", "run_created"),
)  # fmt: skip
LISTENER_SPLIT = (
    Segment("listener_emitted", "upstream asset event -> envelope emitted_at (Airflow commits, calls the hook)",
            "upstream_event", "emitted"),
    Segment("listener_send", "envelope emitted_at -> SQS SentTimestamp (spool, sender thread, SendMessage)",
            "emitted", "on_queue"),
)  # fmt: skip
FORWARDER_ASIDE = (
    *LISTENER_SPLIT,
    Segment("handler_until_delivered", "handler invoked -> `delivered` logged (incl. downstream API)",
            "invoked", "delivered"),
    Segment("downstream_api_answer", "downstream asset event -> `delivered` logged (POST answer, ledger)",
            "downstream_event", "delivered"),
)  # fmt: skip
WATCHER_PATH = (
    FORWARDER_PATH[0],
    Segment("queue_and_trigger", "upstream asset event -> downstream asset event (listener, SQS, trigger poll)",
            "upstream_event", "downstream_event"),
    FORWARDER_PATH[-1],
)  # fmt: skip
WATCHER_ASIDE = (LISTENER_SPLIT[0],)


TRIGGER_PATH_SEGMENTS = (
    FORWARDER_PATH[0],
    FORWARDER_PATH[1],
    FORWARDER_PATH[2],
    Segment("handler_and_api", "handler invoked -> DAG run queued_at (routing, ledger, POST dagRuns creates the run)",
            "invoked", "run_created"),
)  # fmt: skip
TRIGGER_ASIDE = (
    *LISTENER_SPLIT,
    FORWARDER_ASIDE[2],
    Segment("downstream_api_answer", "DAG run queued_at -> `delivered` logged (rest of the POST, its answer, ledger)",
            "run_created", "delivered"),
)  # fmt: skip

DAG_RUN_TOTAL = Segment("total", "upstream DAG run end_date -> downstream DAG run queued_at", "run_end", "run_created")
DAG_RUN_SEGMENTS = (
    Segment("listener", "upstream DAG run end_date -> SQS SentTimestamp (hook in the scheduler, spool, sender, "
            "SendMessage)", "run_end", "on_queue"),
    FORWARDER_PATH[2],
    TRIGGER_PATH_SEGMENTS[-1],
)  # fmt: skip
DAG_RUN_ASIDE = (
    Segment("upstream_scheduler", "task end_date -> upstream DAG run end_date (the scheduler finishes the run)",
            "task_end", "run_end"),
    Segment("listener_emitted", "upstream DAG run end_date -> envelope emitted_at (Airflow commits, calls the hook)",
            "run_end", "emitted"),
    *TRIGGER_ASIDE[1:],
)  # fmt: skip


def path_segments(path: TriggerPath) -> tuple[tuple[Segment, ...], Segment, tuple[Segment, ...]]:
    """(the segments adding up to the total, the total, the asides) of a `trigger_dag` row."""
    if path.dag_run:
        return DAG_RUN_SEGMENTS, DAG_RUN_TOTAL, DAG_RUN_ASIDE
    return TRIGGER_PATH_SEGMENTS, TOTAL, TRIGGER_ASIDE


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def stats(values: list[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_s": round(percentile(values, 0.50), digits),
        "p95_s": round(percentile(values, 0.95), digits),
        "min_s": round(min(values), digits),
        "max_s": round(max(values), digits),
        "mean_s": round(statistics.fmean(values), digits),
    }


def summarise(
    timelines: list[Timeline], path: tuple[Segment, ...], aside: tuple[Segment, ...], total: Segment = TOTAL
) -> dict[str, Any]:
    out = {}
    for segment, role in [*((s, "path") for s in path), (total, "total"), *((s, "aside") for s in aside)]:
        values = [v for t in timelines if (v := t.seconds(segment)) is not None]
        out[segment.name] = {"what": segment.label, "role": role, **stats(values)}
    return out


# =================================================================================================== the world


@dataclass
class World:
    stack: LocalStackProcess
    upstream: AirflowDeployment
    downstream: AirflowDeployment
    started: list[AirflowDeployment]  # every deployment ever started, all stopped at the end

    def logs(self) -> str:
        return f"{self.upstream.logs(30)}\n{self.downstream.logs(30)}\n{self.stack.log_tail(30)}"


def say(text: str) -> None:
    print(f"[e2e_latency {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def start_world(root: Path, cleanup: contextlib.ExitStack, paths: tuple[TriggerPath, ...] = ()) -> World:
    """The local stack, the upstream (listener) and the downstream (consumer) Airflow, and the targets.

    With `paths`, the upstream also has their producers, the downstream their DAGs, and the stack's MWAA emulator
    relays `MWAA_ENVIRONMENT` to the downstream.
    """
    venv = ensure_airflow_venv(AIRFLOW_VERSION, listener_extras())
    producers = {PRODUCER: [URI]} | {path.producer: [] if path.dag_run else [path.uri] for path in paths}
    upstream = AirflowDeployment(
        venv,
        root / "upstream",
        name=UPSTREAM,
        dags={f"{dag_id}.py": producer_dag(3, dag_id, uris) for dag_id, uris in producers.items()},
    )
    downstream = AirflowDeployment(
        venv,
        root / "downstream",
        name=DOWNSTREAM,
        dags={f"{CONSUMER}.py": consumer_dag(3, CONSUMER, [URI])}
        | {f"{path.dag_id}.py": triggered_dag(3, path.dag_id) for path in paths}
        | {
            f"{FLOOR_ASSET_DAG}.py": producer_dag(3, FLOOR_ASSET_DAG, [FLOOR_URI]),
            f"{FLOOR_TRIGGERED_DAG}.py": triggered_dag(3, FLOOR_TRIGGERED_DAG),
        },
    )
    mwaa = any(path.mwaa for path in paths)
    stack = LocalStackProcess(
        root / "local",
        parameters={"MwaaEnvironments": MWAA_ENVIRONMENT} if mwaa else None,
        mwaa_environments=[mwaa_spec(MWAA_ENVIRONMENT, downstream, DOWNSTREAM_PASSWORD_VARIABLE)] if mwaa else (),
        env={DOWNSTREAM_PASSWORD_VARIABLE: downstream.user.password},
    )
    cleanup.callback(stack.down)
    started_deployments = [upstream, downstream]
    cleanup.callback(stop_all, started_deployments)

    def start_downstream() -> None:
        downstream.migrate()
        downstream.start()
        downstream.wait_healthy(timeout_s=120)

    started = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        jobs: list[Future[Any]] = [pool.submit(stack.up), pool.submit(upstream.migrate), pool.submit(start_downstream)]
        for job in jobs:
            job.result()
    upstream.env.update(stack.upstream_env(UPSTREAM, root / "spool"))
    outcomes = [path.producer for path in paths if path.dag_run]
    if outcomes:
        upstream.env["DATASET_FORWARDER_DAG_RUNS"] = ",".join(outcomes)
    upstream.start()
    upstream.wait_healthy(timeout_s=120)
    stack.put_target(DOWNSTREAM, downstream, [URI])
    for path in paths:
        if path.mwaa:
            stack.put_mwaa_target(path.target, MWAA_ENVIRONMENT, [path.uri], dag_id=path.dag_id)
        else:
            stack.put_target(path.target, downstream, [path.uri], dag_id=path.dag_id)
    say(f"local stack, {UPSTREAM} and {DOWNSTREAM} ready in {time.monotonic() - started:.1f} s")
    return World(stack, upstream, downstream, started_deployments)


def stop_all(deployments: list[AirflowDeployment]) -> None:
    with ThreadPoolExecutor(max(1, len(deployments))) as pool:
        for job in [pool.submit(d.stop) for d in deployments]:
            job.result()


def produce(upstream: AirflowDeployment, dag_id: str = PRODUCER) -> str:
    """Trigger the producer and wait for its run to succeed; its run id."""
    run_id = str(upstream.trigger_dag(dag_id)["dag_run_id"])
    upstream.wait_for_dag_run(dag_id, where=lambda r: r["dag_run_id"] == run_id, timeout_s=120)
    return run_id


def next_run(
    deployment: AirflowDeployment,
    dag_id: str,
    seen: set[str],
    carries: Callable[[dict[str, Any]], bool],
    *,
    timeout_s: float,
    diagnose: Callable[[], str],
    strays: list[ForwardedRun] | None = None,
) -> ForwardedRun:
    """The next new run of `dag_id`, which must have been triggered by an event that `carries` recognises.

    Lists runs only (cheap) while waiting; reads a new run's triggering events once. Every new run is accounted for:
    one that does not carry the expected event goes to `strays` if given (the caller judges it), else ends the
    benchmark (the forwarder delivers each event once, so such a run means events merged or were duplicated).
    """

    def check() -> ForwardedRun | None:
        for run in deployment.dag_runs(dag_id):
            run_id = str(run["dag_run_id"])
            if run_id in seen:
                continue
            forwarded = ForwardedRun(dict(run), deployment.upstream_events(dag_id, run_id))
            seen.add(run_id)
            if any(carries(event) for event in forwarded.events):
                return forwarded
            if strays is None:
                raise AirflowError(f"[{deployment.name}] unexpected run {run_id} of {dag_id}: {forwarded.events}")
            strays.append(forwarded)
        return None

    found: ForwardedRun = poll(
        check, timeout_s=timeout_s, what=f"[{deployment.name}] a new run of {dag_id}", diagnose=diagnose
    )
    return found


def _upstream_event_time(upstream: AirflowDeployment, run_id: str, dag_id: str = PRODUCER, uri: str = URI) -> float:
    events = [e for e in produced_events(upstream, dag_id, run_id) if e.get("uri") == uri]
    if len(events) != 1:
        raise AirflowError(f"[{upstream.name}] expected one event of {uri} from {run_id}, got {events}")
    stamp = parse_time(events[0].get("timestamp"))
    assert stamp is not None, events
    return stamp


def _event_time(event: dict[str, Any]) -> float:
    stamp = parse_time(event.get("timestamp"))
    assert stamp is not None, event
    return stamp


def forwarded_once(world: World, seen: set[str]) -> Timeline:
    run_id = produce(world.upstream)
    consumer = next_run(
        world.downstream,
        CONSUMER,
        seen,
        lambda e: (e.get("extra") or {}).get("producer_run_id") == run_id,
        timeout_s=90,
        diagnose=world.logs,
    )
    world.downstream.wait_for_dag_run(CONSUMER, where=lambda r: r["dag_run_id"] == consumer.run_id, timeout_s=120)
    [downstream_event] = [e for e in consumer.events if (e.get("extra") or {}).get("producer_run_id") == run_id]
    event_id = str(consumer.lineage(URI).get("id"))

    def traced() -> EventTrace | None:
        trace = world.stack.event_trace(event_id)
        complete = trace.sent_at and trace.first_invoked_at and trace.delivered_at(DOWNSTREAM)
        return trace if complete else None

    trace: EventTrace = poll(
        traced, timeout_s=30, what=f"the stack's log lines for event {event_id}", diagnose=world.logs
    )
    delivered = trace.lines("delivered", DOWNSTREAM)[0]
    return Timeline(
        producer_run_id=run_id,
        consumer_run_id=consumer.run_id,
        task_end=task_end(world.upstream, PRODUCER, run_id),
        upstream_event=_upstream_event_time(world.upstream, run_id),
        on_queue=trace.sent_at,
        invoked=trace.first_invoked_at,
        downstream_event=_event_time(downstream_event),
        delivered=trace.delivered_at(DOWNSTREAM),
        emitted=parse_time(delivered.get("emitted_at")),
        run_created=consumer.created_at,
        event_id=event_id,
        delivery_ms=delivered.get("latency_ms"),
        receive_count=max((entry.get("receive_count") or 0) for _, entry in trace.received) or None,
        events_in_run=len(consumer.events),
        copies=len({entry.get("message_id") for _, entry in trace.received}),
    )


def measure_forwarder(world: World, runs: int, warmup: int) -> tuple[list[Timeline], list[Timeline]]:
    seen = {str(r["dag_run_id"]) for r in world.downstream.dag_runs(CONSUMER)}
    measured: list[Timeline] = []
    warm: list[Timeline] = []
    for index in range(warmup + runs):
        timeline = forwarded_once(world, seen)
        (warm if index < warmup else measured).append(timeline)
        kind = "warm-up" if index < warmup else f"run {index - warmup + 1}/{runs}"
        say(f"forwarder {kind}: {timeline.seconds(TOTAL):.3f} s")
    return warm, measured


# ======================================================================================= trigger_dag targets


def _conf_event(run: dict[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = (run.get("conf") or {}).get("dataset_forwarder") or {}
    return event


def _run_end(deployment: AirflowDeployment, dag_id: str, run_id: str) -> float:
    """When a finished DAG run ended (epoch seconds), from its deployment's REST API."""
    runs = [r for r in deployment.dag_runs(dag_id) if r["dag_run_id"] == run_id]
    end = parse_time(runs[0].get("end_date")) if runs else None
    if end is None:
        raise AirflowError(f"[{deployment.name}] run {run_id} of {dag_id} has no end_date: {runs}")
    return end


def triggered_once(world: World, path: TriggerPath, seen: set[str]) -> Timeline:
    """One producer run -> the run its `trigger_dag` target starts (found by the producer run id in its conf).

    For the dag_run row the event is the producer run's outcome, sent by the listener's DAG run hook.
    """
    run_id = produce(world.upstream, path.producer)
    downstream = world.downstream

    def started() -> dict[str, Any] | None:
        for run in downstream.dag_runs(path.dag_id):
            if str(run["dag_run_id"]) in seen:
                continue
            if (_conf_event(run).get("source") or {}).get("run_id") != run_id:
                raise AirflowError(f"[{downstream.name}] unexpected run of {path.dag_id}: {run}")
            return run
        return None

    run: dict[str, Any] = poll(
        started, timeout_s=90, what=f"[{downstream.name}] a new run of {path.dag_id}", diagnose=world.logs
    )
    seen.add(str(run["dag_run_id"]))
    downstream.wait_for_dag_run(path.dag_id, where=lambda r: r["dag_run_id"] == run["dag_run_id"], timeout_s=120)
    event_id = str(_conf_event(run).get("id"))
    if run["dag_run_id"] != trigger_run_id(event_id):
        raise AirflowError(f"[{downstream.name}] run id {run['dag_run_id']} is not made from event {event_id}")

    def traced() -> EventTrace | None:
        trace = world.stack.event_trace(event_id)
        complete = trace.sent_at and trace.first_invoked_at and trace.delivered_at(path.target)
        return trace if complete else None

    trace: EventTrace = poll(
        traced, timeout_s=30, what=f"the stack's log lines for event {event_id}", diagnose=world.logs
    )
    delivered = trace.lines("delivered", path.target)[0]
    created = parse_time(run.get("queued_at"))
    assert created is not None, run
    runs_of_event = [r for r in downstream.dag_runs(path.dag_id) if _conf_event(r).get("id") == event_id]
    return Timeline(
        producer_run_id=run_id,
        consumer_run_id=str(run["dag_run_id"]),
        task_end=task_end(world.upstream, path.producer, run_id),
        upstream_event=None if path.dag_run else _upstream_event_time(world.upstream, run_id, path.producer, path.uri),
        run_end=_run_end(world.upstream, path.producer, run_id) if path.dag_run else None,
        on_queue=trace.sent_at,
        invoked=trace.first_invoked_at,
        downstream_event=None,
        delivered=trace.delivered_at(path.target),
        emitted=parse_time(delivered.get("emitted_at")),
        run_created=created,
        event_id=event_id,
        delivery_ms=delivered.get("latency_ms"),
        receive_count=max((entry.get("receive_count") or 0) for _, entry in trace.received) or None,
        events_in_run=len(runs_of_event),  # here: the runs this event started (one)
        copies=len({entry.get("message_id") for _, entry in trace.received}),
    )


def measure_trigger(world: World, path: TriggerPath, runs: int, warmup: int) -> tuple[list[Timeline], list[Timeline]]:
    seen = {str(r["dag_run_id"]) for r in world.downstream.dag_runs(path.dag_id)}
    measured: list[Timeline] = []
    warm: list[Timeline] = []
    for index in range(warmup + runs):
        timeline = triggered_once(world, path, seen)
        (warm if index < warmup else measured).append(timeline)
        kind = "warm-up" if index < warmup else f"run {index - warmup + 1}/{runs}"
        say(f"{path.key} {kind}: {timeline.seconds(path_segments(path)[1]):.3f} s")
    return warm, measured


def trigger_section(world: World, path: TriggerPath, runs: int, warmup: int) -> dict[str, Any]:
    warm, measured = measure_trigger(world, path, runs, warmup)
    steps, total, aside = path_segments(path)
    segments = (*steps, total, *aside)
    return {
        "what": path.label,
        "target": path.target,
        "dag_id": path.dag_id,
        "runs_asked": runs,
        "uri": path.uri,
        "summary": summarise(measured, steps, aside, total),
        "warmup": [t.to_json(segments) for t in warm],
        "runs": [t.to_json(segments) for t in measured],
    }


# =================================================================================================== floors


@dataclass(frozen=True)
class Floor:
    name: str
    label: str


FLOORS = (
    Floor("sqs_send", "SendMessage from a warm client -> SentTimestamp (the least the listener's send can take)"),
    Floor("sqs_long_poll", "SentTimestamp -> a long-polling ReceiveMessage returns it (the least queue_wait can be)"),
    Floor("dynamodb_put", "one conditional PutItem round trip (the ledger's claim before every POST)"),
    Floor("airflow_asset_event", "POST /api/v2/assets/events sent -> the event's timestamp (downstream API alone)"),
    Floor("airflow_trigger_dag", "POST /api/v2/dags/{id}/dagRuns sent -> the run's queued_at (downstream API alone)"),
)
# The product's own share of a row (the segments the listener, the queue and the handler take) and the floors under
# it: what that share would be if our code took no time at all, on this machine, in this run.
SHARE_SEGMENTS = {
    "forwarder": (("listener", "queue_wait", "handler"), ("sqs_send", "sqs_long_poll", "dynamodb_put",
                                                          "airflow_asset_event")),
    "trigger": (("listener", "queue_wait", "handler_and_api"), ("sqs_send", "sqs_long_poll", "dynamodb_put",
                                                                "airflow_trigger_dag")),
}  # fmt: skip


class FloorProbe:
    """Each floor measured directly, with warm clients, against the same moto server and downstream Airflow."""

    def __init__(self, world: World) -> None:
        endpoint = str(world.stack.stack["endpoint"])
        aws = aws_environment(endpoint)
        session = boto3.session.Session(
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
            region_name=REGION,
        )
        self._sqs = session.client("sqs", endpoint_url=endpoint)
        self._receiver = session.client("sqs", endpoint_url=endpoint)
        self._dynamodb = session.client("dynamodb", endpoint_url=endpoint)
        self._queue = str(self._sqs.create_queue(QueueName=FLOOR_QUEUE)["QueueUrl"])
        self._dynamodb.create_table(
            TableName=FLOOR_TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        self._downstream = world.downstream
        asset = world.downstream.find_asset(FLOOR_URI)
        if asset is None:
            raise AirflowError(f"[{DOWNSTREAM}] no asset {FLOOR_URI}: is {FLOOR_ASSET_DAG} parsed?")
        self._asset_id = asset["id"]
        # Paused: its runs stay queued (created, never run), so they load nothing.
        path, paused = f"/api/v2/dags/{FLOOR_TRIGGERED_DAG}", {"is_paused": True}
        world.downstream.api_json("PATCH", path, params={"update_mask": "is_paused"}, json=paused)
        self._sample = 0

    def sqs(self) -> tuple[float, float]:
        """(sqs_send, sqs_long_poll) of one message sent while a ReceiveMessage is already waiting."""
        received: dict[str, Any] = {}
        waiting = threading.Event()

        def receive() -> None:
            waiting.set()
            answer = self._receiver.receive_message(
                QueueUrl=self._queue, WaitTimeSeconds=5, AttributeNames=["SentTimestamp"]
            )
            received["at"] = time.time()
            received["messages"] = answer.get("Messages") or []

        receiver = threading.Thread(target=receive, daemon=True)
        receiver.start()
        waiting.wait(5)
        # Not a synchronisation of the measurement: the receive request must have reached moto before the send,
        # as the event source's long poll always has; this settles it (a send that came first would be faster).
        time.sleep(0.1)
        sent_at = time.time()
        self._sqs.send_message(QueueUrl=self._queue, MessageBody="floor")
        receiver.join(10)
        [message] = received["messages"]
        self._sqs.delete_message(QueueUrl=self._queue, ReceiptHandle=message["ReceiptHandle"])
        on_queue = int(message["Attributes"]["SentTimestamp"]) / 1000
        return on_queue - sent_at, received["at"] - on_queue

    def dynamodb_put(self) -> float:
        self._sample += 1
        started = time.perf_counter()
        self._dynamodb.put_item(
            TableName=FLOOR_TABLE,
            Item={"id": {"S": f"floor#{self._sample}"}, "status": {"S": "INPROGRESS"}},
            ConditionExpression="attribute_not_exists(id)",
        )
        return time.perf_counter() - started

    def airflow_asset_event(self) -> float:
        sent_at = time.time()
        response = self._downstream.api(
            "POST", "/api/v2/assets/events", json={"asset_id": self._asset_id, "extra": {"floor": self._sample}}
        )
        if response.status_code != 200:
            raise AirflowError(f"[{DOWNSTREAM}] floor asset event: {response.status_code} {response.text[:300]}")
        return _event_time(response.json()) - sent_at

    def airflow_trigger_dag(self) -> float:
        sent_at = time.time()
        run = self._downstream.trigger_dag(FLOOR_TRIGGERED_DAG, {"floor": self._sample})
        created = parse_time(run.get("queued_at"))
        assert created is not None, run
        return created - sent_at


def measure_floors(world: World, samples: int) -> dict[str, Any]:
    """`samples` of every floor, taken round by round so that each floor sees the same moments of the run."""
    probe = FloorProbe(world)
    values: dict[str, list[float]] = {floor.name: [] for floor in FLOORS}
    for index in range(samples + 1):  # the first round warms the clients and connections: not counted
        send, long_poll = probe.sqs()
        round_values = {
            "sqs_send": send,
            "sqs_long_poll": long_poll,
            "dynamodb_put": probe.dynamodb_put(),
            "airflow_asset_event": probe.airflow_asset_event(),
            "airflow_trigger_dag": probe.airflow_trigger_dag(),
        }
        if index:
            for name, value in round_values.items():
                values[name].append(value)
    say("floors: " + ", ".join(f"{n} {percentile(v, 0.5) * 1000:.1f} ms" for n, v in values.items()))
    return {floor.name: {"what": floor.label, **stats(values[floor.name], digits=4)} for floor in FLOORS}


def product_share(runs: list[dict[str, Any]], kind: str, floors: dict[str, Any] | None) -> dict[str, Any]:
    """Per run, the sum of the segments our code is in; with the floors, the sum of their p50s beside it."""
    segments, floor_names = SHARE_SEGMENTS[kind]
    sums = [sum(run["segments_s"][name] for name in segments) for run in runs]
    share: dict[str, Any] = {"segments": list(segments), **stats(sums, digits=4)}
    if floors and sums:
        floor_s = sum(floors[name]["p50_s"] for name in floor_names)
        share["floor"] = {"floors": list(floor_names), "p50_sum_s": round(floor_s, 4)}
        share["above_floor_p50_s"] = round(share["p50_s"] - floor_s, 4)
    return share


# =================================================================================================== the baseline


def _create_queue(endpoint: str) -> str:
    aws = aws_environment(endpoint)
    sqs = boto3.client(
        "sqs",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=aws["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"],
    )
    return str(sqs.create_queue(QueueName=WATCHER_QUEUE)["QueueUrl"])


def _payload_envelopes(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The envelopes in a watcher-created asset event: the trigger's message batch, each body an envelope."""
    payload = (event.get("extra") or {}).get("payload") or {}
    envelopes = []
    for message in payload.get("message_batch") or []:
        with contextlib.suppress(ValueError, TypeError):
            envelopes.append(json.loads(message.get("Body") or ""))
    return envelopes


def _from_run(event: dict[str, Any], run_id: str) -> bool:
    return any((e.get("source") or {}).get("run_id") == run_id for e in _payload_envelopes(event))


def start_watcher(world: World, root: Path, poll_interval_s: int | None) -> str:
    """The baseline downstream (AssetWatcher on SQS) and the upstream re-pointed at its queue; its queue URL."""
    venv = ensure_airflow_venv(AIRFLOW_VERSION, WATCHER_PROVIDERS)
    endpoint = str(world.stack.stack["endpoint"])
    queue = _create_queue(endpoint)
    interval = "" if poll_interval_s is None else f", waiter_delay={poll_interval_s}"
    dag = WATCHER_DAG.format(queue=queue, interval=interval, uri=URI, dag_id=WATCHER_CONSUMER)
    watcher = AirflowDeployment(
        venv, root / "watcher", name=WATCHER, dags={f"{WATCHER_CONSUMER}.py": dag}, env=aws_environment(endpoint)
    )
    world.started.append(watcher)
    world.downstream.stop()  # done with it: its CPU is the baseline's now
    world.upstream.stop()
    world.upstream.env["DATASET_FORWARDER_QUEUE_URL"] = queue

    def start_watcher_deployment() -> None:
        watcher.migrate()
        watcher.start(triggerer=True)
        watcher.wait_healthy(timeout_s=120)

    with ThreadPoolExecutor(2) as pool:
        jobs: list[Future[Any]] = [pool.submit(start_watcher_deployment), pool.submit(world.upstream.start)]
        for job in jobs:
            job.result()
    world.upstream.wait_healthy(timeout_s=120)
    world.downstream = watcher
    return queue


def watched_once(world: World, seen: set[str], timeout_s: float, duplicates: list[dict[str, Any]]) -> Timeline:
    """One baseline run; a run triggered only by a late copy of an earlier event is recorded in `duplicates`.

    The trigger has no idempotency: every copy the listener sent (at least once) is a message, and a copy that comes
    in a later poll than the original makes an asset event and a DAG run of its own.
    """
    run_id = produce(world.upstream)
    strays: list[ForwardedRun] = []
    consumer = next_run(
        world.downstream,
        WATCHER_CONSUMER,
        seen,
        lambda e: _from_run(e, run_id),
        timeout_s=timeout_s,
        diagnose=world.logs,
        strays=strays,
    )
    for stray in strays:
        runs = sorted({str((e.get("source") or {}).get("run_id")) for x in stray.events for e in _payload_envelopes(x)})
        if not runs:
            raise AirflowError(f"[{WATCHER}] unexpected run {stray.run_id}: {stray.events}")
        duplicates.append({"consumer_run_id": stray.run_id, "producer_run_ids": runs})
    world.downstream.wait_for_dag_run(
        WATCHER_CONSUMER, where=lambda r: r["dag_run_id"] == consumer.run_id, timeout_s=120
    )
    [event] = [e for e in consumer.events if _from_run(e, run_id)]
    copies = [e for e in _payload_envelopes(event) if (e.get("source") or {}).get("run_id") == run_id]
    envelope = copies[0]
    return Timeline(
        producer_run_id=run_id,
        consumer_run_id=consumer.run_id,
        task_end=task_end(world.upstream, PRODUCER, run_id),
        upstream_event=_upstream_event_time(world.upstream, run_id),
        emitted=parse_time(envelope.get("emitted_at")),
        downstream_event=_event_time(event),
        run_created=consumer.created_at,
        event_id=envelope.get("id"),
        events_in_run=len(consumer.events),
        copies=len(copies),
    )


def measure_watcher(
    world: World, runs: int, warmup: int, poll_interval_s: float, *, seed: int, duplicates: list[dict[str, Any]]
) -> tuple[list[Timeline], list[Timeline]]:
    seen = {str(r["dag_run_id"]) for r in world.downstream.dag_runs(WATCHER_CONSUMER)}
    spread = random.Random(seed)  # noqa: S311 - a sampling offset, not a secret
    measured: list[Timeline] = []
    warm: list[Timeline] = []
    for index in range(warmup + runs):
        if index >= warmup:
            # Not a synchronisation: a deliberate offset, so that events land at uniformly spread points of the
            # trigger's poll cycle instead of all at the same one (runs back to back would phase-lock to it).
            time.sleep(spread.uniform(0, poll_interval_s))
        timeline = watched_once(world, seen, 2 * poll_interval_s + 90, duplicates)
        (warm if index < warmup else measured).append(timeline)
        kind = "warm-up" if index < warmup else f"run {index - warmup + 1}/{runs}"
        say(f"asset watcher {kind}: {timeline.seconds(TOTAL):.3f} s")
    return warm, measured


def trigger_defaults() -> dict[str, Any]:
    """The SQS trigger's defaults, read from the installed provider: the baseline runs with them.

    `waiter_delay` is the sleep between polls, `wait_time_seconds` each poll's SQS long poll.
    """
    venv = ensure_airflow_venv(AIRFLOW_VERSION, WATCHER_PROVIDERS)
    probe = (
        "import inspect, json; from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger as T; "
        "p = inspect.signature(T).parameters; "
        "print(json.dumps({k: p[k].default for k in ('waiter_delay', 'wait_time_seconds', 'max_messages')}))"
    )
    done = subprocess.run(  # noqa: S603 - the cached venv's own interpreter
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    defaults: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return defaults


# =================================================================================================== results


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)  # noqa: S603, S607
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--", "."))}


def check_sane(result: dict[str, Any]) -> list[str]:
    """What makes the numbers unusable: missing steps, negative segments, merged or retried events, absurd totals."""
    problems = _runs_problems(
        result["forwarder"],
        runs_asked=result["settings"]["runs"],
        steps=FORWARDER_PATH,
        label="forwarder",
        run_prefix="",
        merged="{n} events merged into one run",
    )
    for path in (*TRIGGER_PATHS, DAG_RUN_PATH):
        section = result.get(path.key)
        if section is not None:
            problems += _runs_problems(
                section,
                runs_asked=section["runs_asked"],
                steps=path_segments(path)[0],
                label=path.key,
                run_prefix=f"{path.key} ",
                merged="the event started {n} runs",
            )
    floors = result.get("floors") or {}
    if "not_run_reason" not in floors:
        for floor in FLOORS:
            row = floors.get(floor.name) or {}
            if not row.get("n") or row["min_s"] < -CLOCK_SLACK_S:
                problems.append(f"floor {floor.name}: {row}")
    watcher = result.get("asset_watcher") or {}
    if watcher.get("failed"):
        problems.append(f"the asset watcher baseline failed: {watcher['not_run_reason'][:300]}")
    if watcher.get("runs") is not None:
        if len(watcher["runs"]) != watcher["runs_asked"]:
            problems.append(f"{len(watcher['runs'])} asset watcher runs measured, {watcher['runs_asked']} asked for")
        for run in watcher["warmup"] + watcher["runs"]:
            total = run["segments_s"]["total"]
            if total is None or not 0 < total < 2 * watcher["poll_interval_s"] + SANE_TOTAL_S:
                problems.append(f"asset watcher run {run['producer_run_id']}: total {total}")
            if run["events_in_run"] != 1:
                problems.append(f"asset watcher run {run['producer_run_id']}: {run['events_in_run']} events merged")
    return problems


def _runs_problems(
    section: dict[str, Any], *, runs_asked: int, steps: Sequence[Segment], label: str, run_prefix: str, merged: str
) -> list[str]:
    """One measured path's problems: runs missing, a step not timed, a negative segment, segments that do not add
    up, an absurd total, an event in more or fewer than one run (``merged``, with ``{n}``), a retried one."""
    problems = []
    if len(section["runs"]) != runs_asked:
        problems.append(f"{len(section['runs'])} {label} runs measured, {runs_asked} asked for")
    for run in section["warmup"] + section["runs"]:
        name, segments = f"{run_prefix}run {run['producer_run_id']}", run["segments_s"]
        missing = [key for key, value in segments.items() if value is None]
        if missing:
            problems.append(f"{name}: no time for {missing}")
            continue
        times = [segments[step.name] for step in steps]
        if min(times) < -CLOCK_SLACK_S:
            problems.append(f"{name}: a negative segment {segments}")
        if abs(sum(times) - segments["total"]) > 0.002 * len(times):
            problems.append(f"{name}: segments do not add up to the total {segments}")
        if not 0 < segments["total"] < SANE_TOTAL_S:
            problems.append(f"{name}: total {segments['total']} s")
        if run["events_in_run"] != 1:
            problems.append(f"{name}: {merged.format(n=run['events_in_run'])}")
        if run["receive_count"] != 1:
            problems.append(f"{name}: received {run['receive_count']} times (retried)")
    return problems


def _rows(summary: dict[str, Any]) -> list[str]:
    lines = ["| segment | from -> to | p50 s | p95 s | max s |", "|---|---|---|---|---|"]
    for name, row in summary.items():
        label = {"path": name, "total": f"**{name}**", "aside": f"({name})"}[row["role"]]
        lines.append(f"| {label} | {row['what']} | {row['p50_s']:.3f} | {row['p95_s']:.3f} | {row['max_s']:.3f} |")
    return lines


def _comparison(result: dict[str, Any], sections: list[tuple[TriggerPath, dict[str, Any]]]) -> list[str]:
    """The target kinds side by side: producer task success -> downstream DAG run created, and the handler's part."""
    forwarder = result["forwarder"]["summary"]
    rows = [
        ("asset_event over HTTPS (JWT): run made by the downstream scheduler", forwarder, "handler"),
        *(
            (
                f"{path.label}: run made by the API call"
                + (", total from the upstream run's end_date" if path.dag_run else ""),
                section["summary"],
                "handler_and_api",
            )
            for path, section in sections
        ),
    ]
    lines = [
        "| target | runs | total p50 s | total p95 s | total max s | handler (+API) p50 s | delivered p50 s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, summary, handler in rows:
        total, part, until = summary["total"], summary[handler], summary["handler_until_delivered"]
        lines.append(
            f"| {label} | {total['n']} | **{total['p50_s']:.3f}** | {total['p95_s']:.3f} | {total['max_s']:.3f} "
            f"| {part['p50_s']:.3f} | {until['p50_s']:.3f} |"
        )
    return lines


def _shares(result: dict[str, Any], sections: list[tuple[TriggerPath, dict[str, Any]]]) -> list[str]:
    """The product's own share of each row beside the floors under it, then the floors themselves."""
    rows = [("asset_event over HTTPS (JWT)", result["forwarder"]), *((p.label, s) for p, s in sections)]
    lines = [
        "product's own share (listener + queue_wait + handler[_and_api]) and the floors under it, this run:",
        "",
        "| row | runs | share p50 ms | share p95 ms | floors p50 sum ms | above the floors p50 ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, section in rows:
        share = section["product_share"]
        floor = share.get("floor")
        floor_ms = f"{floor['p50_sum_s'] * 1000:.1f}" if floor else "-"
        above_ms = f"{share['above_floor_p50_s'] * 1000:.1f}" if floor else "-"
        lines.append(
            f"| {label} | {share['n']} | **{share['p50_s'] * 1000:.1f}** | {share['p95_s'] * 1000:.1f} "
            f"| {floor_ms} | {above_ms} |"
        )
    floors = result.get("floors") or {}
    if "not_run_reason" not in floors:
        lines += ["", "| floor | measured directly | p50 ms | p95 ms | min ms |", "|---|---|---|---|---|"]
        for name, row in floors.items():
            lines.append(
                f"| {name} | {row['what']} | {row['p50_s'] * 1000:.1f} | {row['p95_s'] * 1000:.1f} "
                f"| {row['min_s'] * 1000:.1f} |"
            )
    return lines


def _table(result: dict[str, Any]) -> str:
    forwarder = result["forwarder"]
    warm = ", ".join(f"{r['segments_s']['total']:.2f} s" for r in forwarder["warmup"]) or "none"
    lines = [
        f"forwarder, local stack ({LAMBDA_LONG_POLL_S} s long polling): {forwarder['summary']['total']['n']} runs "
        f"(warm-up, not counted: {warm})",
        "",
        *_rows(forwarder["summary"]),
        "",
        f"goal p50 < {result['goal']['p50_total_under_s']:g} s: {'met' if result['goal']['met'] else 'NOT met'}",
    ]
    sections = [(path, result[path.key]) for path in (*TRIGGER_PATHS, DAG_RUN_PATH) if result.get(path.key)]
    if sections:
        lines += ["", *_comparison(result, sections)]
    lines += ["", *_shares(result, sections)]
    for path, section in sections:
        warm = ", ".join(f"{r['segments_s']['total']:.2f} s" for r in section["warmup"]) or "none"
        lines += [
            "",
            f"{path.label}: {section['summary']['total']['n']} runs (warm-up, not counted: {warm})",
            "",
            *_rows(section["summary"]),
        ]
    watcher = result.get("asset_watcher") or {}
    if watcher.get("summary"):
        warm = ", ".join(f"{r['segments_s']['total']:.2f} s" for r in watcher["warmup"]) or "none"
        lines += [
            "",
            f"Airflow AssetWatcher on SQS, poll interval {watcher['poll_interval_s']} s: {len(watcher['runs'])} runs "
            f"(warm-up, not counted: {warm})",
            "",
            *_rows(watcher["summary"]),
        ]
    elif watcher.get("not_run_reason"):
        lines += ["", f"AssetWatcher baseline not run: {watcher['not_run_reason']}"]
    return "\n".join(lines)


# =================================================================================================== main


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    size = SIZES["quick" if args.quick else "full"]
    runs = args.runs or size["runs"]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    result: dict[str, Any] = {
        "benchmark": "e2e_latency",
        "mode": "quick" if args.quick else "full",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": load_at_start,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "git": _git(),
        },
    }
    with contextlib.ExitStack() as cleanup:
        paths = (() if args.no_trigger_dag else TRIGGER_PATHS) + (() if args.no_dag_run else (DAG_RUN_PATH,))
        world = start_world(root, cleanup, paths)
        event_source = {k: world.stack.stack.get(k) for k in ("batch_size", "batching_window_s", "maximum_concurrency")}
        result["settings"] = {
            "airflow": AIRFLOW_VERSION,
            "airflow_venv": world.upstream.venv.name,
            "runs": runs,
            "warmup_runs": args.warmup,
            "path": "listener -> SQS (moto server) -> local event source -> forwarder handler -> Airflow REST API",
            "event_source": {**event_source, "long_poll_s": LAMBDA_LONG_POLL_S},
            "percentiles": "nearest rank",
            "between_runs": "the next producer run is triggered once the previous consumer run has succeeded",
        }
        warm, measured = measure_forwarder(world, runs, args.warmup)
        summary = summarise(measured, FORWARDER_PATH, FORWARDER_ASIDE)
        result["forwarder"] = {
            "summary": summary,
            "warmup": [t.to_json((*FORWARDER_PATH, TOTAL, *FORWARDER_ASIDE)) for t in warm],
            "runs": [t.to_json((*FORWARDER_PATH, TOTAL, *FORWARDER_ASIDE)) for t in measured],
        }
        result["goal"] = {"p50_total_under_s": GOAL_P50_S, "met": summary["total"]["p50_s"] < GOAL_P50_S}
        trigger_runs = args.trigger_runs or size["trigger_runs"]
        for path in paths:  # before the baseline, which stops the downstream
            result[path.key] = trigger_section(world, path, trigger_runs, args.warmup)
        floors = None if args.no_floors else measure_floors(world, args.floor_samples or max(runs, trigger_runs))
        result["floors"] = floors or {"not_run_reason": "skipped (--no-floors)"}
        result["forwarder"]["product_share"] = product_share(result["forwarder"]["runs"], "forwarder", floors)
        for path in paths:
            result[path.key]["product_share"] = product_share(result[path.key]["runs"], "trigger", floors)
        result["asset_watcher"] = baseline(args, world, root, size)
    result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def baseline(args: argparse.Namespace, world: World, root: Path, size: dict[str, int]) -> dict[str, Any]:
    if args.no_asset_watcher:
        return {"not_run_reason": "skipped (--no-asset-watcher)"}
    runs = args.watcher_runs or size["watcher_runs"]
    try:
        default = trigger_defaults()
        interval = args.watcher_poll_interval or int(default["waiter_delay"])
        say(f"AssetWatcher baseline: {runs} runs, poll interval {interval} s (the trigger's defaults: {default})")
        queue = start_watcher(world, root, None if interval == default["waiter_delay"] else interval)
        duplicates: list[dict[str, Any]] = []
        warm, measured = measure_watcher(world, runs, args.warmup, interval, seed=args.seed, duplicates=duplicates)
    except Exception as exc:  # the forwarder's numbers stand on their own: keep them, say what stopped the baseline
        say(f"AssetWatcher baseline failed:\n{traceback.format_exc()}")
        return {"not_run_reason": f"{type(exc).__name__}: {str(exc)[:4000]}", "failed": True}
    return {
        "how": (
            "Asset with AssetWatcher(MessageQueueTrigger(scheme='sqs', sqs_queue=...)) in a downstream Airflow "
            f"{AIRFLOW_VERSION} with {', '.join(WATCHER_PROVIDERS)}; triggerer + scheduler + api-server; the upstream "
            "listener sends to that queue on the same moto server (AWS_ENDPOINT_URL)"
        ),
        "queue": queue,
        "poll_interval_s": interval,
        "trigger_defaults": default,
        "runs_asked": runs,
        "random_offset_before_each_run_s": [0, interval],
        "duplicate_runs": duplicates,
        "summary": summarise(measured, WATCHER_PATH, WATCHER_ASIDE),
        "warmup": [t.to_json((*WATCHER_PATH, TOTAL, *WATCHER_ASIDE)) for t in warm],
        "runs": [t.to_json((*WATCHER_PATH, TOTAL, *WATCHER_ASIDE)) for t in measured],
    }


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 forwarder runs, 2 of each trigger_dag row and of the dag_run row, 2 baseline runs",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results file (default: %(default)s)")
    parser.add_argument("--runs", type=int, help="forwarder runs to measure (default: 20, --quick: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="runs before the measured ones (default: %(default)s)")
    parser.add_argument("--no-asset-watcher", action="store_true", help="skip the AssetWatcher baseline")
    parser.add_argument(
        "--no-trigger-dag", action="store_true", help="skip the trigger_dag rows (HTTPS and MWAA emulator)"
    )
    parser.add_argument("--no-dag-run", action="store_true", help="skip the dag_run row (a DAG run's outcome)")
    parser.add_argument(
        "--trigger-runs", type=int, help="runs of each trigger_dag row and the dag_run row (default: 20, --quick: 2)"
    )
    parser.add_argument("--watcher-runs", type=int, help="baseline runs (default: 20, --quick: 2)")
    parser.add_argument(
        "--watcher-poll-interval", type=int, help="the trigger's waiter_delay in s (default: the provider's own)"
    )
    parser.add_argument(
        "--floor-samples", type=int, help="samples of each floor (default: the larger of --runs and --trigger-runs)"
    )
    parser.add_argument("--no-floors", action="store_true", help="skip measuring each segment's floor")
    parser.add_argument("--seed", type=int, default=8, help="seed of the baseline's random offsets")
    parser.add_argument("--keep", action="store_true", help="keep the deployments' homes and logs")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)  # so that a terminated run still stops everything it started
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="adf-e2e-latency-"))
    ok = False
    try:
        result = run(args, root)
        result["wall_s"] = round(time.monotonic() - started, 1)
        problems = check_sane(result)
        result["problems"] = problems
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(_table(result))
        say(f"written to {args.out} in {result['wall_s']} s")
        for problem in problems:
            say(f"NOT SANE: {problem}")
        ok = not problems
    finally:
        if args.keep or not ok:
            say(f"homes and logs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
