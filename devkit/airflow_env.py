"""Real Apache Airflow for end-to-end tests: cached per-version venvs and throwaway deployments driven over REST.

`ensure_airflow_venv` builds (once, under a lock) a venv with an exact Airflow pin plus extras; `AirflowDeployment`
runs one Airflow in its own AIRFLOW_HOME with SQLite, free ports and admin/admin auth, and stops it again.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

import requests

from devkit.moto_env import free_port

# Bump when the way venvs are built changes, so stale caches are not reused.
TOOLING_VERSION = "1"
CACHE_DIR_ENV = "ADF_AIRFLOW_CACHE_DIR"
PYTHON_ENV = "ADF_AIRFLOW_PYTHON"
KEEP_VENVS_PER_VERSION = 2
MARKER = ".adf-complete.json"
# Not part of what pip installs from a local project: build output and tool caches, and its top-level tests/ (the
# src layout and setuptools' flat-layout discovery both leave it out), so editing those costs no venv rebuild.
_IGNORED_NAMES = frozenset(
    {"__pycache__", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", ".venv", ".tox", ".nox"}
    | {"build", "dist", "htmlcov", ".coverage"}
)
_IGNORED_TOP_LEVEL = frozenset({"tests"})

# Deployments still running, stopped at interpreter exit if a test forgot (or never reached) teardown.
_LIVE: weakref.WeakSet[AirflowDeployment] = weakref.WeakSet()
# Shared locks on venvs this process uses: pruning in other processes skips them. Released at exit.
_HELD_LOCKS: dict[Path, IO[bytes]] = {}


class AirflowError(RuntimeError):
    """An Airflow command, process or API call did not do what the test needed."""


class TransientApiError(AirflowError):
    """A 5xx from the REST API (SQLite busy, component still starting): worth another try while polling."""


# --------------------------------------------------------------------------------------------------- venvs


def cache_dir() -> Path:
    override = os.environ.get(CACHE_DIR_ENV)
    return Path(override) if override else Path.home() / ".cache" / "airflow-dataset-forwarder"


def _is_local_path(spec: str) -> bool:
    return (spec.startswith((".", "/", "~")) or os.sep in spec) and Path(spec).expanduser().exists()


def _ignorer(top: Path) -> Callable[[str, list[str]], set[str]]:
    """A `shutil.copytree` ignore function for the local project at `top` (also used for hashing it)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        top_level = _IGNORED_TOP_LEVEL if Path(directory) == top else frozenset()
        return {n for n in names if n in _IGNORED_NAMES or n in top_level or n.endswith((".egg-info", ".pyc"))}

    return ignore


def _hash_local(path: Path, digest: Any) -> None:
    if path.is_file():
        digest.update(path.read_bytes())
        return
    ignore = _ignorer(path)
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(set(dirs) - ignore(root, dirs))
        for name in sorted(set(files) - ignore(root, files)):
            file = Path(root, name)
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")


def venv_key(version: str, extra_packages: Sequence[str] = ()) -> str:
    """Directory name of the venv for this Airflow version and extras; local-path extras count by content."""
    digest = hashlib.sha256(f"{TOOLING_VERSION}\0{version}\0".encode())
    for spec in extra_packages:
        digest.update(spec.encode() + b"\0")
        if _is_local_path(spec):
            _hash_local(Path(spec).expanduser().resolve(), digest)
    return f"airflow-{version}-{digest.hexdigest()[:12]}"


def _python() -> str:
    return os.environ.get(PYTHON_ENV) or shutil.which("python3.11") or sys.executable


def _lock_file(key: str) -> IO[bytes]:
    locks = cache_dir() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return (locks / f"{key}.lock").open("ab")


def _is_complete(venv: Path) -> bool:
    return (venv / MARKER).is_file() and (venv / "bin" / "airflow").is_file()


