"""The listener as users install it: the wheel `make dist` builds, not the source tree.

- Inside real Airflow 3.3: a venv with Airflow and the built wheel (ensure_airflow_venv keys it by the wheel's bytes),
  a `dags test` of a producer DAG, and the envelope on a moto SQS queue.
- MWAA's form: the wheel in plugins.zip (extracted to /usr/local/airflow/plugins) and a requirements.txt that
  installs it with `--no-index --find-links` from there; boto3 is already in MWAA's image. A fresh venv stands in for
  the image; its boto3 comes from the usual index first, then requirements.txt installs offline.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from devkit.airflow_env import AirflowDeployment, cache_dir, ensure_airflow_venv
from devkit.listener_support import MotoSqs, apply_env, dags_test, envelope_validator, listener_env
from devkit.paths import REPO_ROOT
from tests.e2e.conftest import AIRFLOW3_VERSION, make_dist
from tests.e2e.test_listener import (
    AIRFLOW3_PRODUCER,
    BEAR_EXTRA,
    BEARS,
    INCLUDE,
    assert_succeeded,
    check_envelope,
    producer_run_id,
)

pytestmark = pytest.mark.e2e

DISTRIBUTION = "airflow-dataset-forwarder-listener"
VERSION = (REPO_ROOT / "VERSION").read_text(encoding="utf-8").strip()
WHEEL_NAME = f"airflow_dataset_forwarder_listener-{VERSION}-py3-none-any.whl"
# What the listener README tells MWAA users to put in requirements.txt (plugins.zip holds the wheel at its top level).
MWAA_PLUGINS_DIR = "/usr/local/airflow/plugins"
MWAA_REQUIREMENTS = f"--find-links {MWAA_PLUGINS_DIR}\n--no-index\n{DISTRIBUTION}=={VERSION}\n"
PIP = ("-m", "pip", "--disable-pip-version-check", "--no-input")


def _clean_env() -> dict[str, str]:
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV", "PIP_FIND_LINKS", "PIP_NO_INDEX")
    return {key: value for key, value in os.environ.items() if key not in dropped}


def _run(
    command: list[str], timeout: float = 300, *, only_given_sources: bool = False
) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    if only_given_sources:  # no pip.conf of this machine (its find-links, extra indexes): what requirements.txt says
        env = {key: value for key, value in env.items() if not key.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def listener_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist-listener` into a scratch directory, then kept under the cache by its content's hash.

    The path is part of the Airflow venv's key: the same bytes at the same path reuse the venv (the build is
    reproducible), a changed listener gets a venv of its own.
    """
    built = make_dist("dist-listener", _clean_env(), WHEEL_NAME, tmp_path_factory)
    digest = hashlib.sha256(built.read_bytes()).hexdigest()[:16]
    kept = cache_dir() / "wheels" / digest / WHEEL_NAME
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        staged = kept.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(built, staged)
        staged.replace(kept)
    return kept


def test_wheel_holds_the_package_its_version_and_the_plugin_entry_point(listener_wheel: Path) -> None:
    with zipfile.ZipFile(listener_wheel) as wheel:
        names = wheel.namelist()
        assert wheel.read("dataset_forwarder_listener/VERSION").decode().strip() == VERSION
        entry_points = wheel.read(f"airflow_dataset_forwarder_listener-{VERSION}.dist-info/entry_points.txt").decode()
        metadata = wheel.read(f"airflow_dataset_forwarder_listener-{VERSION}.dist-info/METADATA").decode()
    assert "dataset_forwarder_listener/plugin.py" in names
    assert not [name for name in names if "tests/" in name or name.endswith(".pyc")], names
    assert "[airflow.plugins]" in entry_points
    assert "dataset_forwarder = dataset_forwarder_listener.plugin:DatasetForwarderPlugin" in entry_points
    assert f"Version: {VERSION}\n" in metadata
    assert "Requires-Dist: boto3" in metadata
    assert "apache-airflow" not in metadata.lower().replace("framework :: apache airflow", "")


# --------------------------------------------------------------------------------------------------- Airflow


@pytest.fixture(scope="module")
def wheel_airflow(
    request: pytest.FixtureRequest, listener_wheel: Path, tmp_path_factory: pytest.TempPathFactory, moto: MotoSqs
) -> Iterator[tuple[AirflowDeployment, str]]:
    """Airflow 3.3 with the built wheel installed, migrated; its listener sends to a moto queue of its own."""
    venv = ensure_airflow_venv(AIRFLOW3_VERSION, (str(listener_wheel),))
    home = tmp_path_factory.mktemp("af3-wheel")
    queue = moto.create_queue("af3-wheel")
    deployment = AirflowDeployment(venv, home / "team-a", name="team-a", dags={"producer.py": AIRFLOW3_PRODUCER})
    env = listener_env(moto, queue, "team-a", home / "spool", DATASET_FORWARDER_INCLUDE=INCLUDE)
    deployment.env = apply_env(deployment.env, env)
    failed_before = request.session.testsfailed
    try:
        deployment.migrate()
        yield deployment, queue
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n{deployment.logs(80)}", file=sys.stderr)
        deployment.stop()


