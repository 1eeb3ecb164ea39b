"""Airflow 2.9 to 2.11: forward the dataset events no task made (REST API, UI), which no listener hook sees.

Opt in with ``[core] dataset_manager_class = dataset_forwarder_listener.manager_af2.ForwardingDatasetManager``
(``AIRFLOW__CORE__DATASET_MANAGER_CLASS``). Task events keep going through ``on_task_instance_success``; the
manager adds only the events registered without a task instance, so nothing is sent twice. Events forwarded
*into* an Airflow 2 deployment then travel on, as on Airflow 3.

Such events are registered in long-lived processes (the webserver, for ``POST /api/v1/datasets/events`` and the
UI), so they go the way Airflow 3's api-server sends: the request pays a spool write, and a background thread
sends, backing off while SQS is down. A request never waits for SQS.
"""

from __future__ import annotations

from typing import Any

from airflow.datasets.manager import DatasetManager

from dataset_forwarder_listener.hooks_af2 import DatasetListener, event_from_row
from dataset_forwarder_listener.safety import guard


class ForwardingDatasetManager(DatasetManager):
    """Airflow's dataset manager, plus forwarding of the events it registers without a task instance."""

    # Airflow calls it with keywords only. 2.9 has an instance method, 2.10+ a classmethod with @provide_session:
    # the arguments are passed on exactly as given (an explicit session=None would replace its own session).
    def register_dataset_change(self, **kwargs: Any) -> Any:
        event = super().register_dataset_change(**kwargs)
        if event is not None and kwargs.get("task_instance") is None:
            with guard("register_dataset_change"):
                _forward(event, kwargs["dataset"].uri)
        return event


def _forward(dataset_event: Any, uri: str) -> None:
    # Not at the top: Airflow imports this module while airflow.datasets.manager is still being imported.
    from dataset_forwarder_listener.plugin import get_listener  # noqa: PLC0415

    listener = get_listener()
    if not isinstance(listener, DatasetListener):
        return
    for envelope in listener.envelopes([event_from_row(dataset_event, uri)]):
        listener.background.submit(envelope)
