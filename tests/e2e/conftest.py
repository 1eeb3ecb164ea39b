"""E2E tier: cached venvs with real Airflow 2 and 3, and a factory for throwaway deployments stopped after each test."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from devkit.airflow_env import AirflowDeployment, DeploymentFactory, User, ensure_airflow_venv
from devkit.listener_support import MotoSqs
from devkit.local_forwarding import LocalStackProcess
from devkit.paths import REPO_ROOT, listener_extras

AIRFLOW3_VERSION = "3.3.2"
AIRFLOW2_VERSION = "2.11.2"
E2E_DIR = Path(__file__).resolve().parent
E2E_TIMEOUT_S = 900


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_timeout = config.pluginmanager.hasplugin("timeout")
    for item in items:
        if item.path.is_relative_to(E2E_DIR):
            item.add_marker(pytest.mark.e2e)
            # pytest-timeout counts fixture setup: the first test of a version may build its venv (1-2 min here)
            if has_timeout and item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_S))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


def _venv(version: str) -> Path:
    started = time.monotonic()
    venv = ensure_airflow_venv(version, listener_extras())
    print(f"\n[e2e] venv for Airflow {version}: {time.monotonic() - started:.1f} s ({venv.name})", file=sys.stderr)
    return venv


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoSqs]:
    """moto server's SQS for one test module's listeners."""
    server = MotoSqs()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def airflow3_venv() -> Path:
    return _venv(AIRFLOW3_VERSION)


@pytest.fixture(scope="session")
def airflow2_venv() -> Path:
    return _venv(AIRFLOW2_VERSION)


@pytest.fixture
def deployment_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DeploymentFactory]:
    """`deployment_factory(venv, name=..., dags=..., env=..., users=...)`: homes in tmp_path, all stopped afterwards.

    When the test failed, the tail of every deployment's logs is printed.
    """
    created: list[AirflowDeployment] = []

    def create(
        venv: Path,
        name: str = "airflow",
        dags: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        users: Sequence[User] = (User("admin", "admin"),),
    ) -> AirflowDeployment:
        deployment = AirflowDeployment(venv, tmp_path / name, name=name, dags=dags, env=env, users=users)
        created.append(deployment)
        return deployment

    yield create
    failed = request.node.stash.get(_CALL_FAILED, False)
    for deployment in created:
        if failed:
            print(f"\n{deployment.logs()}", file=sys.stderr)
        deployment.stop()


@contextmanager
def deployments_running(
    request: pytest.FixtureRequest,
    stack: LocalStackProcess,
    deployments: Mapping[str, AirflowDeployment],
    logs: Callable[[], str],
    *,
    started: Callable[[str], bool] = lambda name: True,
    stack_up: bool = False,
) -> Iterator[None]:
    """For a module's world: migrate ``deployments`` side by side and start (api-server or webserver and scheduler)
    those ``started`` names, ready to use (``stack_up``: the local ``stack`` comes up beside them); afterwards stop
    them all and the stack, first printing ``logs()`` if a test failed meanwhile."""

    def start(name: str, deployment: AirflowDeployment) -> None:
        deployment.migrate()
        if started(name):
            deployment.start()
            deployment.wait_healthy(timeout_s=120)

    failed_before = request.session.testsfailed
    try:
        begun = time.monotonic()
        with ThreadPoolExecutor(len(deployments) + stack_up) as pool:
            futures = [pool.submit(start, name, d) for name, d in deployments.items()]
            for future in [*futures, *([pool.submit(stack.up)] if stack_up else [])]:
                future.result()
        ready = f"{len(deployments)} deployments{' and the local stack' if stack_up else ''}"
        print(f"\n[e2e] {ready} ready in {time.monotonic() - begun:.1f} s", file=sys.stderr)
        yield
    finally:
        if request.session.testsfailed > failed_before:
            print(f"\n{logs()}", file=sys.stderr)
        with ThreadPoolExecutor(len(deployments)) as pool:
            for deployment in deployments.values():
                pool.submit(deployment.stop)
        if stack.state:  # it came up
            print(f"[e2e] {stack.down()}", file=sys.stderr)


def make_dist(target: str, env: Mapping[str, str], wheel_name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make <target>` (dist-cli, dist-listener) into a scratch directory with ``env``: the one wheel it built, which
    must be ``wheel_name``."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), target, f"DIST_DIR={out}"],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert [path.name for path in out.iterdir()] == [wheel_name]
    return out / wheel_name
