"""Smoke tests of bench/scale.py (moto, the local event source, the real handler) and bench/plot.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_scale_run_delivers_every_event_once_and_caches_ssm(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    command = [sys.executable, "bench/scale.py", "--events", "300", "--targets", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    result = json.loads(out.read_text())
    assert result["deliveries"] == 600
    assert result["duplicates"] == 0
    assert result["failed_batches"] == 0
    assert len(result["checkpoints"]) >= 3  # one per tenth of the events, at most one per 100 sent
    settings = result["settings"]
    # Targets (one call) and each target's secret are cached for CONFIG_TTL_S in every execution environment:
    # SSM is called O(environments x run time / TTL) times, not once per event.
    per_window = settings["pollers_and_environments"] * (1 + settings["targets"])
    windows = result["elapsed_s"] / settings["config_ttl_s"] + 2
    assert 0 < result["ssm_calls_total"] <= per_window * windows
    assert result["ssm_calls_total"] < result["deliveries"] / 10
    assert all(0 < rss < 200 for rss in result["rss_mib_end"])  # flatness needs the long run (bench/README.md)


def test_plot_draws_every_recorded_result(tmp_path: Path) -> None:
    for recorded in (REPO_ROOT / "bench" / "results").glob("*.json"):
        shutil.copy(recorded, tmp_path)
    out = tmp_path / "plot.png"

    done = subprocess.run(
        [sys.executable, "bench/plot.py", "--results", str(tmp_path), "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "cannot draw" not in done.stdout
