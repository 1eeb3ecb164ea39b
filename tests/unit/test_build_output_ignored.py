"""What `make dist`, pip's in-tree builds and `sam build` leave in the checkout is ignored by git."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD_OUTPUT = (
    "dist/airflow_dataset_forwarder_listener-0.1.0-py3-none-any.whl",
    "dist/airflow-dataset-forwarder-sam-0.1.0/template.yaml",
    "build/lib/dataset_forwarder/__init__.py",
    "airflow_dataset_forwarder.egg-info/PKG-INFO",
    "listener/build/lib/dataset_forwarder_listener/plugin.py",
    "listener/src/airflow_dataset_forwarder_listener.egg-info/PKG-INFO",
    ".aws-sam/build/template.yaml",
    "mk/__pycache__/sam_dist.cpython-311.pyc",
)


def test_build_output_is_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *BUILD_OUTPUT], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert sorted(done.stdout.split()) == sorted(BUILD_OUTPUT)
