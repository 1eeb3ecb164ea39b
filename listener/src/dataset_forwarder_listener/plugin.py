"""The Airflow plugin (entry point ``airflow.plugins``): registers the listeners for this Airflow, or nothing.

The Airflow version and the configuration are resolved once, when Airflow loads plugins. With
``DATASET_FORWARDER_QUEUE_URL`` unset the plugin registers no listener and says so once. The DAG-run
listener is registered only when ``DATASET_FORWARDER_DAG_RUNS`` names some DAG; on Airflow 2 with it the
finished-run sweep's lifecycle listener (``sweep_af2``), unless ``DATASET_FORWARDER_DAG_RUN_SWEEP_S`` is 0.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import airflow
from airflow.plugins_manager import AirflowPlugin

from dataset_forwarder_listener import config as settings
from dataset_forwarder_listener.sender import BackgroundSender, Sender, SqsTransport
from dataset_forwarder_listener.spool import Spool

log = logging.getLogger(__name__)

AIRFLOW_VERSION: str = getattr(airflow, "__version__", "0")

_listeners: list[Any] = []
_resolved = False


def airflow_release(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``3.3.2`` or ``2.11.0rc1``; (0, 0) when unreadable."""
    found = re.match(r"(\d+)(?:\.(\d+))?", version)
    if not found:
        return 0, 0
    return int(found.group(1)), int(found.group(2) or 0)


def get_listeners() -> list[Any]:
    """The process's listeners, built on first call: the asset/dataset listener first, then the DAG-run
    listener if configured; none when the forwarder is not configured."""
    global _listeners, _resolved
    if not _resolved:
        _resolved = True
        try:
            _listeners = _build_listeners()
        except Exception:
            log.warning("Dataset forwarder: the listener could not be set up; it stays off.", exc_info=True)
    return _listeners


def get_listener() -> Any | None:
    """The process's asset (Airflow 3) or dataset (Airflow 2) listener; None when not configured."""
    listeners = get_listeners()
    return listeners[0] if listeners else None


def _build_listeners() -> list[Any]:
    cfg = settings.load()
    if cfg is None:
        log.warning(
            "Dataset forwarder is installed but %s is not set: no dataset/asset events are forwarded.",
            settings.QUEUE_URL,
        )
        return []
    sender = Sender(
        SqsTransport(cfg.queue_url),
        Spool(cfg.spool_dir, cfg.spool_max, stale_after_s=2 * settings.MAX_SEND_TIMEOUT_S),
        cfg.send_timeout_s,
    )
    # One per process, for the hooks that run in long-lived processes; its thread starts on first use.
    background = BackgroundSender(sender)
    release = airflow_release(AIRFLOW_VERSION)
    listeners: list[Any]
    if release >= (3, 0):
        from dataset_forwarder_listener.hooks_af3 import AssetListener

        listeners = [AssetListener(cfg, AIRFLOW_VERSION, background)]
    else:
        from dataset_forwarder_listener.hooks_af2 import DatasetListener

        if release < (2, 9):
            log.warning(
                "Dataset forwarder supports Airflow 2.9+ and 3.x; this is %s, which may not work.", AIRFLOW_VERSION
            )
        listeners = [DatasetListener(cfg, AIRFLOW_VERSION, sender, background)]
    if cfg.dag_runs:
        from dataset_forwarder_listener.dag_runs import DagRunListener

        if release >= (3, 0) or cfg.dag_run_sweep_s == 0:
            listeners.append(DagRunListener(cfg, AIRFLOW_VERSION, background))
        else:
            listeners.extend(_with_sweep(cfg, background))
    return listeners


def _with_sweep(cfg: settings.Config, background: BackgroundSender) -> list[Any]:
    """Airflow 2: the DAG-run listener and the sweep that finds the outcomes no hook reports (REST API, UI), run by
    the scheduler only; the two share the ids reported so far."""
    from dataset_forwarder_listener.dag_runs import DagRunListener
    from dataset_forwarder_listener.sweep import DagRunSweep, RecentIds, Watermark
    from dataset_forwarder_listener.sweep_af2 import DagRunSweeper, SqlFinishedRuns

    recent = RecentIds()
    sweep = DagRunSweep(
        cfg,
        AIRFLOW_VERSION,
        background,
        SqlFinishedRuns(cfg.dag_runs),
        recent=recent,
        watermark=Watermark(background.sender.spool),
        interval_s=cfg.dag_run_sweep_s,
    )
    return [DagRunListener(cfg, AIRFLOW_VERSION, background, recent), DagRunSweeper(sweep)]


class DatasetForwarderPlugin(AirflowPlugin):
    """Forwards this deployment's dataset/asset events and DAG-run outcomes to the dataset forwarder's SQS queue."""

    name = "dataset_forwarder"
    listeners = list(get_listeners())
