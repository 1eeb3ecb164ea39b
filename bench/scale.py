"""Scale: tens of thousands of events through moto SQS, the local event source and the real handler.

    python bench/scale.py [--events 50000] [--quick] [--out FILE]

The path is the one `dataset-forwarder local up` runs: moto server (SQS and SSM on one, DynamoDB on another), the
`Poller` with `MaximumConcurrency` pollers and as many execution-environment processes running the real
`app.lambda_handler`, and fast fake Airflow 3 downstreams on 127.0.0.1. A feeder keeps a bounded backlog on the
queue (moto's ReceiveMessage walks the whole queue, which real SQS does not). It reports:

- sustained events/s and deliveries/s (from 20% of the events on, after the cold starts);
- the resident set size of every execution environment at each tenth of the run: it must stay flat;
- SSM calls by operation, counted by a proxy in front of moto's SSM endpoint, next to the number of invocations
  and environments: targets and secrets are cached for `CONFIG_TTL_S`, so SSM sees O(environments x run time /
  TTL) calls, not one per event.
"""

# ruff: noqa: PLC0415, PLR0915 - the code under test is imported once its environment is set; one linear run

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "scale.json"
BACKLOG = 500
DATASETS = [f"s3://scale/ds-{i:02d}" for i in range(20)]


def machine() -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": commit,
        "load_average_start": list(os.getloadavg()),
    }


