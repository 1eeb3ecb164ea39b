"""Finished DAG runs (success, failed) of the DAGs named in ``DATASET_FORWARDER_DAG_RUNS``, as ``dag_run`` envelopes.

``on_dag_run_success`` / ``on_dag_run_failed`` have the same signature on Airflow 2.9+ and 3.x. They run
where the run's outcome is decided: in the scheduler's loop (inside its transaction), in the api-server for
a state set through the REST API or UI (3.x only; 2.x calls no hook there: ``sweep`` finds those), in the
``airflow dags test`` process. None of these may wait for SQS, so the hook builds the envelope and hands it to
the background sender: a spool write and a queue put.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from airflow.listeners import hookimpl

from dataset_forwarder_listener.config import Config
from dataset_forwarder_listener.envelope import LINEAGE_KEY, RunOutcome, build_run, selected
from dataset_forwarder_listener.safety import guard
from dataset_forwarder_listener.sender import BackgroundSender

if TYPE_CHECKING:
    from dataset_forwarder_listener.sweep import RecentIds

log = logging.getLogger(__name__)

# Run types started by asset/dataset events (3.x, 2.x): only their consumed events are read.
ASSET_TRIGGERED = frozenset({"asset_triggered", "dataset_triggered"})
CONSUMED_EVENTS = ("consumed_asset_events", "consumed_dataset_events")


def outcome_of(dag_run: Any, state: str) -> RunOutcome:
    """Read Airflow's ``DagRun`` (2.9+ and 3.x) as it is when the hook is called."""
    run_type = _text(getattr(dag_run, "run_type", None))
    partition_key = getattr(dag_run, "partition_key", None)  # 3.x only
    return RunOutcome(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        state=state,
        run_type=run_type,
        logical_date=getattr(dag_run, "logical_date", None),
        start_date=dag_run.start_date,
        end_date=dag_run.end_date,
        clear_number=getattr(dag_run, "clear_number", 0) or 0,
        partition_key=_text(partition_key),
        lineages=tuple(lineages(dag_run, run_type)),
    )


def _text(value: Any) -> str | None:
    """A string column's value; an enum member (``DagRunType``) by its value."""
    if value is None:
        return None
    return str(getattr(value, "value", value))


def lineages(dag_run: Any, run_type: str | None) -> Iterator[Any]:
    """The ``dataset_forwarder`` values of what started the run: its conf (``trigger_dag``), then the extras of
    the asset events it consumed (asset-triggered runs only)."""
    conf = getattr(dag_run, "conf", None)
    if isinstance(conf, dict) and LINEAGE_KEY in conf:
        yield conf[LINEAGE_KEY]
    if run_type in ASSET_TRIGGERED:
        try:
            events = consumed_events(dag_run)
        except Exception:
            log.warning(
                "Could not read the asset events that started run %s; its outcome is forwarded with the trail of "
                "its conf only.",
                dag_run.run_id,
                exc_info=True,
            )
            events = []
        for event in events:
            extra = getattr(event, "extra", None)
            if isinstance(extra, dict) and LINEAGE_KEY in extra:
                yield extra[LINEAGE_KEY]


def consumed_events(dag_run: Any) -> list[Any]:
    """The asset/dataset events the run consumed, read in the caller's session; [] when that is not possible.

    In the scheduler and the api-server the run is bound to their session: the read is one SELECT, without
    flushing their pending changes (Airflow's sessions do not autoflush, and ``no_autoflush`` makes sure).
    Under ``airflow dags test`` the run is detached (no session), and a lazy load would raise: skipped there.
    """
    from sqlalchemy.orm import object_session  # noqa: PLC0415 (Airflow's dependency, imported where Airflow runs)

    session = object_session(dag_run)
    if session is None:
        log.debug("Run %s is not bound to a session: its consumed asset events are not read.", dag_run.run_id)
        return []
    with session.no_autoflush:
        for name in CONSUMED_EVENTS:
            if hasattr(type(dag_run), name):
                return list(getattr(dag_run, name) or [])
    return []


class DagRunListener:
    """Registered only when ``DATASET_FORWARDER_DAG_RUNS`` names at least one DAG."""

    def __init__(
        self, config: Config, airflow_version: str, sender: BackgroundSender, recent: RecentIds | None = None
    ) -> None:
        self.config = config
        self.airflow_version = airflow_version
        self.sender = sender
        self.recent = recent
        """Airflow 2 with the sweep: the ids reported here, which the sweep then leaves alone."""

    @hookimpl
    def on_dag_run_success(self, dag_run: Any, msg: str) -> None:
        with guard("on_dag_run_success"):
            self._report(dag_run, "success")

    @hookimpl
    def on_dag_run_failed(self, dag_run: Any, msg: str) -> None:
        with guard("on_dag_run_failed"):
            self._report(dag_run, "failed")

    def _report(self, dag_run: Any, state: str) -> None:
        if not selected(dag_run.dag_id, self.config.dag_runs):
            return
        envelope = build_run(
            outcome_of(dag_run, state), deployment=self.config.deployment, airflow_version=self.airflow_version
        )
        if envelope is not None:
            if self.recent is not None:
                self.recent.add(envelope["id"])
            self.sender.submit(envelope)