def test_airflow_runs_the_listener_from_the_wheel(wheel_airflow: tuple[AirflowDeployment, str]) -> None:
    deployment, _ = wheel_airflow
    probe = (
        "import json, importlib.metadata as m, dataset_forwarder_listener as p; "
        f"d = m.distribution({DISTRIBUTION!r}); "
        "print(json.dumps({'file': p.__file__, 'version': p.__version__, 'meta': d.version, "
        "'direct_url': d.read_text('direct_url.json')}))"
    )
    done = subprocess.run(
        [str(deployment.venv / "bin" / "python"), "-c", probe],
        env=deployment.env,
        cwd=deployment.home,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(deployment.venv), found  # not the source tree
    assert found["version"] == found["meta"] == VERSION
    assert json.loads(found["direct_url"])["url"].endswith(f"/{WHEEL_NAME}"), found  # installed from the wheel file


def test_dags_test_event_reaches_the_queue(wheel_airflow: tuple[AirflowDeployment, str], moto: MotoSqs) -> None:
    deployment, queue = wheel_airflow
    validator: Draft202012Validator = envelope_validator()

    run = dags_test(deployment, "producer")

    assert_succeeded(run)
    messages = moto.drain(queue)  # `dags test` exited after draining its sender
    assert [m.uri for m in messages] == [BEARS], ([m.body for m in messages], run.tail())
    check_envelope(
        messages[0], validator, deployment, uri=BEARS, extra=BEAR_EXTRA,
        dag_id="producer", task_id="get_bear", run_id=producer_run_id(run), map_index=-1, trail=["team-a"],
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------- MWAA


def _mwaa_plugins(listener_wheel: Path, work: Path) -> Path:
    """plugins.zip with the wheel at its top level, extracted as MWAA extracts it (into its plugins folder)."""
    plugins_zip = work / "plugins.zip"
    with zipfile.ZipFile(plugins_zip, "w") as archive:
        archive.write(listener_wheel, WHEEL_NAME)
    plugins = work / "plugins"
    with zipfile.ZipFile(plugins_zip) as archive:
        archive.extractall(plugins)
    return plugins


def _fresh_venv(path: Path) -> Path:
    python = shutil.which("python3.11") or sys.executable  # MWAA's Python
    made = _run([python, "-m", "venv", str(path)])
    assert made.returncode == 0, made.stderr
    return path / "bin" / "python"


def _requirements(work: Path, plugins: Path) -> Path:
    """MWAA's requirements.txt as the README gives it, with this test's plugins folder in place of MWAA's."""
    text = MWAA_REQUIREMENTS.replace(MWAA_PLUGINS_DIR, str(plugins))
    requirements = work / "requirements.txt"
    requirements.write_text(text, encoding="utf-8")
    return requirements


def test_readme_gives_the_tested_install_lines() -> None:
    readme = (REPO_ROOT / "listener" / "README.md").read_text(encoding="utf-8")
    assert f"```text\n{MWAA_REQUIREMENTS}```" in readme
    assert f"pip install --no-cache-dir /tmp/{WHEEL_NAME}\n" in readme  # Astro and self-hosted


def test_mwaa_requirements_install_the_wheel_from_plugins_offline(listener_wheel: Path, tmp_path: Path) -> None:
    plugins = _mwaa_plugins(listener_wheel, tmp_path)
    python = _fresh_venv(tmp_path / "image")
    # The image: MWAA ships boto3 (the version this test suite runs with, likely in pip's cache).
    boto3 = f"boto3=={importlib.metadata.version('boto3')}"
    image = _run([str(python), *PIP, "install", "--quiet", boto3], timeout=600)
    assert image.returncode == 0, image.stdout + image.stderr

    installed = _run(
        [str(python), *PIP, "install", "-r", str(_requirements(tmp_path, plugins))], only_given_sources=True
    )

    assert installed.returncode == 0, installed.stdout + installed.stderr
    probe = (
        "import importlib.metadata as m, dataset_forwarder_listener as p; "
        "[e] = [e for e in m.entry_points(group='airflow.plugins') if e.name == 'dataset_forwarder']; "
        "print(p.__version__, e.value)"
    )
    done = _run([str(python), "-c", probe])
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [VERSION, "dataset_forwarder_listener.plugin:DatasetForwarderPlugin"]


def test_mwaa_requirements_need_boto3_from_the_image(listener_wheel: Path, tmp_path: Path) -> None:
    """The offline install resolves the wheel's one dependency from the environment: without boto3 it cannot."""
    plugins = _mwaa_plugins(listener_wheel, tmp_path)
    python = _fresh_venv(tmp_path / "bare")

    installed = _run(
        [str(python), *PIP, "install", "-r", str(_requirements(tmp_path, plugins))], only_given_sources=True
    )

    assert installed.returncode != 0
    assert "boto3" in installed.stdout + installed.stderr