def ensure_airflow_venv(version: str, extra_packages: Sequence[str] = ()) -> Path:
    """Return a venv with exactly `apache-airflow==version` and the extras, building it on first use.

    The venv is built in place at its final path under an exclusive lock, and counts only once its marker file
    exists: a venv cannot be renamed after pip installed into it (console scripts such as `bin/airflow` carry the
    absolute interpreter path in their shebang), so the marker, not a rename, is the commit point. A directory
    without marker is a crashed build and is rebuilt. While this process lives it holds a shared lock on the venv so
    that pruning elsewhere leaves it alone.
    """
    key = venv_key(version, extra_packages)
    venv = cache_dir() / key
    lock = _HELD_LOCKS.get(venv)
    if lock is not None and _is_complete(venv):
        return venv
    lock = lock or _lock_file(key)
    fcntl.flock(lock, fcntl.LOCK_SH)
    if not _is_complete(venv):
        fcntl.flock(lock, fcntl.LOCK_EX)  # not atomic with the shared lock: check again once exclusive
        if not _is_complete(venv):
            _build(venv, version, extra_packages)
        fcntl.flock(lock, fcntl.LOCK_SH)
    _HELD_LOCKS[venv] = lock
    os.utime(venv / MARKER)  # the marker's mtime is "last used": pruning keeps the most recently used venvs
    _prune(version, keep=venv)
    return venv


