"""Airflow 2.9 to 2.11 listener: the dataset events of a task try, read when the try succeeds.

``on_dataset_changed`` gets only the Dataset (no event extra, no source), so it is not used.
``on_task_instance_success`` is called in the task's process after the try's ``DatasetEvent``
rows were flushed in the same session and before the commit, so they are read there, with
their extra and source ids, and sent before the hook returns (the process ends with
``os._exit``: nothing may be left to a thread). Events created through the REST API or the UI
never pass a task: ``manager_af2.ForwardingDatasetManager`` forwards those when it is configured.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from airflow.listeners import hookimpl

from dataset_forwarder_listener.config import Config
from dataset_forwarder_listener.envelope import EnvelopeBody, UpstreamEvent, build
from dataset_forwarder_listener.safety import guard
from dataset_forwarder_listener.sender import BackgroundSender, Sender

log = logging.getLogger(__name__)

TryKey = tuple[str, str, str, int]


def try_key(task_instance: Any) -> TryKey:
    return (task_instance.dag_id, task_instance.task_id, task_instance.run_id, task_instance.map_index)


def events_of_try(session: Any, task_instance: Any, since: datetime | None) -> list[tuple[Any, str]]:
    """``(DatasetEvent, uri)`` rows this task try emitted, oldest first.

    Rows of earlier tries (and, under ``airflow dags test``, of earlier runs with the same run id)
    match the source ids too; ``since`` (the try's start) keeps only this try's.
    """
    from airflow.models.dataset import DatasetEvent, DatasetModel
    from sqlalchemy import select

    dag_id, task_id, run_id, map_index = try_key(task_instance)
    query = (
        select(DatasetEvent, DatasetModel.uri)
        .join(DatasetModel, DatasetModel.id == DatasetEvent.dataset_id)
        .where(
            DatasetEvent.source_dag_id == dag_id,
            DatasetEvent.source_task_id == task_id,
            DatasetEvent.source_run_id == run_id,
            DatasetEvent.source_map_index == map_index,
        )
    )
    if since is not None:
        query = query.where(DatasetEvent.timestamp >= since)
    return [(row[0], row[1]) for row in session.execute(query.order_by(DatasetEvent.id))]


def event_from_row(dataset_event: Any, uri: str) -> UpstreamEvent:
    return UpstreamEvent(
        uri=uri,
        name=None,  # Airflow 2 datasets have no name
        extra=dataset_event.extra,
        dag_id=dataset_event.source_dag_id,
        task_id=dataset_event.source_task_id,
        run_id=dataset_event.source_run_id,
        map_index=dataset_event.source_map_index,
        event_key=str(dataset_event.id),
        timestamp=dataset_event.timestamp,
    )


class DatasetListener:
    def __init__(self, config: Config, airflow_version: str, sender: Sender, background: BackgroundSender) -> None:
        self.config = config
        self.airflow_version = airflow_version
        self.sender = sender
        self.background = background
        """For long-lived processes (the webserver's events without a task): the same spool and queue."""
        # When the try began, for tries whose task_instance.start_date is None (``airflow dags test``).
        self._started: dict[TryKey, datetime] = {}

    @hookimpl
    def on_task_instance_running(self, previous_state: Any, task_instance: Any, session: Any) -> None:
        with guard("on_task_instance_running"):
            self._started[try_key(task_instance)] = datetime.now(timezone.utc)

    @hookimpl
    def on_task_instance_success(self, previous_state: Any, task_instance: Any, session: Any) -> None:
        with guard("on_task_instance_success"):
            started = self._started.pop(try_key(task_instance), None)
            self._forward_try(task_instance, session, task_instance.start_date or started)

    def _forward_try(self, task_instance: Any, session: Any, since: datetime | None) -> None:
        if session is None:
            from airflow.settings import Session

            session = Session()  # the caller's thread-local session
        if since is None:
            log.info("Start of %s unknown: forwarding every dataset event it has ever emitted.", task_instance)
        self.forward([event_from_row(row, uri) for row, uri in events_of_try(session, task_instance, since)])

    def forward(self, events: list[UpstreamEvent]) -> None:
        """Send the envelopes of ``events`` before returning, within the send budget."""
        envelopes = self.envelopes(events)
        if envelopes:
            self.sender.send_all(envelopes)

    def envelopes(self, events: list[UpstreamEvent]) -> list[EnvelopeBody]:
        """The envelopes of ``events`` that are to be sent (include filter and loop guard applied)."""
        built = (
            build(
                event,
                deployment=self.config.deployment,
                airflow_version=self.airflow_version,
                include=self.config.include,
            )
            for event in events
        )
        return [envelope for envelope in built if envelope is not None]
