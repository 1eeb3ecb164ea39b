"""How fast the forwarder Lambda forwards an SQS batch, against the naive one-POST-after-another loop.

    PY=~/.cache/airflow-dataset-forwarder/venv-dev-*/bin/python
    $PY bench/forwarder_throughput.py [--quick] [--out FILE]

Runs in the dev venv (moto, and the layer's packages: Powertools, requests). The real handler
(`app.lambda_handler` from functions/forwarder) gets SQS batches of 10 records, each record an event that
every one of 1, 5 or 20 targets subscribes to. Each target is a fake Airflow 3 REST API (devkit's
`FakeAirflow`, JWT auth, version probe and asset lookup) on 127.0.0.1 that answers every POST 50 ms
after it arrived; all of them run in one process of their own, so they never take the handler's GIL.
Targets and their passwords are in SSM on moto server (another process). The idempotency ledger is an
in-process Powertools persistence layer that waits `--ledger-latency-ms` per operation (what a DynamoDB
call costs from Lambda), wired through `runtime.build(ledger_store=...)`; one more row uses moto
server's DynamoDB, the handler's default wiring, for comparison.

The baseline is what people paste into a listener: for each record, for each target, one
`requests.post(url, json=..., auth=...)` after the other, no session reuse, no timeout, with the token
and asset id already known (so it does strictly less work than the forwarder's first batch).

Per target count: the first batch (cold forwarder: AWS clients, SSM, version probe, JWT, asset lookup,
threads, connections) apart, then the median wall time of warm batches, ours and the baseline's
interleaved, events/s, the ratio, the handler process's CPU time per batch, and the goal:
a batch within 1.5 x one round trip + 20 ms, and a ratio to the baseline of at least 0.9 x records x targets.
One round trip (one POST on a warm session to the same fake) is measured in the same run.
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    FUNCTION_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    MotoServer,
    aws_environment,
    import_paths,
    load_average,
    machine,
    run_and_record,
    sqs_event,
    summary,
)

DEFAULT_OUT = RESULTS_DIR / "forwarder_throughput.json"
URI = "s3://lake/bench/bears"
USERNAME = "forwarder"
PASSWORD = "bench-password"  # noqa: S105 - a fake Airflow's password
EVENTS_PATH = "/api/v2/assets/events"
RECORDS_PER_BATCH = 10
GOAL_RTT_FACTOR = 1.5
GOAL_SLACK_MS = 20.0
GOAL_RATIO_FACTOR = 0.9
LEDGER_OPERATIONS_AROUND_POST = 2  # Powertools idempotency: in-progress record before, completed record after

# Batches per target count; the baseline's batches are long (records x targets round trips) and steady.
SIZES: dict[str, dict[str, Any]] = {
    "full": {"targets": (1, 5, 20), "batches": 20, "warmup": 2, "baseline_batches": 5,
             "moto_targets": 20, "moto_batches": 5, "round_trips": 30, "parts_rounds": 10},
    "quick": {"targets": (1, 5, 20), "batches": 3, "warmup": 1, "baseline_batches": 1,
              "moto_targets": 5, "moto_batches": 2, "round_trips": 5, "parts_rounds": 2},
}  # fmt: skip


# =================================================================================================== downstream


def serve_downstream(count: int, delay_ms: float) -> None:
    """Worker: `count` fake Airflow 3 APIs whose POSTs answer after `delay_ms`; control lines on stdin."""
    from devkit.airflow_api import FakeAirflow, Fault

    post_delay = Fault(delay_s=delay_ms / 1000, method="POST")

    class SlowPostAirflow(FakeAirflow):
        """Every POST waits `delay_ms` before it is handled (faults injected by name still come first)."""

        def _take_fault(self, method: str, target: str) -> Fault | None:
            injected = super()._take_fault(method, target)
            return injected or (post_delay if method == "POST" else None)

    fakes = [
        SlowPostAirflow("3", datasets=[URI], auth="airflow-token", username=USERNAME, password=PASSWORD).start()
        for _ in range(count)
    ]
    print(json.dumps({"urls": [fake.url for fake in fakes]}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            requests = [request for fake in fakes for request in fake.requests]
            stats = {
                "cpu_s": time.process_time(),
                "requests": len(requests),
                "by_kind": dict(Counter(f"{method} {path.split('?')[0]}" for method, path, _ in requests)),
                "events": [len(fake.events) for fake in fakes],
                "connections": sum(fake.connections for fake in fakes),
            }
            print(json.dumps(stats), flush=True)
    for fake in fakes:
        fake.stop()


class Downstream:
    """The fake downstream APIs, in a process of their own."""

    def __init__(self, count: int, delay_ms: float) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), "--serve-downstream", str(count)]
        self._process = subprocess.Popen(  # noqa: S603 - this file, with this interpreter
            [*command, "--post-delay-ms", str(delay_ms)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.urls: list[str] = self._read()["urls"]

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise SystemExit(f"the fake downstream process exited ({self._process.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def stats(self) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write("stats\n")
        self._process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


# =================================================================================================== the two contenders


@contextlib.contextmanager
def stdout_to(path: Path) -> Iterator[None]:
    """Point file descriptor 1 at `path`: the handler's JSON logs and EMF metrics land there, not on the table."""
    sys.stdout.flush()
    saved = os.dup(1)
    with path.open("a") as sink:
        os.dup2(sink.fileno(), 1)
        try:
            yield
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)


