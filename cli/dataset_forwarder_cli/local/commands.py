"""`dataset-forwarder local up|down|env|status`: the whole forwarder on this machine, no AWS account.

`up` starts a process that runs moto server, creates the stack from template.yaml in it and polls the events
queue like Lambda's event source, invoking the real handler. It writes a state file (PID, URLs, the environment
to use) into the state directory; `down` stops that process by its PID. `--foreground` runs it in the terminal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from dataset_forwarder_cli.errors import CliError

STATE_DIR_ENV = "DATASET_FORWARDER_LOCAL_DIR"
STATE_FILE = "state.json"
LOG_FILE = "local.log"
ENV_SETS = ("all", "upstream", "cli", "handler")
_PROCESS_MARKER = "dataset_forwarder_cli"  # in the command line of every process `up` starts


def default_state_dir() -> Path:
    override = os.environ.get(STATE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "airflow-dataset-forwarder" / "local"


# --------------------------------------------------------------------------------------------- state file


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CliError(f"{state_dir / STATE_FILE} is not valid JSON ({exc}); delete it") from None
    return data


def _write_state(state_dir: Path, state: Mapping[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    temporary = state_dir / f".{STATE_FILE}.{os.getpid()}"
    temporary.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    temporary.replace(state_dir / STATE_FILE)


def _remove_state(state_dir: Path, pid: int) -> None:
    state = read_state(state_dir)
    if state is not None and state.get("pid") == pid:
        (state_dir / STATE_FILE).unlink(missing_ok=True)


def is_our_process(pid: int) -> bool:
    """True if `pid` runs and is a local stack this command started (not a PID reused by something else)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            return _PROCESS_MARKER in cmdline.read_bytes().decode(errors="replace")
        except OSError:
            return False
    return True  # no /proc (macOS): the PID is alive, trust the state file


def _running_state(state_dir: Path) -> dict[str, Any] | None:
    """The state of a running local stack, or None; a state file left by a dead process is removed."""
    state = read_state(state_dir)
    if state is None:
        return None
    pid = int(state.get("pid", 0))
    if pid and is_our_process(pid):
        return state
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------- logging


class JsonLines(logging.Formatter):
    """One JSON object per line, with the record's `extra` fields: the same shape as the handler's logs."""

    _STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "level": record.levelname,
            "message": record.getMessage(),
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "service": "local-event-source",
            "name": record.name,
        }
        data |= {key: value for key, value in record.__dict__.items() if key not in self._STANDARD}
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("dataset_forwarder_cli")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


# --------------------------------------------------------------------------------------------- options


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    result = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise CliError(f"{option} takes KEY=VALUE, got {value!r}")
        result[key] = item
    return result


def _env_for(state: Mapping[str, Any], which: str) -> dict[str, str]:
    from .stack import DeployedStack

    stack = DeployedStack.from_json(state["stack"])
    if which == "upstream":
        return stack.upstream_env()
    if which == "handler":
        return stack.handler_env(state.get("handler_env_overrides") or {})
    return {**stack.cli_env(), **_mwaa_env(state)}


def _mwaa_env(state: Mapping[str, Any]) -> dict[str, str]:
    from .mwaa import ENDPOINT_VARIABLE

    mwaa = state.get("mwaa")
    return {ENDPOINT_VARIABLE: mwaa["endpoint"]} if mwaa else {}


def _mwaa_specs(values: tuple[str, ...], allow: tuple[str, ...]) -> list[Any]:
    """--mwaa-environment and --mwaa-allow as environment specs (passwords read from the named variables)."""
    from .mwaa import parse_environment_spec, with_allowed

    try:
        return with_allowed([parse_environment_spec(value, os.environ) for value in values], allow)
    except ValueError as exc:
        raise CliError(f"--mwaa-environment/--mwaa-allow: {exc}") from None


