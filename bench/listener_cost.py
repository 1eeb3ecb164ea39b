"""What the listener's hook costs Airflow per event, against the naive "POST from the hook" recipe.

    ~/.cache/adf-scratch/bin/python bench/listener_cost.py [--quick] [--out FILE]

The orchestrator (this file, run with the dev venv: it needs moto) starts moto server's SQS behind a small proxy on
127.0.0.1 that holds every request ~10 ms before passing it on (a realistic SQS round trip), a fake downstream that
answers after 200 ms (for the naive baseline), and endpoints that refuse or hang. It then runs this same file as a
worker with the Python of the cached Airflow 3.3.2 / 2.11.2 venvs (tests/e2e tooling; the listener is installed there
from listener/), one process per scenario, and times the hook the way Airflow calls it: through Airflow's own
listener manager, with the listener the `airflow.plugins` entry point registered.

- Airflow 3 (api-server path): `on_asset_event_emitted(asset_event)` with a real `airflow.listeners.types.AssetEvent`.
- Airflow 2 (task process path): `on_task_instance_success(previous_state, task_instance, session)` after a real
  `DatasetEvent` row was flushed in that session (SQLite DB made by `airflow db migrate`), as in a task's last step.
- naive: `requests.post(downstream, json=...)` in the hook, no timeout (the recipe Astronomer withdrew).

- batching (issue 17): the Airflow 3 hook with the background sender's three strategies, each in its own worker
  process, alternating, in the same run: adaptive (the default: an event that comes alone goes at once, after a
  2 ms look for a follow-up; a burst is held until it pauses for 50 ms, at most 1 s, then goes in batches of 10),
  natural (send at once when no send is in flight; what arrives meanwhile goes in the next SendMessageBatch) and
  the earlier pause strategy (wait for a 50 ms pause in submits, at most 1 s). Lone
  events: one at a time with gaps, time from the hook call to SQS's answer. Burst: 200 hook calls back to back,
  the hook's cost, the time until all are accepted, and the SendMessage/SendMessageBatch calls. Workers import the
  listener from this tree's listener/src (PYTHONPATH), whatever the venv has installed.
  `--batching-only [--airflow3-venv DIR] [--rounds N]` runs just this part and updates the `batching` key of the
  results file (the comparison the full run recorded moves to `batching_in_full_run`).

Workers print one JSON object; the orchestrator writes them all to the results file.
"""

# Imports stay inside functions: workers run in Airflow venvs (no moto), the orchestrator in the dev venv (no Airflow).
# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "listener_cost.json"
AIRFLOW3 = "3.3.2"
AIRFLOW2 = "2.11.2"
REGION = "us-east-1"
BEARS = "s3://bucket/bears"
NAIVE_HANG_CAP_S = 5.0

# Iterations per scenario (full, quick).
SIZES = {
    "full": {
        "af3_ok": 500, "af3_down": 200, "af2_ok": 200, "af2_refused": 10, "af2_hanging": 4,
        "naive_ok": 30, "hang_budget_s": 5.0, "lone": 100, "burst": 200, "batching_rounds": 3,
    },
    "quick": {
        "af3_ok": 60, "af3_down": 30, "af2_ok": 20, "af2_refused": 3, "af2_hanging": 2,
        "naive_ok": 5, "hang_budget_s": 1.0, "lone": 20, "burst": 50, "batching_rounds": 1,
    },
}  # fmt: skip
LONE_GAP_S = 0.2  # between lone events: longer than the pause strategy's 50 ms, so each is alone
STRATEGIES = ("adaptive", "natural", "pause")


# =================================================================================================== shared


def summary(seconds: list[float]) -> dict[str, Any]:
    """n, p50, p90, p99, max and mean in milliseconds (nearest-rank percentiles)."""
    if not seconds:
        return {"n": 0}
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]

    return {
        "n": len(ordered),
        "p50_ms": round(rank(0.50) * 1000, 3),
        "p90_ms": round(rank(0.90) * 1000, 3),
        "p95_ms": round(rank(0.95) * 1000, 3),
        "p99_ms": round(rank(0.99) * 1000, 3),
        "max_ms": round(ordered[-1] * 1000, 3),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 3),
    }


