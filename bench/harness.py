"""What the forwarder's benchmarks share: the handler on the path, statistics, machine facts, recording.

moto server, ports and the fake AWS environment are devkit's (`devkit.moto_env`), as the tests use them.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devkit.envelopes import envelope
from devkit.moto_env import DEFAULT_REGION as REGION
from devkit.moto_env import MotoServer
from devkit.moto_env import fake_aws_env as aws_environment
from devkit.paths import FUNCTION_DIR, REPO_ROOT

__all__ = ["FUNCTION_DIR", "REGION", "REPO_ROOT", "MotoServer", "aws_environment"]  # what the benchmarks import

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def import_paths() -> None:
    """The handler's directory on the path, as Lambda's /var/task is, so that `import app` finds the handler module
    the function runs (it is no package, and the CLI's wheel does not carry it)."""
    if str(FUNCTION_DIR) not in sys.path:
        sys.path.insert(0, str(FUNCTION_DIR))


def sqs_event(queue_arn: str, records: int = 1, *, uri: str) -> dict[str, Any]:
    """An SQS event as Lambda's event source hands it to the function: `records` envelopes for `uri`, fresh ids."""
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