def _print_summary(state: Mapping[str, Any]) -> None:
    from .stack import DeployedStack, format_env

    stack = DeployedStack.from_json(state["stack"])
    click.echo(f"local stack running (pid {state['pid']}); log: {state['log']}")
    click.echo(f"  moto server  {stack.endpoint}")
    click.echo(f"  stack        {stack.stack_name} from {stack.template}")
    click.echo(f"  events queue {stack.queue_url}")
    click.echo(f"  dead letters {stack.dlq_url}")
    if state.get("mwaa"):
        names = ", ".join(state["mwaa"]["environments"]) or "none"
        click.echo(f"  mwaa         {state['mwaa']['endpoint']} (InvokeRestApi; environments: {names})")
    click.echo(
        f"  event source BatchSize {stack.batch_size}, MaximumBatchingWindowInSeconds {stack.batching_window_s:g}, "
        f"MaximumConcurrency {stack.maximum_concurrency}, function timeout {stack.timeout_s:g} s, "
        f"{stack.handler} from {stack.code_dir}"
    )
    click.echo("# environment for an upstream Airflow (add DATASET_FORWARDER_DEPLOYMENT=<its name>) and for this CLI:")
    click.echo(format_env({**stack.cli_env(), **_mwaa_env(state)}))
    click.echo("# stop it with: dataset-forwarder local down")


# --------------------------------------------------------------------------------------------- commands


@click.group()
def local() -> None:
    """Run the forwarder on this machine: moto server with the stack from template.yaml, a Lambda-like poller.

    \b
    Examples:
      dataset-forwarder local up                 # background; prints the environment to use
      eval "$(dataset-forwarder local env)"      # then: dataset-forwarder targets put ... --allow-http
      dataset-forwarder local down
    """


state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_state_dir,
    show_default=f"${STATE_DIR_ENV} or ~/.cache/airflow-dataset-forwarder/local",
    help="Where the state file (PID, URLs) and the log are kept.",
)


@local.command("up")
@click.option("--port", type=click.IntRange(1, 65535), help="moto server's port on 127.0.0.1 (default: a free one).")
@click.option("--foreground", is_flag=True, help="Run in this terminal until Ctrl-C, logs on stdout.")
@click.option("--stack-name", default="dataset-forwarder-local", show_default=True)
@click.option("--template", type=click.Path(dir_okay=False, path_type=Path), help="Default: the checkout's.")
@click.option("--parameter", "parameters", multiple=True, metavar="KEY=VALUE", help="A template parameter; repeat.")
@click.option("--handler-env", "handler_env", multiple=True, metavar="KEY=VALUE", help="Extra function variable.")
@click.option("--warm", type=click.IntRange(0, 100), default=1, show_default=True, help="Environments started early.")
@click.option("--timeout", "timeout_s", type=float, default=180, show_default=True, help="Seconds to wait for it.")
@click.option(
    "--mwaa-environment",
    "mwaa_environments",
    multiple=True,
    metavar="NAME=URL[,airflow=2|3][,user=U][,password-env=VAR][,region=R]",
    help="Also run the local MWAA emulator (InvokeRestApi) with this environment in front of the Airflow at URL; "
    "repeat. The handler gets AWS_ENDPOINT_URL_MWAA. See docs/local-mwaa.md.",
)
@click.option(
    "--mwaa-allow",
    "mwaa_allow",
    multiple=True,
    metavar="NAME=IDENTITY",
    help="Let an account id, ARN or IAM role ARN (its sessions) call environment NAME; repeat. "
    "Default: the account 123456789012 (the local stack's credentials).",
)
@click.option("--mwaa-port", type=click.IntRange(1, 65535), help="The MWAA emulator's port (default: a free one).")
@click.option("--json", "as_json", is_flag=True, help="Print the state (URLs, environment) as JSON.")
@state_dir_option
def up(
    port: int | None,
    foreground: bool,
    stack_name: str,
    template: Path | None,
    parameters: tuple[str, ...],
    handler_env: tuple[str, ...],
    warm: int,
    timeout_s: float,
    mwaa_environments: tuple[str, ...],
    mwaa_allow: tuple[str, ...],
    mwaa_port: int | None,
    as_json: bool,
    state_dir: Path,
) -> None:
    """Start moto server, create the stack from template.yaml in it, and poll its queue with the real handler."""
    parameter_values = _pairs(parameters, "--parameter")
    handler_overrides = _pairs(handler_env, "--handler-env")
    mwaa_specs = _mwaa_specs(mwaa_environments, mwaa_allow)
    running = _running_state(state_dir)
    if running is not None:
        raise CliError(
            f"a local stack is already running (pid {running['pid']}, {running['stack']['endpoint']}): "
            f"`dataset-forwarder local down{_state_dir_flag(state_dir)}` first"
        )
    if foreground:
        _run_foreground(
            port,
            stack_name,
            template,
            parameter_values,
            handler_overrides,
            warm,
            state_dir,
            as_json,
            mwaa_specs,
            mwaa_port,
        )
        return
    mwaa_args = [("--mwaa-environment", v) for v in mwaa_environments] + [("--mwaa-allow", v) for v in mwaa_allow]
    if mwaa_port:
        mwaa_args.append(("--mwaa-port", str(mwaa_port)))
    state = _start_background(
        port, stack_name, template, parameters, handler_env, warm, state_dir, timeout_s=timeout_s, extra=mwaa_args
    )
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=True))
    else:
        _print_summary(state)


