"""Smoke tests of bench/forwarder_throughput.py and bench/cold_start.py: a --quick run writes sane, complete results.

Each runs the script as `make bench` would (this interpreter, the dev venv), with results in a temporary directory,
so the recorded results in bench/results are never touched. Timings are not judged here, only their shape and
what no machine can violate (a batch is not faster than one round trip, the sequential baseline not faster than
all of its round trips end to end).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 420  # ~30-60 s on an idle machine; a busy shared one can take several times that
MACHINE_KEYS = {"cpus", "load_avg_at_start", "load_avg_at_end", "python", "platform", "git_commit", "git_dirty"}
STATS_KEYS = {"n", "p50_ms", "min_ms", "max_ms", "mean_ms"}


def run_quick(script: str, out: Path) -> tuple[dict[str, Any], str]:
    command = [sys.executable, str(REPO_ROOT / "bench" / script), "--quick", "--out", str(out)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the bench stops moto server and its fakes on SIGTERM
        stdout, stderr = process.communicate(timeout=60)
        pytest.fail(f"{script} --quick took more than {RUN_TIMEOUT_S} s:\n{stderr[-3000:]}")
    assert process.returncode == 0, f"{stdout[-2000:]}\n{stderr[-4000:]}"
    return json.loads(out.read_text()), stdout


def check_machine(result: dict[str, Any]) -> None:
    assert set(result["machine"]) >= MACHINE_KEYS
    assert result["machine"]["cpus"] >= 1
    assert len(result["machine"]["load_avg_at_start"]) == 3
    assert len(result["machine"]["git_commit"]) == 40


def test_quick_throughput_run_measures_ours_and_the_baseline_for_each_target_count(tmp_path: Path) -> None:
    result, table = run_quick("forwarder_throughput.py", tmp_path / "throughput.json")

    assert result["benchmark"] == "forwarder_throughput"
    assert result["mode"] == "quick"
    check_machine(result)
    delay_ms = result["settings"]["post_delay_ms"]
    records = result["settings"]["records_per_batch"]
    round_trip = result["round_trip"]
    assert set(round_trip) >= STATS_KEYS
    assert round_trip["p50_ms"] >= delay_ms

    rows = result["rows"]
    assert [row["targets"] for row in rows if row["ledger"] == "memory"] == [1, 5, 20]
    assert [row["ledger"] for row in rows].count("dynamodb-moto") == 1
    for row in rows:
        deliveries = records * row["targets"]
        assert row["deliveries_per_batch"] == deliveries
        assert set(row["ours"]) >= STATS_KEYS
        assert set(row["baseline"]) >= STATS_KEYS
        assert row["ours"]["n"] >= 2
        assert row["baseline"]["n"] >= 1
        assert row["ours"]["min_ms"] >= delay_ms  # no batch beats one round trip
        assert row["baseline"]["min_ms"] >= deliveries * delay_ms  # the baseline pays every round trip in turn
        assert row["ours"]["deliveries_per_s"] == pytest.approx(deliveries / row["ours"]["p50_ms"] * 1000, rel=0.01)
        assert row["ratio"] == pytest.approx(row["baseline"]["p50_ms"] / row["ours"]["p50_ms"], abs=0.06)
        assert set(row["goal"]) == {"batch_ms_max", "batch_ok", "ratio_min", "ratio_ok"}
        assert row["goal"]["ratio_min"] == pytest.approx(0.9 * deliveries)
        first = row["first_batch"]
        assert first["wall_ms"] > 0
        assert first["requests_per_target"]["POST /api/v2/assets/events"] == records
        assert row["downstream_cpu_ms_per_batch"] > 0
        if row["ledger"] == "memory":  # claim, round trip, completion: no batch is shorter, no ratio higher
            chain = round_trip["p50_ms"] + 2 * row["ledger_latency_ms"]
            assert row["bound"]["chain_ms"] == pytest.approx(chain, abs=0.1)
            assert row["bound"]["ratio_max"] == pytest.approx(row["baseline"]["p50_ms"] / chain, abs=0.06)
        else:
            assert "bound" not in row
    parts = result["parts"]
    assert parts["targets"] == 20
    assert parts["pairs"] == 20 * records
    for part in ("ledger_only", "post_only"):
        assert parts[part]["wall"]["n"] == parts[part]["cpu"]["n"] == 2
        assert parts[part]["cpu"]["p50_ms"] > 0
    assert parts["ledger_only"]["wall"]["min_ms"] >= 2 * result["settings"]["ledger_latency_ms"]
    assert parts["post_only"]["wall"]["min_ms"] >= delay_ms
    floor = parts["ledger_only"]["cpu"]["p50_ms"] + parts["post_only"]["cpu"]["p50_ms"]
    assert parts["cpu_floor_ms"] == pytest.approx(floor, abs=0.1)
    assert "| targets | ledger |" in table
    assert "the parts alone, 200 pairs at once" in table


def test_quick_cold_start_run_compares_our_handler_with_the_straightforward_one(tmp_path: Path) -> None:
    result, table = run_quick("cold_start.py", tmp_path / "cold_start.json")

    assert result["benchmark"] == "cold_start"
    assert result["mode"] == "quick"
    check_machine(result)
    handlers = result["handlers"]
    assert set(handlers) == {"ours", "straightforward"}
    for row in handlers.values():
        assert row["import"]["n"] == result["settings"]["samples"] == 5
        assert set(row["import"]) >= STATS_KEYS
        assert set(row["import_and_first_record"]) >= STATS_KEYS
        assert 0 < row["import"]["p50_ms"] < row["import_and_first_record"]["p50_ms"]
        assert row["import_profile"][0]["module"] == row["module"]
        assert row["source_compile"]["files"] >= 1
    assert result["import_ratio"] == pytest.approx(
        handlers["straightforward"]["import"]["p50_ms"] / handlers["ours"]["import"]["p50_ms"], abs=0.01
    )
    assert set(result["goal"]) >= {"import_ok", "import_ratio_ok", "first_record_ok"}
    layer = result["layer"]
    assert isinstance(layer["built"], bool)
    if layer["built"]:
        assert 0 < layer["zipped_bytes"] < layer["unzipped_bytes"]
    assert "| handler |" in table


def test_quick_handler_profile_times_each_segment_and_its_floors(tmp_path: Path) -> None:
    result, table = run_quick("handler_profile.py", tmp_path / "handler.json")

    assert result["benchmark"] == "handler_profile"
    check_machine(result)
    assert set(result["segments"]) == {"to_post", "after_post"}
    assert set(result["floors"]) == {"dynamodb_put_item", "bare_post"}
    for row in (*result["segments"].values(), *result["floors"].values()):
        assert row["n"] == result["runs"] == 5
        assert 0 < row["min_ms"] <= row["p50_ms"] <= row["p95_ms"]
    # the claim (one PutItem) happens before the POST: the event can never reach the downstream faster
    assert result["segments"]["to_post"]["min_ms"] >= result["floors"]["dynamodb_put_item"]["min_ms"] * 0.5
    assert "to_post" in table