class Handler:
    """The real Lambda handler, one invocation per batch."""

    def __init__(self, queue_arn: str, log_path: Path) -> None:
        import app
        from dataset_forwarder_cli.local.bootstrap import LambdaContext

        self._handler = app.lambda_handler
        self._context = LambdaContext
        self._queue_arn = queue_arn
        self._log_path = log_path

    def batch(self) -> tuple[float, float]:
        """Forward one batch of fresh events; returns (wall seconds, CPU seconds of this process)."""
        event = sqs_event(self._queue_arn, RECORDS_PER_BATCH, uri=URI)
        context = self._context(timeout_s=60.0)
        with stdout_to(self._log_path):
            cpu, started = time.process_time(), time.perf_counter()
            response = self._handler(event, context)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        if response != {"batchItemFailures": []}:
            raise SystemExit(f"the handler did not deliver the whole batch: {response}; see {self._log_path}")
        return wall, cpu


class NaiveLoop:
    """The baseline: one `requests.post` per record and target, one after the other, no session, no timeout."""

    def __init__(self, urls: list[str], asset_id: int, token: str) -> None:
        import requests

        class BearerAuth(requests.auth.AuthBase):
            def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
                request.headers["Authorization"] = f"Bearer {token}"
                return request

        self._post = requests.post
        self._auth = BearerAuth()
        self._urls = urls
        self._asset_id = asset_id

    def batch(self) -> float:
        from devkit.envelopes import envelope

        events = [envelope(URI) for _ in range(RECORDS_PER_BATCH)]
        started = time.perf_counter()
        for event in events:
            extra = {**event["extra"], "dataset_forwarder": {"id": event["id"], "source": event["source"]}}
            for url in self._urls:
                response = self._post(  # no timeout: that is the recipe being measured
                    url + EVENTS_PATH, json={"asset_id": self._asset_id, "extra": extra}, auth=self._auth
                )
                response.raise_for_status()
        return time.perf_counter() - started


def airflow_token(url: str) -> str:
    import requests

    response = requests.post(url + "/auth/token", json={"username": USERNAME, "password": PASSWORD}, timeout=10)
    response.raise_for_status()
    return str(response.json()["access_token"])


