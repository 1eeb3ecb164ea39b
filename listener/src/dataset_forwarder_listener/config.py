"""The listener's settings, read once from the environment into a frozen dataclass.

A missing queue URL turns the listener off (``load`` returns None); any other bad value is
logged with the variable's name and replaced by a safe default, so configuration can never
break Airflow.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

QUEUE_URL = "DATASET_FORWARDER_QUEUE_URL"
DEPLOYMENT = "DATASET_FORWARDER_DEPLOYMENT"
INCLUDE = "DATASET_FORWARDER_INCLUDE"
DAG_RUNS = "DATASET_FORWARDER_DAG_RUNS"
SPOOL_DIR = "DATASET_FORWARDER_SPOOL_DIR"
SPOOL_MAX = "DATASET_FORWARDER_SPOOL_MAX"
SEND_TIMEOUT_S = "DATASET_FORWARDER_SEND_TIMEOUT_S"
DAG_RUN_SWEEP_S = "DATASET_FORWARDER_DAG_RUN_SWEEP_S"

DEFAULT_SPOOL_MAX = 10_000
DEFAULT_SEND_TIMEOUT_S = 5.0
MAX_SEND_TIMEOUT_S = 60.0
DEFAULT_DAG_RUN_SWEEP_S = 10.0
MAX_DAG_RUN_SWEEP_S = 3600.0

# Where a deployment name can come from when DATASET_FORWARDER_DEPLOYMENT is unset, best first:
# Astro sets its deployment namespace, MWAA its environment name; instance_name is the
# operator's own label ([webserver] on Airflow 2, [api] on Airflow 3).
DEPLOYMENT_FALLBACKS = (
    "ASTRO_DEPLOYMENT_NAMESPACE",
    "AIRFLOW_ENV_NAME",
    "AIRFLOW__API__INSTANCE_NAME",
    "AIRFLOW__WEBSERVER__INSTANCE_NAME",
)

# Target names in SSM follow this pattern and the forwarder's loop guard compares them with
# the trail, so a deployment name outside it can never match a target.
TARGET_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Config:
    queue_url: str
    deployment: str
    include: tuple[str, ...] = ()
    dag_runs: tuple[str, ...] = ()
    """Globs of the DAG ids whose finished runs are forwarded; empty: none."""
    spool_dir: Path = Path("dataset_forwarder_spool")
    spool_max: int = DEFAULT_SPOOL_MAX
    send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S
    dag_run_sweep_s: float = DEFAULT_DAG_RUN_SWEEP_S
    """Airflow 2: how often the scheduler looks for runs finished without a hook (REST, UI); 0: never."""


def load(environ: Mapping[str, str] | None = None) -> Config | None:
    """Read the configuration; None when DATASET_FORWARDER_QUEUE_URL is unset (listener off)."""
    env = os.environ if environ is None else environ
    queue_url = env.get(QUEUE_URL, "").strip()
    if not queue_url:
        return None
    return Config(
        queue_url=queue_url,
        deployment=_deployment(env),
        include=_globs(env, INCLUDE),
        dag_runs=_globs(env, DAG_RUNS),
        spool_dir=_spool_dir(env),
        spool_max=_positive_int(env, SPOOL_MAX, DEFAULT_SPOOL_MAX),
        send_timeout_s=_timeout(env),
        dag_run_sweep_s=_sweep_interval(env),
    )


def _deployment(env: Mapping[str, str]) -> str:
    name = env.get(DEPLOYMENT, "").strip()
    source = DEPLOYMENT
    if not name:
        for variable in DEPLOYMENT_FALLBACKS:
            name = env.get(variable, "").strip()
            if name:
                source = variable
                break
    if not name:
        name = socket.gethostname() or "airflow"
        source = "the hostname"
        log.warning(
            "%s is unset and no Astro/MWAA deployment name was found: using %s (%r) as this deployment's "
            "name. Hostnames differ between Airflow components and pods, which breaks the loop guard; "
            "set %s to the name the downstream targets know this deployment by.",
            DEPLOYMENT,
            source,
            name,
            DEPLOYMENT,
        )
    if not TARGET_NAME.match(name):
        log.warning(
            "Deployment name %r (from %s) does not match %s; the forwarder's loop guard compares trail "
            "entries with target names, so set %s to a name of that form.",
            name,
            source,
            TARGET_NAME.pattern,
            DEPLOYMENT,
        )
    return name


def _globs(env: Mapping[str, str], variable: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in env.get(variable, "").split(",") if p.strip())


def _spool_dir(env: Mapping[str, str]) -> Path:
    configured = env.get(SPOOL_DIR, "").strip()
    if configured:
        return Path(configured).expanduser()
    airflow_home = env.get("AIRFLOW_HOME", "").strip() or "~/airflow"
    return Path(airflow_home).expanduser() / "dataset_forwarder_spool"


def _positive_int(env: Mapping[str, str], variable: str, default: int) -> int:
    raw = env.get(variable, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        log.error("%s=%r is not a positive integer; using the default %d.", variable, raw, default)
        return default
    return value


def _timeout(env: Mapping[str, str]) -> float:
    raw = env.get(SEND_TIMEOUT_S, "").strip()
    if not raw:
        return DEFAULT_SEND_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_SEND_TIMEOUT_S:
        log.error(
            "%s=%r is not a number of seconds in (0, %g]; using the default %g.",
            SEND_TIMEOUT_S,
            raw,
            MAX_SEND_TIMEOUT_S,
            DEFAULT_SEND_TIMEOUT_S,
        )
        return DEFAULT_SEND_TIMEOUT_S
    return value


def _sweep_interval(env: Mapping[str, str]) -> float:
    raw = env.get(DAG_RUN_SWEEP_S, "").strip()
    if not raw:
        return DEFAULT_DAG_RUN_SWEEP_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= MAX_DAG_RUN_SWEEP_S:  # also NaN
        log.error(
            "%s=%r is not a number of seconds in [0, %g] (0: off); using the default %g.",
            DAG_RUN_SWEEP_S,
            raw,
            MAX_DAG_RUN_SWEEP_S,
            DEFAULT_DAG_RUN_SWEEP_S,
        )
        return DEFAULT_DAG_RUN_SWEEP_S
    return value
