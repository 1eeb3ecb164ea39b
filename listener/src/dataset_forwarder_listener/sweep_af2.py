"""Airflow 2.9 to 2.11: where the finished-run sweep meets Airflow (its SQL, and when it starts and stops).

Airflow 2 calls ``on_starting(component)`` with the ``Job`` every job command creates (scheduler,
triggerer, backfill, a task's ``LocalTaskJob``, the standalone DAG processor) before its runner gives it
a type, and with a marker for ``airflow tasks run --raw``. The sweep's thread is started for a ``Job``
and sweeps only once the job's type says scheduler; for any other job it ends at once.
``before_stopping(component)`` stops it with the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from airflow.listeners import hookimpl

from dataset_forwarder_listener.safety import guard
from dataset_forwarder_listener.sweep import FINISHED, SCHEDULER_JOB, DagRunSweep, Key, like_patterns

log = logging.getLogger(__name__)


class SqlFinishedRuns:
    """Finished runs of the selected DAGs from Airflow's database, in a session of the sweep's own."""

    def __init__(self, dag_globs: Sequence[str]) -> None:
        self.conditions = like_patterns(dag_globs)

    @contextmanager
    def batch(self, after: datetime | None, cursor: Key | None, limit: int) -> Iterator[Sequence[Any]]:
        from airflow.models.dagrun import DagRun
        from airflow.utils.session import create_session
        from sqlalchemy import and_, or_, select

        query = select(DagRun).where(DagRun.state.in_(FINISHED))
        if self.conditions is not None:  # the index on (dag_id, state) serves these
            query = query.where(
                or_(
                    *(
                        DagRun.dag_id == value if kind == "=" else DagRun.dag_id.like(value, escape="\\")
                        for kind, value in self.conditions
                    )
                )
            )
        if cursor is not None:
            moment, last_id = cursor
            query = query.where(or_(DagRun.updated_at > moment, and_(DagRun.updated_at == moment, DagRun.id > last_id)))
        elif after is not None:
            query = query.where(DagRun.updated_at > after)
        query = query.order_by(DagRun.updated_at, DagRun.id).limit(limit)
        with create_session() as session:
            yield list(session.scalars(query))


def is_scheduler(component: Any) -> bool | None:
    """Whether the job ``component`` is the scheduler's; None while its runner has not typed it yet."""
    job_type = getattr(component, "job_type", None)
    if job_type is None:
        return None
    return str(job_type) == SCHEDULER_JOB


class DagRunSweeper:
    """The lifecycle listener that runs the sweep in Airflow 2's scheduler."""

    def __init__(self, sweep: DagRunSweep) -> None:
        self.sweep = sweep
        self._component: Any = None

    @hookimpl
    def on_starting(self, component: Any) -> None:
        with guard("on_starting"):
            if not hasattr(component, "job_type") or self.sweep.running:
                return  # not a job (``tasks run --raw``'s marker), or the sweep already runs here
            self._component = component
            self.sweep.start(lambda: is_scheduler(component))

    @hookimpl
    def before_stopping(self, component: Any) -> None:
        with guard("before_stopping"):
            if component is self._component:
                self.sweep.stop()