def round_trips(url: str, token: str, n: int) -> list[float]:
    """One POST at a time on a warm keep-alive session: the floor under any delivery."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    body = {"asset_id": 1, "extra": {"round_trip": True}}
    session.post(url + EVENTS_PATH, json=body, timeout=10).raise_for_status()  # connect, once
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        session.post(url + EVENTS_PATH, json=body, timeout=10).raise_for_status()
        samples.append(time.perf_counter() - started)
    session.close()
    return samples


class Parts:
    """The two things every delivery must do, each alone and nothing else, for one batch's pairs at once.

    The ledger: Powertools idempotency's claim before and completion after (the memory table, with its
    latency), no POST in between. The POST: our urllib3 transport, with the token and asset id known.
    Both on a thread pool of the forwarder's size, dispatched from an event loop as the handler does.
    The handler runs Python one thread at a time, so the CPU the two take together is a floor under
    its batch: forwarder logic, logs and metrics only add to it.
    """

    def __init__(self, lab: Lab, *, targets: int, token: str, ledger_latency_ms: float, workers: int) -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from dataset_forwarder import runtime
        from dataset_forwarder.envelope import parse_envelope
        from dataset_forwarder.ledger import Ledger
        from dataset_forwarder_cli.local.bootstrap import LambdaContext
        from devkit.envelopes import envelope
        from devkit.idempotency import MemoryTable

        self._loop = asyncio.new_event_loop()
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="parts")
        self._ledger = Ledger(ttl_s=3600, store=MemoryTable(latency_s=ledger_latency_ms / 1000).layer)
        self._ledger.register_lambda_context(LambdaContext(timeout_s=60.0))
        self._transport = runtime.http_transport(workers)
        self._targets = [f"t{index:02d}" for index in range(targets)]
        self._urls = [url + EVENTS_PATH for url in lab.downstream.urls[:targets]]
        self._headers = {"Authorization": f"Bearer {token}"}
        extra = parse_envelope(json.dumps(envelope(URI))).downstream_extra()  # what the forwarder posts
        self._body = {"asset_id": 1, "extra": extra}

    def _claim_and_complete(self, pair: tuple[str, str]) -> None:
        self._ledger.complete(self._ledger.claim(pair[0], pair[1]), {})

    def _post(self, url: str) -> None:
        reply = self._transport.request("POST", url, headers=self._headers, json_body=self._body, timeout=(3.05, 10))
        if not 200 <= reply.status_code < 300:
            raise SystemExit(f"POST {url} answered {reply.status_code}")

    def _batch(self, call: Callable[[Any], None], items: list[Any]) -> tuple[float, float]:
        import asyncio

        async def all_at_once() -> None:
            await asyncio.gather(*(self._loop.run_in_executor(self._executor, call, item) for item in items))

        cpu, started = time.process_time(), time.perf_counter()
        self._loop.run_until_complete(all_at_once())
        return time.perf_counter() - started, time.process_time() - cpu

    def measure(self, rounds: int, warmup: int) -> dict[str, Any]:
        ledger: list[tuple[float, float]] = []
        posts: list[tuple[float, float]] = []
        for index in range(warmup + rounds):
            pairs = [(str(uuid.uuid4()), target) for _ in range(RECORDS_PER_BATCH) for target in self._targets]
            ledger_round = self._batch(self._claim_and_complete, pairs)
            post_round = self._batch(self._post, [url for _ in range(RECORDS_PER_BATCH) for url in self._urls])
            if index >= warmup:
                ledger.append(ledger_round)
                posts.append(post_round)
        self._executor.shutdown()
        self._transport.close()
        self._loop.close()
        result = {
            "pairs": len(self._targets) * RECORDS_PER_BATCH,
            "ledger_only": {"wall": summary([w for w, _ in ledger]), "cpu": summary([c for _, c in ledger])},
            "post_only": {"wall": summary([w for w, _ in posts]), "cpu": summary([c for _, c in posts])},
        }
        result["cpu_floor_ms"] = round(result["ledger_only"]["cpu"]["p50_ms"] + result["post_only"]["cpu"]["p50_ms"], 1)
        return result


# =================================================================================================== orchestration


class Lab:
    """moto server, the downstream fakes, one target set per target count in SSM, and a scratch directory."""

    def __init__(self, stack: contextlib.ExitStack, args: argparse.Namespace, most_targets: int) -> None:
        import_paths()
        self.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adf-throughput-")))
        self.moto = MotoServer(log_path=self.work / "moto.log").start()
        stack.callback(self.moto.stop)
        os.environ.update(aws_environment(self.moto.endpoint))
        os.environ.update(
            POWERTOOLS_SERVICE_NAME="dataset-forwarder",
            POWERTOOLS_METRICS_NAMESPACE="DatasetForwarderBench",
            # As on Lambda: Powertools' batch processor then keeps one event loop across invocations
            # (without it, every batch pays asyncio.run's new loop, signal handlers and shutdown).
            LAMBDA_TASK_ROOT=str(FUNCTION_DIR),
        )
        os.environ.pop("AWS_PROFILE", None)
        self.downstream = Downstream(most_targets, args.post_delay_ms)
        stack.callback(self.downstream.close)

        import boto3

        from devkit.aws import ForwarderStack

        self.stack = ForwarderStack.create(boto3.session.Session())
        arn = self.stack.sqs.get_queue_attributes(QueueUrl=self.stack.queue_url, AttributeNames=["QueueArn"])
        self.queue_arn: str = arn["Attributes"]["QueueArn"]
        self.log_path = self.work / "handler.log"
        self._targets_paths: dict[int, str] = {}

    def targets_path(self, count: int) -> str:
        """`count` targets (the first `count` fakes) under a path of their own."""
        if count in self._targets_paths:
            return self._targets_paths[count]
        path = self._targets_paths[count] = f"{self.stack.targets_path}/n{count}"
        for index, url in enumerate(self.downstream.urls[:count]):
            value = {
                "url": url,
                "airflow": "auto",
                "datasets": [URI],
                # each target reads its own secret (the function's rule: SECRETS_PATH/<target name>)
                "auth": {
                    "type": "airflow-token",
                    "username": USERNAME,
                    "secret": self.stack.put_secret(f"t{index:02d}", PASSWORD),
                },
                "timeout_s": 10,
            }
            self.stack.ssm.put_parameter(Name=f"{path}/t{index:02d}", Value=json.dumps(value), Type="String")
        return path

    def handler(self, targets_path: str, ledger_store: Callable[[], Any] | None, max_workers: int | None) -> Handler:
        """The real handler, served by a freshly built forwarder (ledger in memory, or DynamoDB when None)."""
        from dataset_forwarder import runtime
        from dataset_forwarder.settings import Settings

        env = {
            **self.stack.env(),
            "TARGETS_PATH": targets_path,
            "ALLOW_HTTP_TARGETS": "true",
            **({"MAX_WORKERS": str(max_workers)} if max_workers else {}),
        }
        runtime.install(runtime.build(Settings.from_env(env), ledger_store=ledger_store))
        return Handler(self.queue_arn, self.log_path)


def measure(
    lab: Lab,
    *,
    targets: int,
    ledger: str,
    ledger_latency_ms: float,
    batches: int,
    warmup: int,
    max_workers: int | None,
    baseline: NaiveLoop | None = None,
    baseline_batches: int = 0,
) -> dict[str, Any]:
    """First batch, warm-up, then `batches` warm batches of ours interleaved with the baseline's."""
    from devkit.idempotency import MemoryTable

    table = MemoryTable(latency_s=ledger_latency_ms / 1000) if ledger == "memory" else None
    handler = lab.handler(lab.targets_path(targets), table.layer if table else None, max_workers)
    before = lab.downstream.stats()
    first_wall, first_cpu = handler.batch()
    after_first = lab.downstream.stats()
    for _ in range(warmup):
        handler.batch()
    ours: list[tuple[float, float]] = []
    naive: list[float] = []
    new_connections = 0  # opened by our warm batches (the baseline opens one per POST)
    for index in range(batches):
        connections = lab.downstream.stats()["connections"]
        ours.append(handler.batch())
        new_connections += lab.downstream.stats()["connections"] - connections
        if baseline is not None and index < baseline_batches:
            naive.append(baseline.batch())
    after = lab.downstream.stats()

    deliveries = RECORDS_PER_BATCH * targets
    expected = (1 + warmup + batches) * deliveries + len(naive) * deliveries
    received = sum(after["events"][:targets]) - sum(before["events"][:targets])
    if received != expected:
        raise SystemExit(f"{targets} targets: the fakes accepted {received} events, expected {expected}")
    walls = [wall for wall, _ in ours]
    row: dict[str, Any] = {
        "targets": targets,
        "records_per_batch": RECORDS_PER_BATCH,
        "deliveries_per_batch": deliveries,
        "ledger": ledger,
        "ledger_latency_ms": ledger_latency_ms if ledger == "memory" else None,
        "first_batch": {
            "wall_ms": round(first_wall * 1000, 1),
            "cpu_ms": round(first_cpu * 1000, 1),
            "requests_per_target": {
                kind: round((count - before["by_kind"].get(kind, 0)) / targets, 1)
                for kind, count in after_first["by_kind"].items()
                if count > before["by_kind"].get(kind, 0)
            },
        },
        "ours": summary(walls),
        "ours_cpu": summary([cpu for _, cpu in ours]),
        "new_connections_per_warm_batch": round(new_connections / batches, 2),
        "downstream_cpu_ms_per_request": round(
            (after["cpu_s"] - before["cpu_s"]) * 1000 / max(1, after["requests"] - before["requests"]), 3
        ),
        "ledger_operations_per_delivery": (
            round(table.operations / ((1 + warmup + batches) * deliveries), 2) if table else None
        ),
    }
    # The fakes run in one process on the other core: their CPU per batch is a floor of its own, not ours.
    row["downstream_cpu_ms_per_batch"] = round(row["downstream_cpu_ms_per_request"] * deliveries, 1)
    median = statistics.median(walls)
    row["ours"]["records_per_s"] = round(RECORDS_PER_BATCH / median, 1)
    row["ours"]["deliveries_per_s"] = round(deliveries / median, 1)
    row["ours_cpu"]["per_delivery_ms"] = round(statistics.median([cpu for _, cpu in ours]) * 1000 / deliveries, 3)
    if naive:
        row["baseline"] = summary(naive)
        row["baseline"]["records_per_s"] = round(RECORDS_PER_BATCH / statistics.median(naive), 2)
        row["baseline"]["deliveries_per_s"] = round(deliveries / statistics.median(naive), 2)
    return row


