"""The forwarder Lambda's cold start, against a straightforward Powertools handler, and the layer's size.

    PY=~/.cache/airflow-dataset-forwarder/venv-dev-*/bin/python
    $PY bench/cold_start.py [--quick] [--out FILE] [--layer-build-dir DIR | --build-layer] [--python PY ...]

Runs in the dev venv (the layer's packages, boto3, moto and aws-xray-sdk, which moto depends on and the
straightforward handler's Tracer needs). Every sample is a fresh interpreter, like a new Lambda execution
environment: it imports the handler module (a), then serves one SQS record with one target (b) against moto
server (SSM, SQS, DynamoDB; another process) and a fake Airflow 2 on 127.0.0.1 (this process) that answers at
once. The child runs a few lines of code before the import, so nothing the handler needs is imported early.

- ours: `app` from functions/forwarder (the SAM function's code), the idempotency table on moto's DynamoDB;
- straightforward: bench/straightforward_handler.py (Logger, Tracer, Metrics, BatchProcessor, idempotency,
  boto3 clients for SSM/SQS/DynamoDB and requests, all at import), same job on the happy path.

Bytecode: the layer ships .pyc files, so every module comes from a bytecode cache here (PYTHONPYCACHEPREFIX in a
scratch directory, filled by one untimed run of each handler). Lambda does not compile the function's own code
(/var/task is read-only): what compiling it costs is reported apart. Goals: our import p50 <= 300 ms and at
least 2x faster than the straightforward one's; import + first record <= 1 s.

Runtimes: `--python PY` (repeatable) runs the fresh interpreters with PY instead of this one, e.g. a python3.11
and a python3.13 venv holding the same pins (boto3, the layer's requirements, aws-xray-sdk, requests), to compare
Lambda runtimes side by side: samples alternate between them. The first is the runtime of record ("handlers",
the goals); every one is under "runtimes".
"""

# ruff: noqa: PLC0415

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    FUNCTION_DIR,
    REGION,
    REPO_ROOT,
    RESULTS_DIR,
    MotoServer,
    aws_environment,
    load_average,
    machine,
    run_and_record,
    sqs_event,
    summary,
)

DEFAULT_OUT = RESULTS_DIR / "cold_start.json"
BENCH_DIR = Path(__file__).resolve().parent
# Where `make sam-build` (mk/sam.mk SAM_BUILD_DIR) puts the built function and layer.
SAM_BUILD_DIR = Path(os.environ.get("TMPDIR") or "/tmp") / "airflow-dataset-forwarder-sam" / "build"  # noqa: S108
LAYER = "DependenciesLayer"
URI = "s3://lake/bench/cold"
USERNAME = "forwarder"
PASSWORD = "bench-password"  # noqa: S105 - a fake Airflow's password
GOAL_IMPORT_MS = 300.0
GOAL_IMPORT_RATIO = 2.0
GOAL_FIRST_RECORD_MS = 1000.0
HANDLERS = {"ours": ("app", FUNCTION_DIR), "straightforward": ("straightforward_handler", BENCH_DIR)}
SIZES = {"full": {"samples": 15}, "quick": {"samples": 5}}

# The child: the clock starts before the handler's import, with only sys and time loaded by this code.
CHILD = """\
import sys, time
started = time.perf_counter()
import {module} as handler
imported = time.perf_counter()
import json


class Context:
    function_name = "dataset-forwarder"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:{region}:123456789012:function:dataset-forwarder"
    aws_request_id = "cold-start"
    log_group_name = "/aws/lambda/dataset-forwarder"
    log_stream_name = "cold-start"

    def get_remaining_time_in_millis(self):
        return 60000


response = handler.lambda_handler(json.loads(sys.argv[1]), Context())
served = time.perf_counter()
with open(sys.argv[2], "w") as out:
    json.dump({{"import_s": imported - started, "first_record_s": served - started, "response": response}}, out)
"""