# =================================================================================================== workers
# Run with an Airflow venv's Python: stdlib + Airflow + the installed listener (+ requests, which Airflow brings).


def _hook_env_ready() -> None:
    """Airflow's logging would print every warning of a failing send; keep the worker's stdout JSON-only."""
    logging.getLogger("dataset_forwarder_listener").setLevel(logging.ERROR)
    logging.getLogger("botocore").setLevel(logging.ERROR)


def _registered_listener(manager: Any) -> Any:
    """The listener our plugin registered through the entry point (fails loudly if it did not)."""
    found = [p for p in manager.pm.get_plugins() if type(p).__module__.startswith("dataset_forwarder_listener")]
    if len(found) != 1:
        raise SystemExit(f"expected the dataset forwarder listener to be registered once, got {found}")
    return found[0]


def _asset_events() -> Callable[[int], Any]:
    """Airflow 3 `AssetEvent`s as the api-server hands them to `on_asset_event_emitted`."""
    from airflow.listeners.types import AssetEvent
    from airflow.serialization.definitions.assets import SerializedAsset

    asset = SerializedAsset(name=BEARS, uri=BEARS, group="asset", extra={}, watchers=[])

    def event(i: int) -> Any:
        return AssetEvent(
            asset=asset, extra={"rows": i}, source_dag_id="producer", source_task_id="get_bear",
            source_run_id=f"bench__{i}", source_map_index=-1, source_aliases=[], partition_key=None,
        )  # fmt: skip

    return event