def _build(venv: Path, version: str, extra_packages: Sequence[str]) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    started = time.monotonic()
    print(
        f"airflow_env: installing {' '.join([f'apache-airflow=={version}', *extra_packages])} into {venv} (1-2 min)",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="adf-extras-") as staging:
        pip_args = []
        for index, spec in enumerate(extra_packages):
            if _is_local_path(spec) and Path(spec).expanduser().is_dir():
                # pip builds a local project in its own tree (build/, *.egg-info): build a copy, not the worktree.
                source = Path(spec).expanduser().resolve()
                copy = Path(staging, f"{index}-{source.name}")
                shutil.copytree(source, copy, ignore=_ignorer(source))
                pip_args.append(str(copy))
            elif _is_local_path(spec):
                pip_args.append(str(Path(spec).expanduser().resolve()))
            else:
                pip_args.append(spec)
        log = venv.parent / f"{venv.name}.install.log"
        with log.open("w") as out:
            commands = [
                [_python(), "-m", "venv", str(venv)],
                [
                    str(venv / "bin" / "python"),
                    *("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off"),
                    f"apache-airflow=={version}",
                    *pip_args,
                ],
            ]
            for command in commands:
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False, env=_clean_env())
                if done.returncode != 0:
                    shutil.rmtree(venv, ignore_errors=True)
                    raise AirflowError(f"building {venv.name} failed (exit {done.returncode}):\n{_tail(log, 40)}")
    marker = {"version": version, "extras": list(extra_packages), "python": _python(), "built_at": _now_iso()}
    (venv / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    print(f"airflow_env: {venv.name} ready in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)


def _family(venv: Path) -> tuple[str, ...]:
    """What a venv is for: its extras, a local project counted by its directory name (its content changes often).

    Venvs of one Airflow version compete for the `KEEP_VENVS_PER_VERSION` slots only within their family, so that,
    e.g., a venv with provider packages is not evicted each time the listener's venv is rebuilt, nor the reverse.
    """
    try:
        extras = json.loads((venv / MARKER).read_text()).get("extras", [])
    except (OSError, ValueError):
        return ()
    # a local path counts whether or not it still exists (CI clones come and go)
    local = tuple(spec for spec in extras if spec.startswith((".", "/", "~")) or os.sep in spec)
    return tuple(sorted([f"local:{Path(spec).name}" for spec in local] + [s for s in extras if s not in local]))


def _prune(version: str, keep: Path) -> None:
    """Delete all but the newest venvs of this version and family, skipping any that a process holds a lock on."""
    root = cache_dir()
    family = _family(keep)
    candidates = [p for p in root.glob(f"airflow-{version}-*") if p.is_dir() and p != keep]
    complete = sorted(
        (p for p in candidates if _is_complete(p) and _family(p) == family),
        key=lambda p: (p / MARKER).stat().st_mtime,
    )
    doomed = complete[: max(0, len(complete) - (KEEP_VENVS_PER_VERSION - 1))]
    doomed += [p for p in candidates if not _is_complete(p)]
    for venv in doomed:
        with _lock_file(venv.name) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # being built or in use
            shutil.rmtree(venv, ignore_errors=True)
            (root / f"{venv.name}.install.log").unlink(missing_ok=True)


def installed_airflow_version(venv: Path) -> str:
    for metadata in venv.glob("lib/python*/site-packages/apache_airflow-*.dist-info/METADATA"):
        for line in metadata.read_text().splitlines():
            if line.startswith("Version: "):
                return line.removeprefix("Version: ").strip()
    raise AirflowError(f"no apache-airflow installed in {venv}")


# --------------------------------------------------------------------------------------------------- helpers


def _clean_env() -> dict[str, str]:
    """The caller's environment without anything that would configure or redirect Airflow or Python."""
    dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV")
    return {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW") and k not in dropped}


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 200 * lines))
            text = file.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def poll(
    check: Callable[[], Any], *, timeout_s: float, what: str, interval_s: float = 0.2, diagnose: Callable[[], str]
) -> Any:
    """Call `check` until it returns something truthy or the deadline passes; transient errors are retried."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except (requests.RequestException, TransientApiError) as error:
            result, last_error = None, error
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {timeout_s} s (last error: {last_error!r})\n{diagnose()}")
        time.sleep(interval_s)


@dataclass(frozen=True)
class User:
    """An Airflow login; `role` is Admin, Op, User or Viewer (case does not matter)."""

    username: str
    password: str
    role: str = "Admin"


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


# --------------------------------------------------------------------------------------------------- deployment


class AirflowDeployment:
    """One Airflow deployment in its own AIRFLOW_HOME (SQLite), started as separate processes on free ports."""

    def __init__(
        self,
        venv: Path,
        home: Path,
        name: str = "airflow",
        dags: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        users: Sequence[User] = (User("admin", "admin"),),
    ) -> None:
        if not users:
            raise ValueError("at least one user is needed to call the API")
        self.venv = venv
        self.home = home
        self.name = name
        self.users = tuple(users)
        self.version = installed_airflow_version(venv)
        self.major = int(self.version.split(".")[0])
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_prefix = "/api/v2" if self.major >= 3 else "/api/v1"
        self.dags_folder = home / "dags"
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        self.cli_log = home / "cli.log"
        for filename, source in (dags or {}).items():
            (self.dags_folder / filename).write_text(source)
        self.env = {**_clean_env(), **self._airflow_env(), **(env or {})}
        self._processes: list[_Process] = []
        self._session = requests.Session()
        self._token: tuple[str, float] | None = None

    # -- configuration

    def _airflow_env(self) -> dict[str, str]:
        secret = hashlib.sha256(f"adf-e2e-{self.name}".encode()).digest()
        runtime_dir = self.home / "run"
        runtime_dir.mkdir(mode=0o700, exist_ok=True)
        env = {
            # gunicorn (2.x webserver) puts a control socket in $XDG_RUNTIME_DIR, else in ~/.gunicorn: shared otherwise
            "XDG_RUNTIME_DIR": str(runtime_dir),
            "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__CORE__FERNET_KEY": base64.urlsafe_b64encode(secret).decode(),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__WEBSERVER__WORKERS": "1",
        }
        if self.major >= 3:
            passwords = self.home / "simple_auth_manager_passwords.json"
            passwords.write_text(json.dumps({u.username: u.password for u in self.users}))
            env |= {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(
                    f"{u.username}:{u.role.lower()}" for u in self.users
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__API_AUTH__JWT_SECRET": secret.hex(),
                "AIRFLOW__API__SECRET_KEY": secret.hex(),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            }
        else:
            env |= {
                "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
                "AIRFLOW__API__AUTH_BACKENDS": "airflow.api.auth.backend.basic_auth,airflow.api.auth.backend.session",
                "AIRFLOW__WEBSERVER__SECRET_KEY": secret.hex(),
                "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(self.port),
                "AIRFLOW__WEBSERVER__BASE_URL": self.url,
                # gunicorn's periodic rolling restart of workers only costs CPU here
                "AIRFLOW__WEBSERVER__WORKER_REFRESH_BATCH_SIZE": "0",
            }
        return env

    # -- CLI

    def airflow(self, *args: str, timeout_s: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `airflow ARGS` with this deployment's environment; output also goes to cli.log."""
        command = [str(self.venv / "bin" / "airflow"), *args]
        try:
            done = subprocess.run(
                command, env=self.env, cwd=self.home, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired as expired:
            raise AirflowError(f"[{self.name}] `airflow {' '.join(args)}` timed out after {timeout_s} s") from expired
        with self.cli_log.open("a") as log:
            log.write(f"$ airflow {' '.join(args)}  (exit {done.returncode})\n{done.stdout}{done.stderr}\n")
        if check and done.returncode != 0:
            raise AirflowError(
                f"[{self.name}] `airflow {' '.join(args)}` exited {done.returncode}:\n"
                f"{(done.stdout + done.stderr)[-4000:]}"
            )
        return done

    def migrate(self) -> None:
        """Create the database, the users (2.x) and serialize the DAGs (with their datasets/assets) into it."""
        self.airflow("db", "migrate")
        if self.major < 3:
            for user in self.users:
                self.airflow(
                    *("users", "create", "--username", user.username, "--password", user.password),
                    *("--firstname", user.username, "--lastname", "e2e", "--email", f"{user.username}@example.com"),
                    *("--role", user.role.capitalize()),
                )
        self.airflow("dags", "reserialize")

    def dags_test(
        self, dag_id: str, timeout_s: float = 120, logical_date: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`airflow dags test DAG_ID LOGICAL_DATE` (default: now); the caller asserts on the result."""
        return self.airflow("dags", "test", dag_id, logical_date or _now_iso(), timeout_s=timeout_s, check=False)

    # -- processes

    def start(
        self,
        api: bool = True,
        scheduler: bool = True,
        dag_processor: bool = False,
        triggerer: bool = False,
        timeout_s: float = 90,
    ) -> AirflowDeployment:
        """Start the components, each in its own process group with its own log file under home.

        On 3.x the other components are started only once the api-server answers and its execution API is warm:
        tasks talk to the execution API, a task handed out before the api-server listens fails after a few retries,
        and the execution API builds itself on its first request (~8 s here, blocking every other request and
        outliving the task client's 5 s timeout).
        """
        if self._processes:
            raise AirflowError(f"[{self.name}] already started: stop() first")
        commands: list[tuple[str, list[str]]] = []
        if scheduler:
            commands.append(("scheduler", ["scheduler", "--skip-serve-logs"]))
        if dag_processor:
            commands.append(("dag-processor", ["dag-processor"]))
        if triggerer:
            commands.append(("triggerer", ["triggerer"]))
        _LIVE.add(self)
        if api and self.major >= 3:
            self._spawn("api-server", ["api-server", "--port", str(self.port), "--host", "127.0.0.1"])
            self._wait_health(timeout_s, components=set())
            poll(
                lambda: self._session.get(f"{self.url}/execution/health", timeout=timeout_s).ok,
                timeout_s=timeout_s,
                what=f"{self.name} execution API",
                diagnose=self.logs,
            )
        elif api:
            self._spawn("webserver", ["webserver", "--port", str(self.port), "--hostname", "127.0.0.1"])
        for name, args in commands:
            self._spawn(name, args)
        return self

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.home / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                [str(self.venv / "bin" / "airflow"), *args],
                env=self.env,
                cwd=self.home,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._processes.append(_Process(name, popen, log))

    def _check_alive(self) -> None:
        for process in self._processes:
            if process.popen.poll() is not None:
                raise AirflowError(
                    f"[{self.name}] {process.name} exited with {process.popen.returncode}\n{self.logs()}"
                )

    def wait_healthy(self, timeout_s: float = 60) -> dict[str, Any]:
        """Poll the health endpoint until the metadatabase and every started component report healthy."""
        started = {p.name.replace("-", "_") for p in self._processes} & {"scheduler", "dag_processor", "triggerer"}
        return self._wait_health(timeout_s, started)

    def _wait_health(self, timeout_s: float, components: set[str]) -> dict[str, Any]:
        path = "/api/v2/monitor/health" if self.major >= 3 else "/health"

        def healthy() -> dict[str, Any] | None:
            self._check_alive()
            response = self._session.get(self.url + path, timeout=5)
            body: dict[str, Any] = response.json() if response.ok else {}
            ok = all(body.get(part, {}).get("status") == "healthy" for part in {"metadatabase", *components})
            return body if ok else None

        result: dict[str, Any] = poll(healthy, timeout_s=timeout_s, what=f"{self.name} healthy", diagnose=self.logs)
        return result

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM every process group, SIGKILL what is left after the deadline (including orphaned children)."""
        self._session.close()  # an open keep-alive connection holds up the server's graceful shutdown
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        for process in self._processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()
        self._processes.clear()
        _LIVE.discard(self)

    def __enter__(self) -> AirflowDeployment:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def logs(self, lines: int = 40) -> str:
        """The tail of every process log and of cli.log, for assertion messages."""
        files = [p.log for p in self._processes] or sorted(self.home.glob("*.log"))
        if self.cli_log not in files:
            files.append(self.cli_log)
        return "\n".join(f"----- {self.name}: {f.name} -----\n{_tail(f, lines)}" for f in files)

    # -- REST API

    @property
    def user(self) -> User:
        return self.users[0]

    def api_token(self, user: User | None = None) -> str | None:
        """3.x: a JWT from POST /auth/token (cached for the first user); 2.x: None (basic auth is used)."""
        if self.major < 3:
            return None
        user = user or self.user
        if user == self.user and self._token and self._token[1] > time.monotonic():
            return self._token[0]
        response = self._session.post(
            f"{self.url}/auth/token", json={"username": user.username, "password": user.password}, timeout=10
        )
        if response.status_code not in (200, 201):
            raise AirflowError(f"[{self.name}] POST /auth/token: {response.status_code} {response.text[:500]}")
        token = str(response.json()["access_token"])
        if user == self.user:
            self._token = (token, time.monotonic() + 3600)
        return token

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the REST API (path starts with /api/...) as the first user; no status check."""
        kwargs.setdefault("timeout", 10)
        token = self.api_token()
        if token:
            kwargs["headers"] = {"Authorization": f"Bearer {token}", **kwargs.get("headers", {})}
        else:
            kwargs.setdefault("auth", (self.user.username, self.user.password))
        return self._session.request(method, self.url + path, **kwargs)

    def api_json(self, method: str, path: str, expect: int | Sequence[int] = 200, **kwargs: Any) -> Any:
        """`api()` that raises AirflowError unless the status is expected, and returns the JSON body."""
        response = self.api(method, path, **kwargs)
        expected = (expect,) if isinstance(expect, int) else tuple(expect)
        if response.status_code not in expected:
            error = TransientApiError if response.status_code >= 500 else AirflowError
            raise error(f"[{self.name}] {method} {path}: {response.status_code} {response.text[:1000]}")
        return response.json()

    def trigger_dag(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"conf": dict(conf or {})}
        if self.major >= 3:
            body["logical_date"] = None
        run: dict[str, Any] = self.api_json("POST", f"{self.api_prefix}/dags/{dag_id}/dagRuns", json=body)
        return run

    def unpause(self, dag_id: str) -> None:
        self.api_json(
            "PATCH", f"{self.api_prefix}/dags/{dag_id}", params={"update_mask": "is_paused"}, json={"is_paused": False}
        )

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        body = self.api_json("GET", f"{self.api_prefix}/dags/{dag_id}/dagRuns", params={"limit": 100})
        runs: list[dict[str, Any]] = body["dag_runs"]
        return runs

    def wait_for_dag_run(
        self,
        dag_id: str,
        state: str = "success",
        count: int = 1,
        timeout_s: float = 60,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait for `count` runs of the DAG (matching `where`) in `state`; a failed run ends a wait for success."""

        def done() -> list[dict[str, Any]] | None:
            self._check_alive()
            runs = [r for r in self.dag_runs(dag_id) if where is None or where(r)]
            if state == "success" and (failed := [r for r in runs if r["state"] == "failed"]):
                raise AirflowError(f"[{self.name}] {dag_id} run failed: {failed}\n{self.logs()}")
            matching = [r for r in runs if r["state"] == state]
            return matching if len(matching) >= count else None

        result: list[dict[str, Any]] = poll(
            done, timeout_s=timeout_s, what=f"{count} {state} run(s) of {dag_id}", diagnose=self.logs
        )
        return result

    # -- datasets / assets, the same call on both majors

    def find_asset(self, uri: str) -> dict[str, Any] | None:
        """The asset (3.x) or dataset (2.x) with exactly this URI, or None."""
        if self.major >= 3:
            body = self.api_json("GET", "/api/v2/assets", params={"uri_pattern": uri, "limit": 100})
            return next((a for a in body["assets"] if a["uri"] == uri), None)
        response = self.api("GET", f"/api/v1/datasets/{quote(uri, safe='')}")
        if response.status_code == 404:
            return None
        if not response.ok:
            raise AirflowError(f"[{self.name}] GET dataset {uri}: {response.status_code} {response.text[:500]}")
        found: dict[str, Any] = response.json()
        return found

    def create_asset_event(self, uri: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Post an event for the asset/dataset URI through the REST API, as a forwarder would.

        A 5xx is posted again until a deadline: on SQLite, a scheduler writing at the same moment makes the API
        answer 500 "Database error" (the database is locked), and that request's transaction was rolled back.
        """
        if self.major >= 3:
            asset = self.find_asset(uri)
            if asset is None:
                raise AirflowError(f"[{self.name}] no asset with uri {uri}")
            path, body = "/api/v2/assets/events", {"asset_id": asset["id"], "extra": dict(extra or {})}
        else:
            path, body = "/api/v1/datasets/events", {"dataset_uri": uri, "extra": dict(extra or {})}
        event: dict[str, Any] = poll(
            lambda: self.api_json("POST", path, json=body),
            timeout_s=30,
            what=f"{self.name} POST {path}",
            diagnose=self.logs,
        )
        return event

    def queued_events(self, dag_id: str) -> list[dict[str, Any]]:
        """The DAG's asset/dataset run queue: one entry per asset with an event no run has consumed yet."""
        if self.major >= 3:
            body = self.api_json("GET", f"{self.api_prefix}/dags/{dag_id}/assets/queuedEvents")
        else:  # Airflow 2 answers 404 when the queue is empty
            body = self.api_json("GET", f"{self.api_prefix}/dags/{dag_id}/datasets/queuedEvent", expect=(200, 404))
        queued: list[dict[str, Any]] = body.get("queued_events") or []
        return queued

    def wait_queue_drained(self, dag_id: str, timeout_s: float = 60) -> None:
        """Wait until the scheduler has turned every queued event of the DAG into a run.

        Airflow up to 3.3 keeps one queue entry per (asset, DAG) and keeps its first `created_at`: an event for the
        same asset that arrives while the entry waits is left out of the run the entry makes, and triggers nothing
        until a later event does (apache/airflow#54659). A test that needs its own event to start a run therefore
        waits here first.
        """
        poll(
            lambda: not self.queued_events(dag_id),
            timeout_s=timeout_s,
            what=f"the run queue of {dag_id} to drain",
            diagnose=self.logs,
        )

    def upstream_events(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The asset/dataset events that triggered a run."""
        kind = "upstreamAssetEvents" if self.major >= 3 else "upstreamDatasetEvents"
        body = self.api_json("GET", f"{self.api_prefix}/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/{kind}")
        events: list[dict[str, Any]] = body["asset_events" if self.major >= 3 else "dataset_events"]
        return events


# What the `deployment_factory` fixture hands a test: (venv, name=..., dags=..., env=..., users=...) -> deployment.
DeploymentFactory = Callable[..., AirflowDeployment]


@atexit.register
def _stop_leftovers() -> None:
    for deployment in list(_LIVE):
        with contextlib.suppress(Exception):
            deployment.stop(timeout_s=5)
