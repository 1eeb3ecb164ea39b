"""What the forwarder's benchmarks share: moto server in a process of its own, statistics, machine facts."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
FUNCTION_DIR = REPO_ROOT / "functions" / "forwarder"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
REGION = "us-east-1"


def import_paths() -> None:
    """The handler's directory (as Lambda's /var/task), the CLI and the repository root (tests.fakes)."""
    for path in (str(FUNCTION_DIR), str(REPO_ROOT / "cli"), str(REPO_ROOT)):
        if path not in sys.path:
            sys.path.insert(0, path)


def sqs_event(queue_arn: str, records: int = 1, *, uri: str) -> dict[str, Any]:
    """An SQS event as Lambda's event source hands it to the function: `records` envelopes for `uri`, fresh ids."""
    import_paths()
    from tests.fakes.envelopes import envelope  # noqa: PLC0415 - importable once the paths are set

    now_ms = str(int(time.time() * 1000))
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"bench-{uuid.uuid4().hex}",
                "body": json.dumps(envelope(uri)),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": now_ms,
                    "SenderId": "bench",
                    "ApproximateFirstReceiveTimestamp": now_ms,
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            }
            for _ in range(records)
        ]
    }


def summary(seconds: list[float]) -> dict[str, Any]:
    """n, median, min, max and mean in milliseconds."""
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_ms": round(statistics.median(seconds) * 1000, 2),
        "min_ms": round(min(seconds) * 1000, 2),
        "max_ms": round(max(seconds) * 1000, 2),
        "mean_ms": round(statistics.fmean(seconds) * 1000, 2),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine(load_at_start: list[float]) -> dict[str, Any]:
    """CPU count, load average before and after the run, Python, platform and the git commit measured."""

    def git(*args: str) -> str:
        command = ["git", *args]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)  # noqa: S603
        return done.stdout.strip()

    return {
        "cpus": os.cpu_count(),
        "load_avg_at_start": load_at_start,
        "load_avg_at_end": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def aws_environment(endpoint: str) -> dict[str, str]:
    """Fake credentials and every AWS client pointed at moto server."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


class MotoServer:
    """moto server in a process of its own (as tests/integration runs it), ready once werkzeug says it runs."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self._process = subprocess.Popen(  # noqa: S603 - moto from this interpreter's venv
            [sys.executable, "-m", "dataset_forwarder_cli.local.moto_fixes", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._ready = threading.Event()
        self._log = log_path.open("w")
        self._drainer = threading.Thread(target=self._drain, name="moto-log", daemon=True)
        self._drainer.start()
        if not self._ready.wait(timeout=60):
            self.close()
            raise SystemExit(f"moto server did not start; see {log_path}")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        """Keep reading its log (a full pipe would stall it); the werkzeug banner means it listens."""
        stream = self._process.stderr
        assert stream is not None
        for line in stream:
            self._log.write(line)
            if "Running on" in line:
                self._ready.set()

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._drainer.join(timeout=10)  # the pipe is at its end: the last lines are written, then it stops
        self._log.close()


def run_and_record(
    args: Any,
    *,
    name: str,
    default_out: Path,
    orchestrate: Callable[[Any], dict[str, Any]],
    table: Callable[[dict[str, Any]], str],
) -> None:
    """Run a benchmark, write its results (`args.out`) and print its table.

    SIGTERM unwinds like an error, so moto server and the fakes are stopped; a smoke run (`--quick`) never
    overwrites the recorded results.
    """
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / f"{name}.quick.json" if args.quick else default_out
    started = time.monotonic()
    result = orchestrate(args)
    result["wall_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwritten to {args.out} in {result['wall_s']} s", file=sys.stderr)