def worker_airflow3(args: argparse.Namespace) -> dict[str, Any]:
    from airflow.listeners.listener import get_listener_manager

    _hook_env_ready()
    manager = get_listener_manager()
    listener = _registered_listener(manager)
    event = _asset_events()

    timings = []
    for i in range(args.n):
        asset_event = event(i)
        started = time.perf_counter()
        manager.hook.on_asset_event_emitted(asset_event=asset_event)
        timings.append(time.perf_counter() - started)
    result: dict[str, Any] = {"hook": summary(timings)}

    # How long the background sender took to get everything out (expected only when the queue answers).
    spool = Path(os.environ["DATASET_FORWARDER_SPOOL_DIR"])
    if args.wait_delivery:
        deadline = time.monotonic() + 60
        while any(spool.rglob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
    result["after_calls_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    listener.sender.close()  # what atexit does at interpreter exit
    result["exit_drain_s"] = round(time.perf_counter() - started, 3)
    result["spooled_after"] = _spooled(spool)

    if args.naive_url:
        result["naive"] = _naive(args, event)
    return result


class _Watch:
    """Instruments one background sender: which spool file each hook call wrote, when SQS accepted each file (the
    sender deletes it right after SQS's answer), and the SendMessage / SendMessageBatch calls it made."""

    def __init__(self, background: Any) -> None:
        import threading

        self.written: list[str] = []
        self.accepted: dict[str, float] = {}
        self.calls = {"SendMessage": 0, "SendMessageBatch": 0}
        self.changed = threading.Condition()
        spool, transport = background.sender.spool, background.sender.transport
        write, remove = spool.write, spool.remove
        send_one, send_batch = transport._send_one, transport._send_batch_now

        def write_and_note(envelope: Any, **kwargs: Any) -> Any:
            path = write(envelope, **kwargs)
            self.written.append(path.name if path is not None else "")
            return path

        def remove_and_note(path: Path) -> None:
            remove(path)
            with self.changed:
                self.accepted[path.name] = time.perf_counter()
                self.changed.notify_all()

        def count(kind: str, call: Callable[..., Any]) -> Callable[..., Any]:
            def counted(*args: Any) -> Any:
                self.calls[kind] += 1
                return call(*args)

            return counted

        spool.write, spool.remove = write_and_note, remove_and_note
        transport._send_one = count("SendMessage", send_one)
        transport._send_batch_now = count("SendMessageBatch", send_batch)

    def wait_accepted(self, names: list[str], timeout_s: float = 60.0) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: all(name in self.accepted for name in names), timeout_s)

    def take_calls(self) -> dict[str, int]:
        calls, self.calls = self.calls, {"SendMessage": 0, "SendMessageBatch": 0}
        return calls


def worker_batching(args: argparse.Namespace) -> dict[str, Any]:
    """Lone events, then a burst, through the Airflow 3 hook with the background sender set to `args.batching`."""
    import dataset_forwarder_listener
    from airflow.listeners.listener import get_listener_manager

    _hook_env_ready()
    manager = get_listener_manager()
    listener = _registered_listener(manager)
    background = listener.sender
    background.batching = args.batching  # what the plugin built, with the strategy under test
    watch = _Watch(background)
    event = _asset_events()
    hook = manager.hook.on_asset_event_emitted

    def emit(i: int) -> float:
        asset_event = event(i)
        started = time.perf_counter()
        hook(asset_event=asset_event)
        return started

    # Warm-up: the sender thread starts and builds its SQS client (boto3 is slow to load).
    emit(0)
    if not watch.wait_accepted(watch.written[-1:]):
        raise SystemExit("the warm-up event was not sent")
    watch.take_calls()

    lone, lone_hook = [], []
    for i in range(1, args.lone + 1):
        started = emit(i)
        lone_hook.append(time.perf_counter() - started)
        name = watch.written[-1]
        if not watch.wait_accepted([name]):
            raise SystemExit(f"lone event {i} was not sent")
        lone.append(watch.accepted[name] - started)
        time.sleep(LONE_GAP_S)
    lone_calls = watch.take_calls()

    first = len(watch.written)
    timings = []
    burst_started = time.perf_counter()
    for i in range(args.burst):
        started = emit(args.lone + 1 + i)
        timings.append(time.perf_counter() - started)
    submitted_s = time.perf_counter() - burst_started
    names = watch.written[first:]
    if not watch.wait_accepted(names):
        raise SystemExit("the burst was not all sent")
    accepted = [watch.accepted[name] for name in names]
    burst_calls = watch.take_calls()
    background.close()
    return {
        "batching": args.batching,
        "sender_settings": {
            name: getattr(background, name, None)
            for name in ("lone_window_s", "burst_pause_s", "pause_s", "max_wait_s")
        },
        "listener_source": str(Path(dataset_forwarder_listener.__file__).parent),
        "lone": {
            "gap_s": LONE_GAP_S,
            "submit_to_accepted": summary(lone),
            "hook": summary(lone_hook),
            "calls": lone_calls,
        },
        "burst": {
            "hook": summary(timings),
            "all_submitted_s": round(submitted_s, 4),
            "all_accepted_s": round(max(accepted) - burst_started, 4),
            "submit_to_accepted": summary([done - burst_started for done in accepted]),
            "calls": burst_calls,
        },
        "spooled_after": _spooled(Path(os.environ["DATASET_FORWARDER_SPOOL_DIR"])),
    }


def _spooled(spool: Path) -> int:
    """Files held in the spool, waiting or claimed. A send that gives up releases its claims (inflight/ back to the
    spool) while we count: inflight/, the spool, then inflight/ again, so a file moving either way is seen."""
    names = {p.name for p in spool.glob("inflight/*.json")}
    names |= {p.name for p in spool.glob("*.json")}
    names |= {p.name for p in spool.glob("inflight/*.json")}
    return len(names)


def _naive(args: argparse.Namespace, make_event: Callable[[int], Any]) -> dict[str, Any]:
    """The seed recipe: the hook POSTs the event to the downstream Airflow itself, synchronously, without a timeout."""
    import requests

    url = args.naive_url

    def naive_on_asset_event_emitted(asset_event: Any) -> None:
        requests.post(url, json={"dataset_uri": asset_event.asset.uri, "extra": asset_event.extra})  # noqa: S113

    timings = []
    for i in range(args.naive_n):
        asset_event = make_event(i)
        started = time.perf_counter()
        naive_on_asset_event_emitted(asset_event)
        timings.append(time.perf_counter() - started)
    out: dict[str, Any] = {"ok_200ms": summary(timings)}

    # Against a downstream that accepts and never answers: the call has no end; give up watching after the cap.
    hang_url = args.naive_hang_url
    done = threading.Event()

    def call() -> None:
        with contextlib.suppress(Exception):
            requests.post(hang_url, json={"dataset_uri": BEARS, "extra": {}})  # noqa: S113
        done.set()

    started = time.perf_counter()
    threading.Thread(target=call, daemon=True).start()
    finished = done.wait(args.naive_cap_s)
    out["hanging"] = {
        "returned": finished,
        "watched_s": round(time.perf_counter() - started, 3),
        "result": "returned" if finished else f">= {args.naive_cap_s:g} s, still blocked (no timeout: unbounded)",
    }
    return out


def worker_airflow2(args: argparse.Namespace) -> dict[str, Any]:
    from types import SimpleNamespace

    from airflow.listeners.listener import get_listener_manager
    from airflow.models.dataset import DatasetEvent, DatasetModel
    from airflow.settings import Session
    from airflow.utils import timezone as airflow_tz

    _hook_env_ready()
    manager = get_listener_manager()
    _registered_listener(manager)
    session = Session()
    dataset = session.query(DatasetModel).filter(DatasetModel.uri == BEARS).one_or_none()
    if dataset is None:
        dataset = DatasetModel(uri=BEARS)
        session.add(dataset)
        session.commit()

    result: dict[str, Any] = {}
    round_trip = _round_trip_timer(args.rtt_queue) if args.rtt_queue else None
    trips: list[float] = []
    timings = []
    for i in range(args.n):
        if round_trip is not None:
            trips.append(round_trip())  # same moment, same load: the pair shows what the hook adds to one send
        # The task's last step: its dataset event is flushed, then the listener runs in the same transaction.
        ti = SimpleNamespace(
            dag_id="producer", task_id="get_bear", run_id=f"{args.label}__{i}", map_index=-1,
            start_date=airflow_tz.utcnow(),
        )  # fmt: skip
        session.add(
            DatasetEvent(
                dataset_id=dataset.id, extra={"rows": i}, source_dag_id=ti.dag_id, source_task_id=ti.task_id,
                source_run_id=ti.run_id, source_map_index=-1,
            )
        )  # fmt: skip
        session.flush()
        started = time.perf_counter()
        manager.hook.on_task_instance_success(previous_state=None, task_instance=ti, session=session)
        timings.append(time.perf_counter() - started)
        session.commit()
    result["first_call_ms"] = round(timings[0] * 1000, 3)  # a task process's first event also builds the SQS client
    result["hook"] = summary(timings[1:] if len(timings) > 1 else timings)
    if trips:
        result["sqs_round_trip"] = summary(trips[1:])
        result["hook_minus_round_trip"] = summary([h - t for h, t in zip(timings[1:], trips[1:], strict=True)])
    spool = Path(os.environ["DATASET_FORWARDER_SPOOL_DIR"])
    result["spooled_after"] = sum(1 for _ in spool.glob("*.json"))
    return result


def _round_trip_timer(url: str) -> Callable[[], float]:
    """One SendMessage to `url`, timed alone, with the listener's client settings: the floor for a synchronous send."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "sqs", config=Config(connect_timeout=1, read_timeout=2, retries={"mode": "standard", "max_attempts": 2})
    )
    client.send_message(QueueUrl=url, MessageBody="{}")  # connect

    def once() -> float:
        started = time.perf_counter()
        client.send_message(QueueUrl=url, MessageBody='{"round_trip": true}')
        return time.perf_counter() - started

    return once


# =================================================================================================== orchestrator


class _DelayProxy(BaseHTTPRequestHandler):
    """Relays each request to the upstream (moto) and answers no sooner than `delay_s` after it arrived (keep-alive)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms Nagle/delayed-ACK stall
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    delay_s = 0.010

    def do_POST(self) -> None:
        arrived = time.perf_counter()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in {"connection", "keep-alive"}}
        connection.request("POST", self.path, body=body, headers=headers)
        answer = connection.getresponse()
        payload = answer.read()
        connection.close()
        time.sleep(max(0.0, self.delay_s - (time.perf_counter() - arrived)))
        self.send_response(answer.status)
        for key, value in answer.getheaders():
            if key.lower() not in {"connection", "content-length", "transfer-encoding", "server", "date"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


class _SlowDownstream(BaseHTTPRequestHandler):
    """A downstream Airflow REST API that takes 200 ms to accept an event."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    delay_s = 0.200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(self.delay_s)
        payload = b'{"id": 1}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def _refusing() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: connection refused
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.contextmanager
def _hanging() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)  # the kernel accepts connections; nobody ever reads or answers
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def _venvs(versions: tuple[str, ...] = (AIRFLOW3, AIRFLOW2)) -> dict[str, Path]:
    from devkit.airflow_env import ensure_airflow_venv
    from devkit.paths import listener_extras

    return {version: ensure_airflow_venv(version, listener_extras()) for version in versions}


def _hold_venv(venv: Path) -> Any:
    """A shared lock on a cached venv given by path, as devkit/airflow_env.py holds one: pruning leaves it alone."""
    import fcntl

    locks = venv.parent / ".locks"
    locks.mkdir(exist_ok=True)
    lock = (locks / f"{venv.name}.lock").open("ab")
    fcntl.flock(lock, fcntl.LOCK_SH)
    return lock


def _clean_env() -> dict[str, str]:
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER"}
    return {k: v for k, v in os.environ.items() if k in keep}


def _run_worker(venv: Path, kind: str, env: dict[str, str], *extra: str, timeout_s: float = 600) -> dict[str, Any]:
    command = [str(venv / "bin" / "python"), str(Path(__file__).resolve()), "--worker", kind, *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)  # noqa: S603
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        output = f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        raise SystemExit(f"worker {kind} {extra} failed ({done.returncode}):\n{output}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


class _Lab:
    """moto's SQS (behind the ~10 ms proxy), a slow downstream, dead endpoints, and a scratch directory."""

    def __init__(self, stack: contextlib.ExitStack, sqs_delay_s: float) -> None:
        from werkzeug import serving

        from devkit.moto_env import MotoServer, aws_session

        # moto's werkzeug server writes headers and body separately: without this, Nagle + delayed ACK add up to 40 ms.
        serving.WSGIRequestHandler.disable_nagle_algorithm = True
        moto = stack.enter_context(MotoServer())  # in this process; it logs no request
        _DelayProxy.upstream = (moto.host, moto.port)
        _DelayProxy.delay_s = sqs_delay_s
        self.sqs = aws_session(REGION).client("sqs", endpoint_url=moto.endpoint)
        self.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adf-bench-")))
        self.endpoints = {
            "ok": stack.enter_context(_serve(_DelayProxy)),
            "refused": stack.enter_context(_refusing()),
            "hanging": stack.enter_context(_hanging()),
        }
        self.downstream = stack.enter_context(_serve(_SlowDownstream))

    def env(self, version: str, label: str, endpoint: str, **more: str) -> dict[str, str]:
        """A worker's environment: its own queue and spool, Airflow on SQLite in a scratch home."""
        from devkit.moto_env import fake_aws_env

        queue = self.sqs.create_queue(QueueName=f"bench-{version.replace('.', '-')}-{label}")["QueueUrl"]
        home = self.work / f"airflow-{version}"
        home.mkdir(exist_ok=True)
        return {
            **_clean_env(),
            **fake_aws_env(endpoint),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "DATASET_FORWARDER_QUEUE_URL": queue,
            "DATASET_FORWARDER_DEPLOYMENT": "bench",
            "DATASET_FORWARDER_SPOOL_DIR": str(self.work / f"spool-{version}-{label}"),
            **more,
        }

    def queued(self, env: dict[str, str]) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=env["DATASET_FORWARDER_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])


def _bench_airflow3(lab: _Lab, venv: Path, size: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The api-server path: the hook hands off to the background sender. Also runs the naive baseline."""
    af3: dict[str, Any] = {"version": AIRFLOW3}
    naive: dict[str, Any] = {}
    for label, endpoint in lab.endpoints.items():
        n = size["af3_ok"] if label == "ok" else size["af3_down"]
        env = lab.env(AIRFLOW3, label, endpoint)
        extra = ["--n", str(n)]
        if label == "ok":
            extra += ["--wait-delivery", "--naive-url", lab.downstream, "--naive-hang-url", lab.endpoints["hanging"]]
            extra += ["--naive-n", str(size["naive_ok"]), "--naive-cap-s", str(NAIVE_HANG_CAP_S)]
        print(f"airflow {AIRFLOW3}: {label} x{n}", file=sys.stderr, flush=True)
        out = _run_worker(venv, "airflow3", env, *extra)
        out["on_queue"] = lab.queued(env)
        if label == "ok":
            naive = out.pop("naive")
        af3[label] = out
    return af3, naive


def _bench_airflow2(lab: _Lab, venv: Path, size: dict[str, Any]) -> dict[str, Any]:
    """The task process path: the hook sends before it returns, within the send budget."""
    print(f"airflow {AIRFLOW2}: db migrate", file=sys.stderr, flush=True)
    migrate_env = lab.env(AIRFLOW2, "migrate", lab.endpoints["ok"])
    subprocess.run(  # noqa: S603 (our own venv's airflow)
        [str(venv / "bin" / "airflow"), "db", "migrate"],
        env=migrate_env,
        cwd=migrate_env["AIRFLOW_HOME"],
        capture_output=True,
        check=True,
        timeout=600,
    )
    af2: dict[str, Any] = {"version": AIRFLOW2}
    budget = {"ok": "5", "refused": "5", "hanging": str(size["hang_budget_s"])}
    for label, endpoint in lab.endpoints.items():
        n = size[f"af2_{label}"]
        env = lab.env(AIRFLOW2, label, endpoint, DATASET_FORWARDER_SEND_TIMEOUT_S=budget[label])
        extra = ["--n", str(n), "--label", label]
        if label == "ok":  # round trips go to a queue of their own, so on_queue counts only the hook's events
            extra += ["--rtt-queue", lab.sqs.create_queue(QueueName="bench-round-trips")["QueueUrl"]]
        print(f"airflow {AIRFLOW2}: {label} x{n}", file=sys.stderr, flush=True)
        out = _run_worker(venv, "airflow2", env, *extra)
        out["send_budget_s"] = float(budget[label])
        out["on_queue"] = lab.queued(env)
        af2[label] = out
    return af2


def _bench_batching(lab: _Lab, venv: Path, size: dict[str, Any]) -> dict[str, Any]:
    """The batching strategies side by side: alternating worker processes, same lab, same run."""
    runs: dict[str, list[dict[str, Any]]] = {strategy: [] for strategy in STRATEGIES}
    for round_ in range(size["batching_rounds"]):
        for strategy in STRATEGIES:
            label = f"batching-{strategy}-{round_}"
            env = lab.env(AIRFLOW3, label, lab.endpoints["ok"], PYTHONPATH=str(REPO_ROOT / "listener" / "src"))
            extra = ["--batching", strategy, "--lone", str(size["lone"]), "--burst", str(size["burst"])]
            print(f"airflow {AIRFLOW3}: {label}", file=sys.stderr, flush=True)
            out = _run_worker(venv, "batching", env, *extra)
            out["on_queue"] = lab.queued(env)
            runs[strategy].append(out)
    return {
        "what": "Airflow 3 hook, background sender: adaptive (alone: at once after a 2 ms look; a burst: held until "
        "a 50 ms pause, at most 1 s) vs. natural (at once when no send is in flight) vs. waiting for a 50 ms pause "
        "(at most 1 s)",
        "lone_events": size["lone"],
        "burst_events": size["burst"],
        "rounds": size["batching_rounds"],
        **runs,
    }


def _batching_only(args: argparse.Namespace) -> dict[str, Any]:
    """Run only the batching comparison; the other sections of the results file are kept as they are."""
    size = {**SIZES["quick" if args.quick else "full"]}
    if args.rounds:
        size["batching_rounds"] = args.rounds
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    with contextlib.ExitStack() as stack:
        if args.airflow3_venv:
            venv = args.airflow3_venv.resolve()
            stack.callback(_hold_venv(venv).close)
        else:
            venv = _venvs((AIRFLOW3,))[AIRFLOW3]
        lab = _Lab(stack, args.sqs_delay_ms / 1000)
        batching = _bench_batching(lab, venv, size)
    batching["generated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    batching["machine"] = {
        "cpus": os.cpu_count(),
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    batching["sqs_delay_ms"] = args.sqs_delay_ms
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "listener_cost"}
    if "batching" in previous:  # the full run's own comparison stays next to this one
        previous["batching_in_full_run"] = previous["batching"]
    return {**previous, "batching": batching}


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    size = SIZES["quick" if args.quick else "full"]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    venvs = _venvs()
    with contextlib.ExitStack() as stack:
        lab = _Lab(stack, args.sqs_delay_ms / 1000)
        airflow3, naive = _bench_airflow3(lab, venvs[AIRFLOW3], size)
        airflow2 = _bench_airflow2(lab, venvs[AIRFLOW2], size)
        batching = _bench_batching(lab, venvs[AIRFLOW3], size)
    results = {"naive": naive, "airflow3": airflow3, "airflow2": airflow2, "batching": batching}

    return {
        "benchmark": "listener_cost",
        "mode": "quick" if args.quick else "full",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg_at_start": load_at_start,
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "sqs_delay_ms": args.sqs_delay_ms,
            "sqs": "moto server behind a proxy on 127.0.0.1 that holds each request before relaying it",
            "naive_downstream_delay_ms": int(_SlowDownstream.delay_s * 1000),
            "naive_hang_cap_s": NAIVE_HANG_CAP_S,
            "sizes": size,
        },
        **results,
    }


def _table(result: dict[str, Any]) -> str:
    af3, af2, naive = result["airflow3"], result["airflow2"], result["naive"]

    def row(what: str, stats: dict[str, Any], note: str = "") -> str:
        return f"| {what} | {stats['n']} | {stats['p50_ms']:.2f} | {stats['p99_ms']:.2f} | {note} |"

    lines = [
        "| hook call | n | p50 ms | p99 ms | notes |",
        "|---|---|---|---|---|",
        row("Airflow 3 `on_asset_event_emitted`, SQS answers in ~10 ms", af3["ok"]["hook"],
            f"all {af3['ok']['on_queue']} on the queue {af3['ok']['after_calls_s']:.2f} s after the last call"),
        row("Airflow 3, SQS refuses connections", af3["refused"]["hook"],
            f"{af3['refused']['spooled_after']} left spooled; exit drain {af3['refused']['exit_drain_s']:.2f} s"),
        row("Airflow 3, SQS hangs", af3["hanging"]["hook"],
            f"{af3['hanging']['spooled_after']} left spooled; exit drain {af3['hanging']['exit_drain_s']:.2f} s"),
        row("SQS SendMessage alone (boto3, same settings)", af2["ok"]["sqs_round_trip"], "the floor for a sync send"),
        row("Airflow 2 `on_task_instance_success`, 1 event, SQS ~10 ms", af2["ok"]["hook"],
            f"adds p50 {af2['ok']['hook_minus_round_trip']['p50_ms']:+.2f} ms to one round trip; first call in a "
            f"process (builds the client) {af2['ok']['first_call_ms']:.0f} ms"),
        row("Airflow 2, SQS refuses connections", af2["refused"]["hook"],
            f"{af2['refused']['spooled_after']} spooled; first call {af2['refused']['first_call_ms']:.0f} ms"),
        row(f"Airflow 2, SQS hangs (budget {af2['hanging']['send_budget_s']:g} s)", af2["hanging"]["hook"],
            f"bounded by the budget; {af2['hanging']['spooled_after']} spooled"),
        row("naive: `requests.post` to a downstream answering in 200 ms", naive["ok_200ms"], "no timeout"),
        f"| naive, downstream hangs | 1 | {naive['hanging']['result']} | | unbounded |",
    ]  # fmt: skip
    return "\n".join(lines)


def _batching_table(batching: dict[str, Any]) -> str:
    """Lone and burst cases, one row per strategy and round."""

    lines = [
        f"| batching | lone ({batching['lone_events']}): hook to accepted p50 / p95 ms | lone: calls | burst of "
        f"{batching['burst_events']}: hook p50 / p99 ms | burst: all accepted s | burst: batch + single calls |",
        "|---|---|---|---|---|---|",
    ]

    def median(strategy: str, pick: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(pick(run) for run in batching[strategy])

    for strategy in STRATEGIES:
        if len(batching[strategy]) > 1:  # first, the median of the rounds' figures (their range in the rows below)
            lines.append(
                f"| **{strategy}, median of {len(batching[strategy])}**"
                f" | {median(strategy, lambda r: r['lone']['submit_to_accepted']['p50_ms']):.1f}"
                f" / {median(strategy, lambda r: r['lone']['submit_to_accepted']['p95_ms']):.1f} |"
                f" | {median(strategy, lambda r: r['burst']['hook']['p50_ms']):.2f}"
                f" / {median(strategy, lambda r: r['burst']['hook']['p99_ms']):.2f}"
                f" | {median(strategy, lambda r: r['burst']['all_accepted_s']):.3f} | |"
            )
        for run in batching[strategy]:
            lone, burst = run["lone"], run["burst"]
            latency = lone["submit_to_accepted"]
            lines.append(
                f"| {strategy} | {latency['p50_ms']:.1f} / {latency['p95_ms']:.1f}"
                f" | {lone['calls']['SendMessage']} + {lone['calls']['SendMessageBatch']} batch"
                f" | {burst['hook']['p50_ms']:.2f} / {burst['hook']['p99_ms']:.2f} | {burst['all_accepted_s']:.3f}"
                f" | {burst['calls']['SendMessageBatch']} + {burst['calls']['SendMessage']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few iterations, for a smoke run (~1-2 min)")
    parser.add_argument(
        "--out", type=Path, help=f"results file (default: {DEFAULT_OUT.relative_to(REPO_ROOT)}; --quick: a temp file)"
    )
    parser.add_argument("--sqs-delay-ms", type=float, default=10.0)
    parser.add_argument("--batching-only", action="store_true", help="only the batching comparison (issue 17)")
    parser.add_argument("--airflow3-venv", type=Path, help="with --batching-only: a cached Airflow 3 venv to use")
    parser.add_argument("--rounds", type=int, help="with --batching-only: rounds per strategy (default: 3)")
    parser.add_argument("--worker", choices=["airflow3", "airflow2", "batching"], help=argparse.SUPPRESS)
    parser.add_argument("--batching", choices=STRATEGIES, default="natural", help=argparse.SUPPRESS)
    parser.add_argument("--lone", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--burst", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--label", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--rtt-queue", help=argparse.SUPPRESS)
    parser.add_argument("--wait-delivery", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--naive-url", help=argparse.SUPPRESS)
    parser.add_argument("--naive-hang-url", help=argparse.SUPPRESS)
    parser.add_argument("--naive-n", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--naive-cap-s", type=float, default=NAIVE_HANG_CAP_S, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        workers = {"airflow3": worker_airflow3, "airflow2": worker_airflow2, "batching": worker_batching}
        result = workers[args.worker](args)
        sys.stdout.flush()
        print(json.dumps(result), flush=True)
        os._exit(0)  # like a task process: no waiting for threads still blocked on a hanging endpoint

    if args.out is None:  # a smoke run never overwrites the recorded results
        args.out = Path(tempfile.gettempdir()) / "listener_cost.quick.json" if args.quick else DEFAULT_OUT
    started = time.monotonic()
    if args.batching_only:
        result = _batching_only(args)
        result["batching"]["wall_s"] = round(time.monotonic() - started, 1)
    else:
        result = orchestrate(args)
        result["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.batching_only:
        print(_table(result))
        print()
    print(_batching_table(result["batching"]))
    wall_s = result["batching"]["wall_s"] if args.batching_only else result["wall_s"]
    print(f"\nwritten to {args.out} in {wall_s} s", file=sys.stderr)


if __name__ == "__main__":
    main()