class CountingProxy(ThreadingHTTPServer):
    """Forwards every request to `upstream` and counts them by `X-Amz-Target` (the AWS JSON protocol's action)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ProxyHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: CountingProxy
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        action = self.headers.get("X-Amz-Target", "?").rpartition(".")[2]
        with self.server.lock:
            self.server.counts[action] += 1
        upstream = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            upstream.request("POST", self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            self.send_response(response.status)
            for key, value in response.getheaders():
                if key.lower() not in ("content-length", "connection", "transfer-encoding", "server", "date"):
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        finally:
            upstream.close()

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def counting_proxy(upstream: str) -> Iterator[CountingProxy]:
    proxy = CountingProxy(upstream)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()


def environment_memory() -> dict[int, dict[str, int]]:
    """RSS and peak RSS (KiB) of this process's execution environments (children running the bootstrap)."""
    found: dict[int, dict[str, int]] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0")) != me or b"dataset_forwarder_cli.local.bootstrap" not in cmdline:
            continue
        found[int(entry.name)] = {
            "rss_kib": int(fields["VmRSS"].split()[0]),
            "peak_rss_kib": int(fields["VmHWM"].split()[0]),
        }
    return found


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        threading.Event().wait(0.05)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import boto3

    from dataset_forwarder_cli.local.poller import EventSourceConfig, FunctionConfig, Poller, ProcessInvoker
    from devkit.airflow_api import FakeAirflow
    from devkit.aws import ForwarderStack
    from devkit.envelopes import envelope
    from devkit.moto_env import fake_aws_env, moto_server

    info = machine()
    logs = Path(tempfile.mkdtemp(prefix="adf-scale-"))
    with ExitStack() as stack:
        sqs_endpoint = stack.enter_context(moto_server(logs / "moto.log"))
        dynamodb_endpoint = stack.enter_context(moto_server(logs / "moto-dynamodb.log"))
        ssm_proxy = stack.enter_context(counting_proxy(sqs_endpoint))
        aws = {
            **fake_aws_env(sqs_endpoint),
            "AWS_ENDPOINT_URL_DYNAMODB": dynamodb_endpoint,
            "AWS_ENDPOINT_URL_SSM": ssm_proxy.url,
        }
        os.environ.update(aws)
        resources = ForwarderStack.create(boto3.session.Session(), visibility_timeout_s=60)
        fakes = [stack.enter_context(_fake(FakeAirflow, auth="bearer", token=f"tok-{i}")) for i in range(args.targets)]
        for i, fake in enumerate(fakes):
            for uri in DATASETS:
                fake.add_dataset(uri)
            secret = resources.put_secret(f"team-{i}", f"tok-{i}")
            auth = {"type": "bearer", "secret": secret}
            resources.put_target(f"team-{i}", {"url": fake.url, "datasets": ["s3://scale/*"], "auth": auth})
        ssm_proxy.counts.clear()  # only what the function asks from here on

        function = FunctionConfig(
            name="dataset-forwarder-scale",
            handler="app.lambda_handler",
            code_dir=REPO_ROOT / "functions" / "forwarder",
            timeout_s=60,
            environment={
                **aws,
                **resources.env(),
                "ALLOW_HTTP_TARGETS": "true",
                "CONFIG_TTL_S": str(args.config_ttl_s),
                "POWERTOOLS_LOG_LEVEL": "WARNING",
                "POWERTOOLS_METRICS_DISABLED": "true",
            },
        )
        source = EventSourceConfig.for_queue(
            resources.sqs,
            resources.queue_url,
            batch_size=10,
            maximum_concurrency=args.concurrency,
            wait_time_s=1,
        )
        invocations = Counter[str]()
        poller = Poller(
            resources.sqs,
            source,
            ProcessInvoker(function, size=args.concurrency),
            keep_invocations=0,
            poll_slice_s=1,
            on_invocation=lambda inv: invocations.update(
                {"invocations": 1, "records": len(inv.message_ids), "failed_batches": int(bool(inv.batch_error))}
            ),
        )
        stack.callback(poller.stop, 30)
        poller.start()

        started = time.monotonic()
        checkpoints: list[dict[str, Any]] = []
        sent = 0
        step = max(1, args.events // 10)
        next_checkpoint = step
        steady_from: tuple[float, int] | None = None
        delivered_total = lambda: sum(len(f.events) for f in fakes)  # noqa: E731
        while sent < args.events:
            wait_for(lambda: poller.pending() < BACKLOG, timeout_s=120, what="the backlog to shrink")
            count = min(100, args.events - sent)
            resources.send_many([json.dumps(envelope(DATASETS[(sent + i) % len(DATASETS)])) for i in range(count)])
            sent += count
            if sent >= next_checkpoint:
                delivered = delivered_total()
                elapsed = time.monotonic() - started
                if steady_from is None and sent >= 2 * step:  # from 20 %: every environment is warm
                    steady_from = (elapsed, delivered)
                checkpoints.append(
                    {
                        "sent": sent,
                        "delivered": delivered,
                        "elapsed_s": round(elapsed, 2),
                        "environments": environment_memory(),
                        "ssm_calls": sum(ssm_proxy.counts.values()),
                    }
                )
                print(
                    f"[scale] sent {sent:>6} delivered {delivered:>7} in {elapsed:6.1f}s "
                    f"rss MiB {sorted(m['rss_kib'] // 1024 for m in checkpoints[-1]['environments'].values())} "
                    f"ssm calls {checkpoints[-1]['ssm_calls']}",
                    flush=True,
                )
                next_checkpoint += step
        expected = args.events * args.targets
        wait_for(lambda: delivered_total() >= expected, timeout_s=600, what="every delivery")
        wait_for(lambda: poller.pending() == 0, timeout_s=120, what="the queue to drain")
        elapsed = time.monotonic() - started
        final_memory = environment_memory()
        poller.stop(30)
        delivered = delivered_total()
        received = Counter((e.extra["dataset_forwarder"]["id"], t.url) for t in fakes for e in t.events)
        duplicates = sum(n - 1 for n in received.values())

    assert steady_from is not None
    steady_s = elapsed - steady_from[0]
    steady_deliveries = delivered - steady_from[1]
    warm = next(c for c in checkpoints if c["sent"] >= 2 * step)
    rss_first = [m["rss_kib"] for m in warm["environments"].values()]
    rss_last = [m["rss_kib"] for m in final_memory.values()]
    result = {
        "benchmark": "scale",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {**info, "load_average_end": list(os.getloadavg())},
        "settings": {
            "events": args.events,
            "targets": args.targets,
            "pollers_and_environments": args.concurrency,
            "batch_size": 10,
            "config_ttl_s": args.config_ttl_s,
            "backlog_cap": BACKLOG,
        },
        "elapsed_s": round(elapsed, 1),
        "deliveries": delivered,
        "duplicates": duplicates,
        "events_per_s": round(args.events / elapsed, 1),
        "deliveries_per_s": round(delivered / elapsed, 1),
        "steady_deliveries_per_s": round(steady_deliveries / steady_s, 1) if steady_s > 0 else None,
        "invocations": invocations["invocations"],
        "failed_batches": invocations["failed_batches"],
        "records_per_invocation": round(invocations["records"] / max(1, invocations["invocations"]), 2),
        "rss_mib_at_20_percent": sorted(round(r / 1024, 1) for r in rss_first),
        "rss_mib_end": sorted(round(r / 1024, 1) for r in rss_last),
        "rss_growth_mib_median": round((statistics.median(rss_last) - statistics.median(rss_first)) / 1024, 1),
        "peak_rss_mib_end": sorted(round(m["peak_rss_kib"] / 1024, 1) for m in final_memory.values()),
        "ssm_calls": dict(ssm_proxy.counts),
        "ssm_calls_total": sum(ssm_proxy.counts.values()),
        "checkpoints": checkpoints,
    }
    return result


@contextmanager
def _fake(fake_class: Any, **kwargs: Any) -> Iterator[Any]:
    fake = fake_class("3", **kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="pollers and execution environments")
    parser.add_argument("--config-ttl-s", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="1,000 events, for a smoke run")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.events = min(args.events, 1000)
    out = args.out or (Path(tempfile.gettempdir()) / "scale-quick.json" if args.quick else DEFAULT_OUT)
    result = run(args)
    problems = []
    if result["deliveries"] != args.events * args.targets or result["duplicates"]:
        problems.append(f"expected {args.events * args.targets} deliveries once each: {result['deliveries']}")
    if result["failed_batches"]:
        problems.append(f"{result['failed_batches']} failed batches")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"[scale] {args.events} events x {args.targets} targets in {result['elapsed_s']} s: "
        f"{result['events_per_s']} events/s, {result['deliveries_per_s']} deliveries/s "
        f"(steady {result['steady_deliveries_per_s']}); {result['invocations']} invocations; "
        f"RSS MiB at 20% {result['rss_mib_at_20_percent']} end {result['rss_mib_end']}; "
        f"SSM calls {result['ssm_calls']} -> {out}"
    )
    if problems:
        raise SystemExit("; ".join(problems))


if __name__ == "__main__":
    main()
