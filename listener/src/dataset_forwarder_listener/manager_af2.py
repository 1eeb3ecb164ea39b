"""Airflow 2.9 to 2.11: forward the dataset events no task made (REST API, UI), which no listener hook sees.

Opt in with ``[core] dataset_manager_class = dataset_forwarder_listener.manager_af2.ForwardingDatasetManager``
(``AIRFLOW__CORE__DATASET_MANAGER_CLASS``). Task events keep going through ``on_task_instance_success``; the
manager adds only the events registered without a task instance, so nothing is sent twice. It runs where Airflow
registers them (the webserver for ``POST /api/v1/datasets/events``) and sends before the request returns, within
``DATASET_FORWARDER_SEND_TIMEOUT_S``, spooling what it could not send. Events forwarded *into* an Airflow 2
deployment then travel on, like on Airflow 3.
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
    if isinstance(listener, DatasetListener):
        listener.forward([event_from_row(dataset_event, uri)])