def judge(row: dict[str, Any], baseline: dict[str, Any], round_trip_ms: float) -> None:
    """Add the baseline (measured with the row of the same target count), the ratio and the goal verdicts."""
    row["baseline"] = baseline
    ratio = baseline["p50_ms"] / row["ours"]["p50_ms"]
    batch_goal = GOAL_RTT_FACTOR * round_trip_ms + GOAL_SLACK_MS
    ratio_goal = GOAL_RATIO_FACTOR * row["deliveries_per_batch"]
    row["ratio"] = round(ratio, 1)
    row["goal"] = {
        "batch_ms_max": round(batch_goal, 1),
        "batch_ok": row["ours"]["p50_ms"] <= batch_goal,
        "ratio_min": round(ratio_goal, 1),
        "ratio_ok": ratio >= ratio_goal,
    }
    if row["ledger_latency_ms"] is not None:
        # At most once: the ledger's claim is written before the POST and its completion after it, so no batch
        # is shorter than that chain, and no ratio higher than the baseline over it, whatever the CPU costs.
        chain_ms = round_trip_ms + LEDGER_OPERATIONS_AROUND_POST * row["ledger_latency_ms"]
        row["bound"] = {"chain_ms": round(chain_ms, 1), "ratio_max": round(baseline["p50_ms"] / chain_ms, 1)}


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    size = dict(SIZES["quick" if args.quick else "full"])
    if args.targets:
        size["targets"] = tuple(args.targets)
    counts: tuple[int, ...] = size["targets"]
    moto_targets = args.moto_ledger_targets or size["moto_targets"]
    if moto_targets not in counts:
        moto_targets = max(counts)
    load_at_start = load_average()
    with contextlib.ExitStack() as stack:
        lab = Lab(stack, args, max(counts))
        token = airflow_token(lab.downstream.urls[0])
        rtt = round_trips(lab.downstream.urls[0], token, size["round_trips"])
        round_trip = summary(rtt)
        print(f"round trip p50 {round_trip['p50_ms']} ms", file=sys.stderr, flush=True)
        rows: list[dict[str, Any]] = []
        baselines: dict[int, dict[str, Any]] = {}
        for count in counts:
            naive = NaiveLoop(lab.downstream.urls[:count], asset_id=1, token=token)
            row = measure(
                lab, targets=count, ledger="memory", ledger_latency_ms=args.ledger_latency_ms,
                batches=size["batches"], warmup=size["warmup"], max_workers=args.max_workers,
                baseline=naive, baseline_batches=size["baseline_batches"],
            )  # fmt: skip
            baselines[count] = row["baseline"]
            judge(row, baselines[count], round_trip["p50_ms"])
            rows.append(row)
            print(_row_line(row), file=sys.stderr, flush=True)
        from dataset_forwarder.settings import Settings

        max_workers = args.max_workers or Settings("-", "-").max_workers
        parts = Parts(
            lab, targets=max(counts), token=token, ledger_latency_ms=args.ledger_latency_ms, workers=max_workers
        ).measure(rounds=size["parts_rounds"], warmup=2)
        parts["targets"] = max(counts)
        print(_parts_line(parts), file=sys.stderr, flush=True)
        row = measure(
            lab, targets=moto_targets, ledger="dynamodb-moto", ledger_latency_ms=0.0,
            batches=size["moto_batches"], warmup=1, max_workers=args.max_workers,
        )  # fmt: skip
        judge(row, baselines[moto_targets], round_trip["p50_ms"])
        rows.append(row)
        print(_row_line(row), file=sys.stderr, flush=True)
    return {
        "benchmark": "forwarder_throughput",
        "mode": "quick" if args.quick else "full",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_at_start),
        "settings": {
            "records_per_batch": RECORDS_PER_BATCH,
            "target_counts": list(counts),
            "post_delay_ms": args.post_delay_ms,
            "downstream": "FakeAirflow (Airflow 3 API, airflow-token auth), every POST answered after the delay, "
            "all fakes in one process; SSM, SQS and DynamoDB on moto server (another process)",
            "ledger_latency_ms": args.ledger_latency_ms,
            "max_workers": max_workers,
            "sizes": {key: list(value) if isinstance(value, tuple) else value for key, value in size.items()},
            "goal": f"batch p50 <= {GOAL_RTT_FACTOR} x round trip + {GOAL_SLACK_MS:g} ms; "
            f"ratio (baseline / ours) >= {GOAL_RATIO_FACTOR} x records x targets",
        },
        "round_trip": round_trip,
        "rows": rows,
        "parts": parts,
    }


