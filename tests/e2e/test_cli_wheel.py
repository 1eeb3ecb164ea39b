"""The CLI wheel `make dist` builds (package airflow-dataset-forwarder: the CLI and the core it reuses), imported
from the wheel's own files rather than the source tree: every module is in it and `--version` reads VERSION.

The dependencies (click, boto3, Powertools, ...) come from the interpreter running the tests; the wheel's files are
put first on the path of a process started outside the checkout.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from devkit.paths import REPO_ROOT
from tests.e2e.conftest import make_dist

pytestmark = pytest.mark.e2e

VERSION = (REPO_ROOT / "VERSION").read_text(encoding="utf-8").strip()
WHEEL_NAME = f"airflow_dataset_forwarder-{VERSION}-py3-none-any.whl"
SOURCE_ROOTS = {"dataset_forwarder": REPO_ROOT / "functions" / "forwarder", "dataset_forwarder_cli": REPO_ROOT / "cli"}


@pytest.fixture(scope="module")
def cli_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return make_dist("dist-cli", env, WHEEL_NAME, tmp_path_factory)


def test_wheel_holds_every_module_of_the_core_and_the_cli(cli_wheel: Path) -> None:
    with zipfile.ZipFile(cli_wheel) as wheel:
        names = set(wheel.namelist())
        assert wheel.read("dataset_forwarder/VERSION").decode().strip() == VERSION
        entry_points = wheel.read(f"airflow_dataset_forwarder-{VERSION}.dist-info/entry_points.txt").decode()
    sources = {
        path.relative_to(root).as_posix()
        for package, root in SOURCE_ROOTS.items()
        for path in (root / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert sources - names == set()
    assert [name for name in names if name.startswith("devkit/")] == []  # the development kit is never shipped
    assert "dataset-forwarder = dataset_forwarder_cli.main:cli" in entry_points


def test_cli_from_the_wheel_runs_and_reports_the_version(cli_wheel: Path, tmp_path: Path) -> None:
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(cli_wheel) as wheel:
        wheel.extractall(unpacked)
    # Every module of the two packages that got imported must come from the wheel (the dev venv's editable
    # install of the checkout must not fill in what the wheel lacks).
    probe = (
        "import sys, dataset_forwarder_cli.main as m; "
        "print(sorted({getattr(v, '__file__', None) or '' for k, v in sys.modules.items() "
        "if k.split('.')[0] in ('dataset_forwarder', 'dataset_forwarder_cli')} - {''})); "
        "m.cli(['--version'])"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHONPATH": str(unpacked)}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    files, version_line = done.stdout.strip().splitlines()
    loaded = [Path(file) for file in ast.literal_eval(files)]
    assert len(loaded) > 10
    assert [file for file in loaded if not file.is_relative_to(unpacked)] == []
    assert version_line.endswith(VERSION), version_line
