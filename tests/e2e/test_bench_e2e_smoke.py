"""Smoke test of bench/e2e_latency.py: a --quick run through the whole real path gives sane, complete numbers, for the
asset-event target, the two trigger_dag rows (HTTPS, MWAA emulator) and the dag_run row (an upstream run's outcome
starting a downstream run).

The bench starts everything itself (local stack, two Airflow 3.3.2 deployments) from the cached venv the
`airflow3_venv` fixture provides, and stops it all on SIGTERM too. The AssetWatcher baseline is left out here: at its
default poll interval one run alone takes up to a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from devkit.paths import REPO_ROOT

BENCH = REPO_ROOT / "bench" / "e2e_latency.py"
RUN_TIMEOUT_S = 600  # a cached smoke run takes 2-5 min (idle to busy machine); past this, stop it and fail
PATH_SEGMENTS = ["upstream_airflow", "listener", "queue_wait", "handler", "downstream_scheduler"]
TRIGGER_SEGMENTS = ["upstream_airflow", "listener", "queue_wait", "handler_and_api"]
DAG_RUN_SEGMENTS = ["listener", "queue_wait", "handler_and_api"]  # from the upstream run's end_date
LISTENER_SPLIT = ["listener_emitted", "listener_send"]  # the listener segment cut at the envelope's emitted_at


def test_quick_e2e_latency_bench_times_every_segment_of_forwarded_runs_for_each_target_kind(
    airflow3_venv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "results" / "e2e_latency_runs.json"
    command = [sys.executable, str(BENCH), "--quick", "--no-asset-watcher", "--out", str(out)]
    # the bench's scratch homes go to tmp_path, so nothing of it outlives the test's directory
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env={**os.environ, "TMPDIR": str(tmp_path)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the bench stops its deployments and the local stack on SIGTERM
        stdout, stderr = process.communicate(timeout=120)
        pytest.fail(f"bench still running after {RUN_TIMEOUT_S} s:\n{stdout[-3000:]}\n{stderr[-5000:]}")

    assert process.returncode == 0, f"{stdout[-3000:]}\n{stderr[-8000:]}"
    result = json.loads(out.read_text())
    assert result["mode"] == "quick"
    assert result["problems"] == []
    assert result["settings"]["airflow_venv"] == airflow3_venv.name
    machine = result["machine"]
    assert machine["cpus"] >= 1
    assert len(machine["load_avg_at_start"]) == 3
    assert len(machine["load_avg_at_end"]) == 3
    assert machine["python"]
    assert machine["git"]["commit"]

    forwarder = result["forwarder"]
    assert len(forwarder["runs"]) == 3
    assert len(forwarder["warmup"]) == 1
    for name in [*PATH_SEGMENTS, "total", *LISTENER_SPLIT, "handler_until_delivered", "downstream_api_answer"]:
        row = forwarder["summary"][name]
        assert row["n"] == 3, row
        assert row["p50_s"] <= row["p95_s"] <= row["max_s"], row
    for run in forwarder["runs"]:
        segments = run["segments_s"]
        assert sum(segments[name] for name in PATH_SEGMENTS) == pytest.approx(segments["total"], abs=0.01), run
        assert 0 < segments["total"] < 60, run
        assert run["task_end"] < run["on_queue"] <= run["invoked"] < run["delivered"], run
        assert run["downstream_event"] <= run["run_created"], run
        assert run["events_in_run"] == 1, run

    # trigger_dag rows, over HTTPS and through the MWAA emulator: the API call creates the run, 2 runs each
    for key in ("trigger_dag", "mwaa_trigger_dag"):
        section = result[key]
        assert len(section["runs"]) == 2, section
        assert len(section["warmup"]) == 1, section
        for name in [*TRIGGER_SEGMENTS, "total", *LISTENER_SPLIT, "handler_until_delivered", "downstream_api_answer"]:
            row = section["summary"][name]
            assert row["n"] == 2, (key, row)
            assert row["p50_s"] <= row["p95_s"] <= row["max_s"], (key, row)
        for run in section["runs"]:
            segments = run["segments_s"]
            assert sum(segments[name] for name in TRIGGER_SEGMENTS) == pytest.approx(segments["total"], abs=0.01), run
            assert 0 < segments["total"] < 60, run
            assert run["task_end"] < run["on_queue"] <= run["invoked"] < run["run_created"] < run["delivered"], run
            assert run["consumer_run_id"] == f"dataset_forwarder__{run['event_id']}", run
            assert run["downstream_event"] is None, run
            assert run["events_in_run"] == 1, run

    # dag_run row: the upstream run's success (dagrun:// URI) starts a downstream run through a trigger_dag target
    section = result["dag_run"]
    assert section["uri"] == "dagrun://bench-up/finish_latency/success", section
    assert len(section["runs"]) == 2, section
    assert len(section["warmup"]) == 1, section
    asides = ["upstream_scheduler", *LISTENER_SPLIT, "handler_until_delivered", "downstream_api_answer"]
    for name in [*DAG_RUN_SEGMENTS, "total", *asides]:
        row = section["summary"][name]
        assert row["n"] == 2, row
        assert row["p50_s"] <= row["p95_s"] <= row["max_s"], row
    assert section["summary"]["total"]["what"].startswith("upstream DAG run end_date"), section["summary"]
    for run in section["runs"]:
        segments = run["segments_s"]
        assert sum(segments[name] for name in DAG_RUN_SEGMENTS) == pytest.approx(segments["total"], abs=0.01), run
        assert 0 < segments["total"] < 60, run
        assert run["task_end"] <= run["run_end"] < run["on_queue"] <= run["invoked"] < run["run_created"], run
        assert run["run_created"] < run["delivered"], run
        assert run["consumer_run_id"] == f"dataset_forwarder__{run['event_id']}", run
        assert run["upstream_event"] is None, run
        assert run["downstream_event"] is None, run
        assert run["events_in_run"] == 1, run

    # the floor under each segment, measured in the same run, and each row's own share beside the floors' sum
    floors = result["floors"]
    assert set(floors) == {"sqs_send", "sqs_long_poll", "dynamodb_put", "airflow_asset_event", "airflow_trigger_dag"}
    for name, row in floors.items():
        assert row["n"] == 3, (name, row)  # the larger of --runs (3) and --trigger-runs (2)
        assert -0.005 <= row["min_s"] <= row["p50_s"] <= row["max_s"] < 5, (name, row)
    for key, segments in [("forwarder", ["listener", "queue_wait", "handler"]),
                          *((k, ["listener", "queue_wait", "handler_and_api"])
                            for k in ("trigger_dag", "mwaa_trigger_dag", "dag_run"))]:  # fmt: skip
        share, runs = result[key]["product_share"], result[key]["runs"]
        sums = sorted(sum(run["segments_s"][name] for name in segments) for run in runs)
        assert share["segments"] == segments, share
        assert share["n"] == len(runs), share
        assert share["p50_s"] == pytest.approx(sums[(len(sums) + 1) // 2 - 1], abs=1e-4), (share, sums)
        assert share["floor"]["p50_sum_s"] == pytest.approx(
            sum(floors[name]["p50_s"] for name in share["floor"]["floors"]), abs=1e-4
        ), share
        assert share["above_floor_p50_s"] == pytest.approx(share["p50_s"] - share["floor"]["p50_sum_s"], abs=1e-4)
    assert "product's own share" in stdout, stdout
    assert "| airflow_trigger_dag |" in stdout, stdout

    assert result["asset_watcher"]["not_run_reason"].startswith("skipped")
    assert "| **total** |" in stdout, stdout
    assert "| trigger_dag through the MWAA emulator (InvokeRestApi): run made by the API call | 2 |" in stdout, stdout
    assert "| dag_run outcome (dagrun:// URI), trigger_dag over HTTPS (JWT): run made by the API call" in stdout, stdout
