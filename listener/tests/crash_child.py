"""An upstream Airflow process for test_crash_restart.py: the real plugin, loaded against the fake Airflow.

``python -m tests.crash_child {2,3} FIRST COUNT`` (from ``listener/``, with ``src`` on the path)
emits the events numbered FIRST..FIRST+COUNT-1 (``extra={"n": n}``) through the hooks, called by
pluggy as Airflow calls them, with the configuration taken from the environment:

- ``3``: ``on_asset_event_emitted`` once per event, as the api-server does (background sender);
- ``2``: one task try whose ``DatasetEvent`` rows are the events (the database read is the only
  stand-in), forwarded by ``on_task_instance_success`` before it returns (synchronous sender).

When the last hook call has returned it prints ``emitted`` and waits for its stdin to close, then
exits the normal way (Airflow 3's exit-time drain included). The test may SIGKILL it at any point.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import types
from collections.abc import MutableMapping
from datetime import datetime, timedelta, timezone
from typing import Any

from tests.fakes import airflow as fake_airflow

URI = "s3://bucket/crash"
TRY_START = datetime(2026, 11, 23, 23, 0, tzinfo=timezone.utc)


def asset_event(n: int) -> Any:
    return types.SimpleNamespace(
        asset=types.SimpleNamespace(uri=URI, name="crash"),
        extra={"n": n},
        source_dag_id="producer",
        source_task_id="emit",
        source_run_id="manual__crash",
        source_map_index=-1,
        source_aliases=[],
        partition_key=None,
    )


def dataset_event_row(n: int) -> Any:
    return types.SimpleNamespace(
        id=n,
        extra={"n": n},
        source_dag_id="producer",
        source_task_id="emit",
        source_run_id="manual__crash",
        source_map_index=-1,
        timestamp=TRY_START + timedelta(seconds=n),
    )


class Patch:
    """What ``fake_airflow.install`` needs of pytest's monkeypatch (importing pytest would slow every start)."""

    @staticmethod
    def setitem(mapping: MutableMapping[str, Any], name: str, value: Any) -> None:
        mapping[name] = value

    @staticmethod
    def delitem(mapping: MutableMapping[str, Any], name: str, raising: bool = True) -> None:
        mapping.pop(name, None)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("airflow", choices=["2", "3"])
    parser.add_argument("first", type=int)
    parser.add_argument("count", type=int)
    args = parser.parse_args()
    numbers = range(args.first, args.first + args.count)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")

    manager = fake_airflow.install(Patch(), "3.3.2" if args.airflow == "3" else "2.11.2")
    plugin = importlib.import_module("dataset_forwarder_listener.plugin")
    for listener in plugin.DatasetForwarderPlugin.listeners:
        manager.register(listener)
    if args.airflow == "3":
        for n in numbers:
            manager.hook.on_asset_event_emitted(asset_event=asset_event(n))
    else:
        hooks = importlib.import_module("dataset_forwarder_listener.hooks_af2")
        rows = [(dataset_event_row(n), URI) for n in numbers]
        hooks.events_of_try = lambda session, task_instance, since: rows  # type: ignore[attr-defined]
        task_instance = types.SimpleNamespace(
            dag_id="producer", task_id="emit", run_id="manual__crash", map_index=-1, start_date=TRY_START
        )
        manager.hook.on_task_instance_success(previous_state=None, task_instance=task_instance, session="S")
    print("emitted", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