def _row_line(row: dict[str, Any]) -> str:
    return (
        f"{row['targets']} targets, ledger {row['ledger']}: first {row['first_batch']['wall_ms']} ms, "
        f"warm p50 {row['ours']['p50_ms']} ms (cpu {row['ours_cpu']['p50_ms']} ms), "
        f"baseline p50 {row['baseline']['p50_ms']} ms, ratio {row['ratio']}"
    )


def _parts_line(parts: dict[str, Any]) -> str:
    ledger, post = parts["ledger_only"], parts["post_only"]
    return (
        f"the parts alone, {parts['pairs']} pairs at once ({parts['targets']} targets): "
        f"ledger claim + completion {ledger['cpu']['p50_ms']} ms CPU ({ledger['wall']['p50_ms']} ms wall), "
        f"POST {post['cpu']['p50_ms']} ms CPU ({post['wall']['p50_ms']} ms wall): "
        f"CPU floor {parts['cpu_floor_ms']} ms per batch"
    )


def table(result: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "yes" if ok else "no"

    lines = [
        f"one round trip (POST on a warm session, fake answers after {result['settings']['post_delay_ms']:g} ms): "
        f"p50 {result['round_trip']['p50_ms']} ms",
        "",
        "| targets | ledger | first batch ms | batch p50 ms | CPU ms/batch | fakes' CPU ms/batch | records/s "
        "| deliveries/s "
        "| baseline p50 ms | baseline deliveries/s | ratio | goal batch ms | ok | goal ratio | ok | ratio bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ledger = f"memory +{row['ledger_latency_ms']:g} ms/op" if row["ledger"] == "memory" else "moto DynamoDB"
        goal = row["goal"]
        lines.append(
            f"| {row['targets']} | {ledger} | {row['first_batch']['wall_ms']:.0f} | {row['ours']['p50_ms']:.1f} "
            f"| {row['ours_cpu']['p50_ms']:.0f} | {row['downstream_cpu_ms_per_batch']:.0f} "
            f"| {row['ours']['records_per_s']:.0f} "
            f"| {row['ours']['deliveries_per_s']:.0f} | {row['baseline']['p50_ms']:.0f} "
            f"| {row['baseline']['deliveries_per_s']:.1f} | {row['ratio']:.1f} | {goal['batch_ms_max']:.0f} "
            f"| {mark(goal['batch_ok'])} | {goal['ratio_min']:.0f} | {mark(goal['ratio_ok'])} "
            f"| {row['bound']['ratio_max'] if 'bound' in row else '-'} |"
        )
    if "parts" in result:
        lines.append(f"\n{_parts_line(result['parts'])}")
    machine_info = result["machine"]
    lines.append(
        f"\n{machine_info['cpus']} CPUs, load average {machine_info['load_avg_at_start']} -> "
        f"{machine_info['load_avg_at_end']}, Python {machine_info['python']}, max_workers "
        f"{result['settings']['max_workers']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few batches, for a smoke run (~30 s)")
    parser.add_argument(
        "--out", type=Path, help=f"results file (default: {DEFAULT_OUT.relative_to(REPO_ROOT)}; --quick: a temp file)"
    )
    parser.add_argument("--targets", type=int, nargs="+", help="target counts (default: 1 5 20)")
    parser.add_argument("--post-delay-ms", type=float, default=50.0, help="how long the fakes take to answer a POST")
    parser.add_argument("--ledger-latency-ms", type=float, default=5.0, help="simulated DynamoDB call, per operation")
    parser.add_argument("--moto-ledger-targets", type=int, help="target count of the moto DynamoDB row (20; quick: 5)")
    parser.add_argument("--max-workers", type=int, help="MAX_WORKERS for the forwarder (default: its own default)")
    parser.add_argument("--serve-downstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve_downstream:
        serve_downstream(args.serve_downstream, args.post_delay_ms)
        return
    run_and_record(args, name="forwarder_throughput", default_out=DEFAULT_OUT, orchestrate=orchestrate, table=table)


if __name__ == "__main__":
    main()
