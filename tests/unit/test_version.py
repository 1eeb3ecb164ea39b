"""One version for the whole release: the VERSION file, read by both packages, the CLI and the User-Agent."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from click.testing import CliRunner

from dataset_forwarder import runtime
from dataset_forwarder.version import __version__
from dataset_forwarder_cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
VERSION = (ROOT / "VERSION").read_text(encoding="utf-8").strip()


def test_version_file_holds_one_release_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION), VERSION


def test_every_package_reads_the_version_file() -> None:
    assert __version__ == VERSION
    listener_init = ROOT / "listener" / "src" / "dataset_forwarder_listener" / "__init__.py"
    namespace: dict[str, object] = {"__file__": str(listener_init)}
    exec(compile(listener_init.read_text(encoding="utf-8"), str(listener_init), "exec"), namespace)
    assert namespace["__version__"] == VERSION
    for package in ("functions/forwarder/dataset_forwarder", "listener/src/dataset_forwarder_listener"):
        assert (ROOT / package / "VERSION").resolve() == (ROOT / "VERSION").resolve(), package


def test_pyprojects_take_their_version_from_the_file() -> None:
    for project_dir in (ROOT, ROOT / "listener"):
        project = tomllib.loads((project_dir / "pyproject.toml").read_text(encoding="utf-8"))
        assert "version" not in project["project"], project_dir
        assert project["project"]["dynamic"] == ["version"]
        source = project_dir / project["tool"]["setuptools"]["dynamic"]["version"]["file"]
        assert source.resolve() == (ROOT / "VERSION").resolve(), project_dir


def test_cli_version_and_user_agent_carry_it() -> None:
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0, result.output
    assert VERSION in result.output
    assert f"airflow-dataset-forwarder/{VERSION}" == runtime.USER_AGENT