def _state_dir_flag(state_dir: Path) -> str:
    return "" if state_dir == default_state_dir() else f" --state-dir {state_dir}"


def _start_background(
    port: int | None,
    stack_name: str,
    template: Path | None,
    parameters: tuple[str, ...],
    handler_env: tuple[str, ...],
    warm: int,
    state_dir: Path,
    *,
    timeout_s: float,
    extra: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    log_path = state_dir / LOG_FILE
    command = [sys.executable, "-m", "dataset_forwarder_cli.main", "local", "up", "--foreground"]
    command += ["--state-dir", str(state_dir), "--stack-name", stack_name, "--warm", str(warm)]
    if port:
        command += ["--port", str(port)]
    if template:
        command += ["--template", str(template.resolve())]
    for value in parameters:
        command += ["--parameter", value]
    for value in handler_env:
        command += ["--handler-env", value]
    for option, value in extra:
        command += [option, value]
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(  # noqa: S603 - this interpreter running this package, no shell
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `down` ends it and its environments together
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = read_state(state_dir)
        if state is not None and state.get("pid") == process.pid and state.get("status") == "running":
            return state
        if process.poll() is not None:
            raise CliError(f"the local stack exited with {process.returncode}; log {log_path}:\n{_tail(log_path)}")
        time.sleep(0.2)
    _terminate(process.pid, 10)
    raise CliError(f"the local stack did not come up within {timeout_s:g} s; log {log_path}:\n{_tail(log_path)}")


def _run_foreground(
    port: int | None,
    stack_name: str,
    template: Path | None,
    parameters: dict[str, str],
    handler_overrides: dict[str, str],
    warm: int,
    state_dir: Path,
    as_json: bool,
    mwaa_specs: list[Any],
    mwaa_port: int | None,
) -> None:
    from .mwaa import ENDPOINT_VARIABLE, MwaaEmulator
    from .stack import FAKE_CREDENTIALS, LocalStack, LocalStackError, free_port

    _configure_logging()
    logger = logging.getLogger("dataset_forwarder_cli.local")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    if mwaa_specs:  # its port is chosen first: the handler's environment names it
        mwaa_port = mwaa_port or free_port()
        handler_overrides = {**handler_overrides, ENDPOINT_VARIABLE: f"http://127.0.0.1:{mwaa_port}"}
    stack = LocalStack(
        port=port,
        stack_name=stack_name,
        parameters=parameters,
        template_path=template,
        handler_env=handler_overrides,
        warm=warm,
    )
    mwaa: MwaaEmulator | None = None
    if mwaa_specs:  # with moto's endpoint, the keys moto issues (AssumeRole) are known too
        mwaa = MwaaEmulator(port=mwaa_port or 0, keys=_fake_keys(FAKE_CREDENTIALS), moto_endpoint=stack.endpoint)
    try:
        try:
            if mwaa is not None:
                for spec in mwaa_specs:
                    mwaa.add_spec(spec)
                mwaa.start()
            stack.start()
        except (LocalStackError, RuntimeError, OSError) as exc:
            raise CliError(f"local stack not started: {exc}") from None
        except Exception as exc:  # an AWS API error from moto while deploying: one line, the log has the rest
            logger.exception("local stack not started")
            raise CliError(f"local stack not started: {type(exc).__name__}: {exc}") from None
        deployed = stack.stack
        state = {
            "status": "running",
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "log": str(state_dir / LOG_FILE),
            "port": stack.moto.port,
            "handler_env_overrides": handler_overrides,
            "stack": deployed.to_json(),
        }
        if mwaa is not None:
            state["mwaa"] = {"endpoint": mwaa.endpoint, "environments": [spec.name for spec in mwaa_specs]}
        logger.info(
            "local stack running",
            extra={"endpoint": stack.endpoint, "start_s": round(stack.timings.get("start_s", 0.0), 2)},
        )
        _write_state(state_dir, state)
        if as_json:
            click.echo(json.dumps(state, indent=2, sort_keys=True), err=True)
        else:
            with contextlib.redirect_stdout(sys.stderr):
                _print_summary(state)
        while not stop.wait(1.0):
            pass
        logger.info("stopping the local stack")
    finally:
        stack.stop()
        if mwaa is not None:
            mwaa.stop()
        _remove_state(state_dir, os.getpid())
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _fake_keys(credentials: Mapping[str, str]) -> dict[str, str]:
    return {credentials["AWS_ACCESS_KEY_ID"]: credentials["AWS_SECRET_ACCESS_KEY"]}


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM the local stack (it lets running invocations finish and ends its environments), then SIGKILL its
    whole process group if it is still there after the deadline; True if it was running."""
    if not is_our_process(pid):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_our_process(pid):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return True


@local.command("down")
@click.option("--timeout", "timeout_s", type=float, default=70, show_default=True, help="Then SIGKILL.")
@state_dir_option
def down(timeout_s: float, state_dir: Path) -> None:
    """Stop the local stack `up` started (its PID from the state file); running invocations may finish first."""
    state = read_state(state_dir)
    if state is None:
        click.echo("no local stack is running")
        return
    pid = int(state.get("pid", 0))
    if pid and _terminate(pid, timeout_s):
        click.echo(f"local stack stopped (pid {pid})")
    else:
        click.echo(f"local stack (pid {pid}) was not running; state removed")
    (state_dir / STATE_FILE).unlink(missing_ok=True)


@local.command("env")
@click.option(
    "--for",
    "which",
    type=click.Choice(ENV_SETS),
    default="all",
    show_default=True,
    help="upstream: what an upstream Airflow's listener needs; cli/all: that plus the DLQ and SSM paths "
    "for this CLI; handler: the function's environment.",
)
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def env(which: str, as_json: bool, state_dir: Path) -> None:
    """The environment variables for the running local stack, as `export` lines for eval, or JSON.

    \b
    Example:
      eval "$(dataset-forwarder local env)"
    """
    from .stack import format_env

    state = _running_state(state_dir)
    if state is None:
        raise CliError("no local stack is running: `dataset-forwarder local up` first")
    variables = _env_for(state, which)
    click.echo(json.dumps(variables, indent=2, sort_keys=True) if as_json else format_env(variables))


@local.command("status")
@click.option("--json", "as_json", is_flag=True)
@state_dir_option
def status(as_json: bool, state_dir: Path) -> None:
    """Whether a local stack runs, with its URLs and event source settings; exit 1 if none."""
    state = _running_state(state_dir)
    if state is None:
        if as_json:
            click.echo(json.dumps({"status": "stopped"}))
        else:
            click.echo("no local stack is running")
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(state, indent=2, sort_keys=True))
    else:
        _print_summary(state)
