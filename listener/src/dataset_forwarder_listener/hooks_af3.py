"""Airflow 3 listener: asset events, in whichever process registers them (normally the api-server).

Airflow 3.2+ calls ``on_asset_event_emitted`` with the event's extra and source ids. Airflow
3.0 and 3.1 only have ``on_asset_changed(asset)``: there the event's extra and source are not
available, so the envelope carries ``extra: {}`` and a null source, and the loop guard cannot
see an incoming trail, unless ``manager_af3.ForwardingAssetManager`` is configured: it forwards the
events it registers, with all of that, and ``on_asset_changed`` leaves those alone. Exactly one of
the two hooks is defined, chosen once at import, so an event is never forwarded twice on 3.2+
(where both fire).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from airflow.listeners import hookimpl

from dataset_forwarder_listener.config import Config
from dataset_forwarder_listener.envelope import UpstreamEvent, build
from dataset_forwarder_listener.safety import guard
from dataset_forwarder_listener.sender import BackgroundSender

log = logging.getLogger(__name__)


def _asset_hookspec_has(name: str) -> bool:
    try:
        from airflow.listeners.spec import asset as asset_spec
    except ImportError:
        return False
    return hasattr(asset_spec, name)


HAS_EVENT_HOOK = _asset_hookspec_has("on_asset_event_emitted")

# Keys unique to a hook call. Not uuid4: it reads os.urandom, a system call that releases the GIL
# in the api-server's request path (see Spool.write). Seeded from os.urandom once, and again in a
# forked child so that two workers never draw the same keys.
_call_keys = random.Random()  # noqa: S311 (unique keys, not secrets)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_call_keys.seed)


# Set while ``manager_af3.ForwardingAssetManager`` registers an event, which it forwards itself; Airflow calls
# ``on_asset_changed`` inside that registration, in the same thread.
_manager_forwards: ContextVar[bool] = ContextVar("dataset_forwarder_manager_forwards", default=False)


@contextmanager
def registering() -> Iterator[None]:
    """Within: the forwarding asset manager forwards the event being registered, the hook does not."""
    token = _manager_forwards.set(True)
    try:
        yield
    finally:
        _manager_forwards.reset(token)


def call_key() -> str:
    """A random 128-bit key in hex, new for every call."""
    return f"{_call_keys.getrandbits(128):032x}"


def event_from_asset_event(asset_event: Any, asset: Any = None) -> UpstreamEvent:
    """Read an asset event: ``airflow.listeners.types.AssetEvent`` (3.2+'s hook) or the ``AssetEvent`` row that
    Airflow 3.0/3.1's asset manager registered; `asset` is the one it was registered for, when the event does not
    carry it (``Asset``, ``AssetModel`` or ``AssetUniqueKey``).

    3.2+'s hook event carries neither the event's DB id nor its timestamp, so the key is unique to this call and
    the time is now; the envelope is spooled before any send, which keeps its id stable across retries. A
    registered row (flushed) has both, and they are used.
    """
    asset = asset if asset is not None else asset_event.asset
    db_id = getattr(asset_event, "id", None)
    partition_key = getattr(asset_event, "partition_key", None)
    return UpstreamEvent(
        uri=asset.uri,
        name=getattr(asset, "name", None),
        extra=asset_event.extra,
        dag_id=asset_event.source_dag_id,
        task_id=asset_event.source_task_id,
        run_id=asset_event.source_run_id,
        map_index=asset_event.source_map_index,
        event_key=str(db_id) if db_id is not None else call_key(),
        timestamp=getattr(asset_event, "timestamp", None),
        partition_key=str(partition_key) if partition_key is not None else None,
    )


def event_from_asset(asset: Any) -> UpstreamEvent:
    """Read the asset given to ``on_asset_changed`` (3.0/3.1): uri and name, nothing about the event."""
    return UpstreamEvent(uri=asset.uri, name=getattr(asset, "name", None), event_key=call_key())


class AssetListener:
    def __init__(self, config: Config, airflow_version: str, sender: BackgroundSender) -> None:
        self.config = config
        self.airflow_version = airflow_version
        self.sender = sender
        self._told_about_limits = False

    if HAS_EVENT_HOOK:

        @hookimpl
        def on_asset_event_emitted(self, asset_event: Any) -> None:
            with guard("on_asset_event_emitted"):
                self.forward(event_from_asset_event(asset_event))

    else:

        @hookimpl
        def on_asset_changed(self, asset: Any) -> None:
            with guard("on_asset_changed"):
                if _manager_forwards.get():  # the forwarding asset manager sends it, with extra and source
                    return
                self._tell_about_limits()
                self.forward(event_from_asset(asset))

    def forward(self, event: UpstreamEvent) -> None:
        """Build the envelope (include filter, loop guard) and hand it to the background sender."""
        envelope = build(
            event,
            deployment=self.config.deployment,
            airflow_version=self.airflow_version,
            include=self.config.include,
        )
        if envelope is not None:
            self.sender.submit(envelope)

    def _tell_about_limits(self) -> None:
        if not self._told_about_limits:
            self._told_about_limits = True
            log.warning(
                "Airflow %s has no on_asset_event_emitted hook (added in 3.2): forwarded asset events carry "
                "no extra and no source DAG/task/run, and the loop guard cannot see incoming trails.",
                self.airflow_version,
            )
