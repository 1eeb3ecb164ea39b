"""Airflow 3.0 and 3.1: forward each asset event with its extra and source, which ``on_asset_changed`` never sees.

Opt in with ``[core] asset_manager_class = dataset_forwarder_listener.manager_af3.ForwardingAssetManager``
(``AIRFLOW__CORE__ASSET_MANAGER_CLASS``). Airflow registers every asset event through the configured manager: a
task's events (execution API, in the api-server; in-process under ``airflow dags test``) and ``POST
/api/v2/assets/events``. The manager forwards the event Airflow returns, with its extra, source ids and DB id, and
the ``on_asset_changed`` hook, which Airflow calls inside that registration, leaves it alone: once per event.
Events registered some other way (asset watchers call the base ``AssetManager`` directly) still reach the hook.

Airflow 3.2+ has ``on_asset_event_emitted``, which carries all this: leave the setting unset there. If it is set
anyway, the manager only registers, and the hook forwards, so nothing goes out twice.

As with the hooks, the event is forwarded when it is registered, before Airflow commits; the request pays a spool
write and a queue put, and the process's background thread sends. Nothing here blocks on SQS or raises into
Airflow.
"""

from __future__ import annotations

from typing import Any

from airflow.assets.manager import AssetManager

from dataset_forwarder_listener.hooks_af3 import HAS_EVENT_HOOK, AssetListener, event_from_asset_event, registering
from dataset_forwarder_listener.safety import guard


class ForwardingAssetManager(AssetManager):
    """Airflow's asset manager, plus forwarding of every event it registers (Airflow 3.0 and 3.1)."""

    # Airflow calls it with keywords only, on the instance ``resolve_asset_manager`` made; the base's is a
    # classmethod. The arguments are passed on exactly as given.
    def register_asset_change(self, **kwargs: Any) -> Any:
        if HAS_EVENT_HOOK:  # 3.2+: on_asset_event_emitted forwards it
            return super().register_asset_change(**kwargs)
        with registering():
            event = super().register_asset_change(**kwargs)
        if event is not None:
            with guard("register_asset_change"):
                _forward(event, kwargs["asset"])
        return event


def _forward(asset_event: Any, asset: Any) -> None:
    # Not at the top: Airflow imports this module while airflow.assets.manager is still being imported.
    from dataset_forwarder_listener.plugin import get_listener  # noqa: PLC0415

    listener = get_listener()
    if isinstance(listener, AssetListener):
        listener.forward(event_from_asset_event(asset_event, asset))