class Lab:
    """moto server with the forwarder's resources and one target: a fake Airflow 2 in this process."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        import boto3

        from devkit.airflow_api import FakeAirflow
        from devkit.aws import ForwarderStack

        self.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adf-cold-start-")))
        moto = MotoServer(log_path=self.work / "moto.log").start()
        stack.callback(moto.stop)
        aws = aws_environment(moto.endpoint)
        session = boto3.session.Session(
            aws_access_key_id=aws["AWS_ACCESS_KEY_ID"], aws_secret_access_key=aws["AWS_SECRET_ACCESS_KEY"]
        )
        with _environment(aws):
            self.resources = ForwarderStack.create(session)
        self.downstream = FakeAirflow("2", datasets=[URI], auth="basic", username=USERNAME, password=PASSWORD)
        stack.enter_context(self.downstream)
        secret = self.resources.put_secret("team-b", PASSWORD)
        self.resources.put_target(
            "team-b",
            {
                "url": self.downstream.url,
                "airflow": "2",
                "datasets": [URI],
                "auth": {"type": "basic", "username": USERNAME, "secret": secret},
                "timeout_s": 10,
            },
        )
        arn = self.resources.sqs.get_queue_attributes(QueueUrl=self.resources.queue_url, AttributeNames=["QueueArn"])
        self.queue_arn: str = arn["Attributes"]["QueueArn"]
        self.pycache = self.work / "pycache"
        self.env = {
            **{k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER")},
            **aws,
            **self.resources.env(),
            "ALLOW_HTTP_TARGETS": "true",
            "POWERTOOLS_SERVICE_NAME": "dataset-forwarder",
            "POWERTOOLS_METRICS_NAMESPACE": "Bench",
            "POWERTOOLS_TRACE_DISABLED": "true",  # as template.yaml sets it; Tracer() still imports the X-Ray SDK
            "AWS_LAMBDA_FUNCTION_NAME": "dataset-forwarder",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "PYTHONPYCACHEPREFIX": str(self.pycache),
        }

    def sample(self, kind: str, python: str = sys.executable) -> dict[str, Any]:
        """One fresh interpreter: import the handler, serve one record; seconds as the child measured them."""
        module, _ = HANDLERS[kind]
        out = self.work / f"{kind}-{uuid.uuid4().hex}.json"
        code = CHILD.format(module=module, region=REGION)
        event = json.dumps(sqs_event(self.queue_arn, uri=URI))
        before = len(self.downstream.events)
        done = run_in_handler_dir(self.env, kind, [python, "-c", code, event, str(out)], check=False)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(
                f"{kind} cold start failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        result: dict[str, Any] = json.loads(out.read_text())
        if result["response"] != {"batchItemFailures": []} or len(self.downstream.events) != before + 1:
            raise SystemExit(f"{kind} did not deliver its record: {result['response']}\n{done.stdout[-2000:]}")
        return result


def run_in_handler_dir(
    env: dict[str, str], kind: str, command: list[str], *, check: bool
) -> subprocess.CompletedProcess[str]:
    """``command`` (this interpreter, our own code) in the handler's directory, its only import path (as /var/task)."""
    _, directory = HANDLERS[kind]
    return subprocess.run(  # noqa: S603
        command,
        cwd=directory,
        env={**env, "PYTHONPATH": str(directory)},
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def import_profile(lab: Lab, kind: str, python: str = sys.executable, top: int = 8) -> list[dict[str, Any]]:
    """`python -X importtime`: what the handler's import spends most on (its direct imports, cumulative)."""
    module, _ = HANDLERS[kind]
    done = run_in_handler_dir(lab.env, kind, [python, "-X", "importtime", "-c", f"import {module}"], check=True)
    pattern = re.compile(r"import time:\s+\d+ \|\s+(\d+) \|( +)(\S+)")
    lines = done.stderr.splitlines()
    entries = [((len(m.group(2)) - 1) // 2, m.group(3), int(m.group(1))) for m in map(pattern.match, lines) if m]
    # Children are listed before their parent: the handler's subtree is what precedes it up to the last top-level line.
    end = next(i for i, (depth, name, _) in enumerate(entries) if depth == 0 and name == module)
    start = max((i for i, (depth, _, _) in enumerate(entries[:end]) if depth == 0), default=-1) + 1
    direct = [
        {"module": name, "cumulative_ms": round(micros / 1000, 1)}
        for depth, name, micros in entries[start:end]
        if depth == 1
    ]
    largest = sorted(direct, key=lambda row: -row["cumulative_ms"])[:top]
    return [{"module": module, "cumulative_ms": round(entries[end][2] / 1000, 1)}, *largest]


# Compiles the files named on its command line `repeats` times; prints the median in seconds.
COMPILE_CHILD = """\
import statistics, sys, time
sources = [(path, open(path).read()) for path in sys.argv[2:]]
timings = []
for _ in range(int(sys.argv[1])):
    started = time.perf_counter()
    for path, source in sources:
        compile(source, path, "exec")
    timings.append(time.perf_counter() - started)
print(statistics.median(timings))
"""


def compile_cost(kind: str, python: str = sys.executable, repeats: int = 5) -> dict[str, Any]:
    """What compiling the handler's own source costs when no bytecode ships with it (Lambda's /var/task)."""
    module, directory = HANDLERS[kind]
    files = [directory / f"{module}.py"]
    if kind == "ours":
        files += sorted((FUNCTION_DIR / "dataset_forwarder").glob("*.py"))
    command = [python, "-c", COMPILE_CHILD, str(repeats), *map(str, files)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)  # noqa: S603
    return {"files": len(files), "p50_ms": round(float(done.stdout) * 1000, 1)}


def python_version(python: str) -> str:
    """The interpreter's version, e.g. "3.13.0"."""
    command = [python, "-c", "import platform; print(platform.python_version())"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout.strip()  # noqa: S603


def handler_results(timings: dict[str, dict[str, list[float]]], imports: dict[str, Any], python: str) -> dict[str, Any]:
    """Per handler: the summaries of its samples, its import profile and its source's compile cost."""
    return {
        kind: {
            "module": HANDLERS[kind][0],
            "import": summary(measured["import"]),
            "import_and_first_record": summary(measured["first_record"]),
            "import_profile": imports[kind],
            "source_compile": compile_cost(kind, python),
        }
        for kind, measured in timings.items()
    }


def layer_size(build_dir: Path) -> dict[str, Any]:
    """Size of the built dependencies layer (devkit/layer_report.py), or why there is none."""
    from devkit import layer_report

    site = build_dir / LAYER / "python"
    if not site.is_dir():
        return {
            "built": False,
            "build_dir": str(build_dir),
            "how": "make sam-build (or bench/cold_start.py --build-layer)",
        }
    report = layer_report.inspect(build_dir)
    return {
        "built": True,
        "build_dir": str(build_dir),
        "built_at": datetime.fromtimestamp(site.stat().st_mtime, UTC).isoformat(timespec="seconds"),
        "unzipped_bytes": report.unzipped_bytes,
        "zipped_bytes": report.zipped_bytes,
        "unzipped_mib": round(report.unzipped_bytes / 2**20, 2),
        "zipped_mib": round(report.zipped_bytes / 2**20, 2),
        "modules": report.modules,
        "compiled": report.compiled,
        "problems": list(report.problems),
    }


def build_layer(work: Path) -> Path:
    """The layer's own build (layers/dependencies/Makefile, as `sam build` runs it): needs python3.13 and PyPI."""
    build_dir = work / "build"
    artifacts = build_dir / LAYER
    artifacts.mkdir(parents=True)
    command = ["make", "-C", str(REPO_ROOT / "layers" / "dependencies"), "build-DependenciesLayer"]
    subprocess.run([*command, f"ARTIFACTS_DIR={artifacts}"], check=True, timeout=900)  # noqa: S603
    return build_dir


def _ratio(handlers: dict[str, Any]) -> float:
    return float(handlers["straightforward"]["import"]["p50_ms"] / handlers["ours"]["import"]["p50_ms"])


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    samples = SIZES["quick" if args.quick else "full"]["samples"]
    pythons: list[str] = args.python or [sys.executable]
    load_at_start = load_average()
    timings = {py: {kind: {"import": [], "first_record": []} for kind in HANDLERS} for py in pythons}
    with contextlib.ExitStack() as stack:
        lab = Lab(stack)
        for python in pythons:  # untimed: fills the bytecode caches and warms moto's first requests
            for kind in HANDLERS:
                lab.sample(kind, python)
        for index in range(samples):
            # Alternate the order, so that neither runtime nor handler always runs first on a busy machine.
            for python in pythons if index % 2 == 0 else reversed(pythons):
                for kind in HANDLERS if index % 2 == 0 else reversed(HANDLERS):
                    result = lab.sample(kind, python)
                    timings[python][kind]["import"].append(result["import_s"])
                    timings[python][kind]["first_record"].append(result["first_record_s"])
            print(f"sample {index + 1}/{samples}", file=sys.stderr, flush=True)
        imports = {py: {kind: import_profile(lab, kind, py) for kind in HANDLERS} for py in pythons}
        layer_dir = build_layer(lab.work) if args.build_layer else args.layer_build_dir
        layer = layer_size(layer_dir)
    runtimes = []
    for python in pythons:
        measured = handler_results(timings[python], imports[python], python)
        version = python_version(python)
        runtimes.append(
            {"python": version, "executable": python, "handlers": measured, "import_ratio": round(_ratio(measured), 2)}
        )
    handlers = runtimes[0]["handlers"]
    ours = handlers["ours"]
    ratio = _ratio(handlers)
    return {
        "benchmark": "cold_start",
        "mode": "quick" if args.quick else "full",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(load_at_start),
        "settings": {
            "samples": samples,
            "record": "one SQS record, one target (fake Airflow 2, basic auth, answers at once)",
            "aws": "SSM, SQS, DynamoDB on moto server in its own process",
            "bytecode": "all modules from a bytecode cache (PYTHONPYCACHEPREFIX), filled by an untimed run",
        },
        "python": runtimes[0]["python"],
        "handlers": handlers,
        "import_ratio": round(ratio, 2),
        "goal": {
            "import_ms_max": GOAL_IMPORT_MS,
            "import_ok": ours["import"]["p50_ms"] <= GOAL_IMPORT_MS,
            "import_ratio_min": GOAL_IMPORT_RATIO,
            "import_ratio_ok": ratio >= GOAL_IMPORT_RATIO,
            "first_record_ms_max": GOAL_FIRST_RECORD_MS,
            "first_record_ok": ours["import_and_first_record"]["p50_ms"] <= GOAL_FIRST_RECORD_MS,
        },
        "layer": layer,
        "runtimes": runtimes,
    }


def table(result: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "yes" if ok else "no"

    handlers, goal = result["handlers"], result["goal"]
    lines = [
        "| handler | import p50 ms | min | max | import + first record p50 ms | min | max | compile own source ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind, row in handlers.items():
        first = row["import_and_first_record"]
        lines.append(
            f"| {kind} (`{row['module']}`) | {row['import']['p50_ms']:.0f} | {row['import']['min_ms']:.0f} "
            f"| {row['import']['max_ms']:.0f} | {first['p50_ms']:.0f} | {first['min_ms']:.0f} | {first['max_ms']:.0f} "
            f"| {row['source_compile']['p50_ms']:.0f} |"
        )
    lines += [
        "",
        f"import ratio (straightforward / ours): {result['import_ratio']:.2f}",
        f"goals: import <= {goal['import_ms_max']:g} ms: {mark(goal['import_ok'])}; "
        f"ratio >= {goal['import_ratio_min']:g}: {mark(goal['import_ratio_ok'])}; "
        f"import + first record <= {goal['first_record_ms_max']:g} ms: {mark(goal['first_record_ok'])}",
        "",
        "largest direct imports (ms, cumulative, one `-X importtime` run):",
    ]
    for kind, row in handlers.items():
        listed = ", ".join(f"{item['module']} {item['cumulative_ms']:g}" for item in row["import_profile"][1:7])
        lines.append(f"  {kind}: {listed}")
    if len(result.get("runtimes", [])) > 1:
        lines += ["", "| runtime | handler | import p50 ms | import + first record p50 ms | compile own source ms |"]
        lines.append("|---|---|---|---|---|")
        for runtime in result["runtimes"]:
            for kind, row in runtime["handlers"].items():
                lines.append(
                    f"| Python {runtime['python']} | {kind} | {row['import']['p50_ms']:.0f} "
                    f"| {row['import_and_first_record']['p50_ms']:.0f} | {row['source_compile']['p50_ms']:.0f} |"
                )
    layer = result["layer"]
    if layer["built"]:
        lines.append(
            f"\nlayer {LAYER}: {layer['unzipped_mib']} MiB unzipped, {layer['zipped_mib']} MiB zipped, "
            f"{layer['compiled']}/{layer['modules']} modules with bytecode (built {layer['built_at']})"
        )
    else:
        lines.append(f"\nlayer {LAYER}: not built in {layer['build_dir']} ({layer['how']})")
    info = result["machine"]
    lines.append(
        f"{info['cpus']} CPUs, load average {info['load_avg_at_start']} -> {info['load_avg_at_end']}, "
        f"handlers on Python {result.get('python', info['python'])}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 samples per handler instead of 15, a smoke run")
    parser.add_argument(
        "--out", type=Path, help=f"results file (default: {DEFAULT_OUT.relative_to(REPO_ROOT)}; --quick: a temp file)"
    )
    layer = parser.add_mutually_exclusive_group()
    layer.add_argument(
        "--layer-build-dir",
        type=Path,
        default=SAM_BUILD_DIR,
        help=f"a `sam build` directory (default: {SAM_BUILD_DIR})",
    )
    layer.add_argument("--build-layer", action="store_true", help="build the layer first (python3.13 and PyPI)")
    parser.add_argument(
        "--python",
        action="append",
        help="interpreter for the handlers' fresh processes (repeat to compare runtimes; default: this one)",
    )
    args = parser.parse_args()

    run_and_record(args, name="cold_start", default_out=DEFAULT_OUT, orchestrate=orchestrate, table=table)


if __name__ == "__main__":
    main()
