"""Where a warm handler's time goes on a lone event: invocation → downstream has the POST → handler returns.

    VENV/bin/python bench/handler_profile.py [--quick] [--runs N] [--out FILE]

The real handler (app.lambda_handler, built by runtime.build as on Lambda) forwards one single-record batch per
invocation to a fake Airflow 3 on 127.0.0.1, its ledger on moto server's DynamoDB. After a warm-up invocation (cold
clients, version probe, token, asset lookup), each of N invocations is timed in segments:
  to POST     invocation start → the downstream read the POST (the fake's receive time): what the event waits
  after POST  the POST's receipt → the handler returns (answer, ledger completion, log line, metrics flush)
Side by side in the same run, the floors the handler cannot beat: one DynamoDB PutItem (the ledger's claim, needed
for at-most-once before any POST) and one bare urllib3 POST to the same fake, each timed alone. A cProfile of the
measured invocations lists the functions that take the handler's own CPU time.
"""

# ruff: noqa: PLC0415, PLR0915 - the code under test is imported once its environment is set; one linear run
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from harness import (
    FUNCTION_DIR,
    RESULTS_DIR,
    MotoServer,
    aws_environment,
    import_paths,
    load_average,
    machine,
    sqs_event,
)
from harness import run_and_record as record

DEFAULT_OUT = RESULTS_DIR / "handler_profile.json"
URI = "s3://bench/handler-profile"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def stats_ms(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": pct(values, 0.95),
        "min_ms": round(min(values) * 1000, 2),
    }


@contextlib.contextmanager
def stdout_to(path: Path) -> Any:
    with path.open("a") as log, contextlib.redirect_stdout(log):
        yield


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = load_average()
    import_paths()
    runs = args.runs or (5 if args.quick else 100)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adf-handler-profile-")))
        moto = MotoServer(log_path=work / "moto.log").start()
        stack.callback(moto.stop)
        os.environ.update(aws_environment(moto.endpoint))
        os.environ.update(
            POWERTOOLS_SERVICE_NAME="dataset-forwarder",
            POWERTOOLS_METRICS_NAMESPACE="DatasetForwarderBench",
            LAMBDA_TASK_ROOT=str(FUNCTION_DIR),
        )
        os.environ.pop("AWS_PROFILE", None)

        import boto3
        import urllib3

        from dataset_forwarder import runtime
        from dataset_forwarder.settings import Settings
        from dataset_forwarder_cli.local.bootstrap import LambdaContext
        from devkit.airflow_api import FakeAirflow
        from devkit.aws import ForwarderStack

        fake = stack.enter_context(FakeAirflow("3", datasets=[URI]))
        resources = ForwarderStack.create(boto3.session.Session())
        resources.put_target("down", {"url": fake.url, "airflow": "auto", "datasets": [URI]})
        arn = resources.sqs.get_queue_attributes(QueueUrl=resources.queue_url, AttributeNames=["QueueArn"])
        queue_arn = arn["Attributes"]["QueueArn"]
        runtime.install(runtime.build(Settings.from_env({**resources.env(), "ALLOW_HTTP_TARGETS": "true"})))
        import app

        log_path = work / "handler.log"

        def invoke() -> tuple[float, float, float]:
            event = sqs_event(queue_arn, uri=URI)
            before = len(fake.events)
            with stdout_to(log_path):
                started = time.monotonic()
                response = app.lambda_handler(event, LambdaContext(timeout_s=60.0))
                ended = time.monotonic()
            if response != {"batchItemFailures": []} or len(fake.events) != before + 1:
                raise SystemExit(f"the event was not delivered: {response}; see {log_path}")
            return started, fake.events[-1].received_at, ended

        invoke()  # warm-up: cold clients, version probe, asset lookup
        to_post: list[float] = []
        after_post: list[float] = []
        profiler = cProfile.Profile()
        for _ in range(runs):
            profiler.enable()
            started, received, ended = invoke()
            profiler.disable()
            to_post.append(received - started)
            after_post.append(ended - received)

        # The floors, alone: the ledger's claim (one PutItem) and one POST to the same fake.
        dynamodb = boto3.client("dynamodb")
        put_item: list[float] = []
        for _ in range(runs):
            started = time.monotonic()
            dynamodb.put_item(TableName=resources.table, Item={"id": {"S": f"bench#{uuid.uuid4().hex}"}})
            put_item.append(time.monotonic() - started)
        pool = urllib3.PoolManager()
        asset_id = fake.add_dataset("s3://bench/floor")
        post: list[float] = []
        for _ in range(runs):
            started = time.monotonic()
            pool.request("POST", f"{fake.url}/api/v2/assets/events", json={"asset_id": asset_id, "extra": {}})
            post.append(time.monotonic() - started)

        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
        top = [line for line in text.getvalue().splitlines() if line.strip()][-26:]

    return {
        "benchmark": "handler_profile",
        "runs": runs,
        "segments": {"to_post": stats_ms(to_post), "after_post": stats_ms(after_post)},
        "floors": {"dynamodb_put_item": stats_ms(put_item), "bare_post": stats_ms(post)},
        "profile_tottime_top": top,
        "machine": machine(load_at_start),
    }


def table(result: dict[str, Any]) -> str:
    seg, floors = result["segments"], result["floors"]
    lines = [
        f"warm handler, one record, {result['runs']} invocations (ms)        p50     p95     min",
        *(f"  {name:<52} {row['p50_ms']:>7} {row['p95_ms']:>7} {row['min_ms']:>7}" for name, row in seg.items()),
        "floors, alone:",
        *(f"  {name:<52} {row['p50_ms']:>7} {row['p95_ms']:>7} {row['min_ms']:>7}" for name, row in floors.items()),
        "",
        "profile of the measured invocations (by own time):",
        *result["profile_tottime_top"],
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run (5 invocations), results not recorded")
    parser.add_argument("--runs", type=int, help="measured invocations (default 100)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    record(args, name="handler_profile", default_out=DEFAULT_OUT, orchestrate=orchestrate, table=table)


if __name__ == "__main__":
    sys.exit(main())
