"""Just enough of Airflow's plugin and listener API to load the listener without Airflow.

Hooks are called through a real pluggy PluginManager with Airflow's hookspec signatures, the way
Airflow calls them, so argument names are checked too.
"""

from __future__ import annotations

import sys
import types

import pluggy

PROJECT = "airflow"
LISTENER_MODULES = (
    "dataset_forwarder_listener.plugin",
    "dataset_forwarder_listener.hooks_af2",
    "dataset_forwarder_listener.hooks_af3",
    "dataset_forwarder_listener.manager_af2",
    "dataset_forwarder_listener.manager_af3",
    "dataset_forwarder_listener.dag_runs",
    "dataset_forwarder_listener.sweep",
    "dataset_forwarder_listener.sweep_af2",
)

hookspec = pluggy.HookspecMarker(PROJECT)


class AirflowPlugin:
    name: str | None = None
    listeners: list = []  # noqa: RUF012 (mirrors Airflow's class attribute)


def _asset_spec(with_event_hook: bool) -> types.ModuleType:
    spec = types.ModuleType("airflow.listeners.spec.asset")

    def on_asset_changed(asset):  # type: ignore[no-untyped-def]
        """Execute when asset change is registered."""

    def on_asset_event_emitted(asset_event):  # type: ignore[no-untyped-def]
        """Execute when an asset event is emitted."""

    spec.on_asset_changed = hookspec(on_asset_changed)  # type: ignore[attr-defined]
    if with_event_hook:
        spec.on_asset_event_emitted = hookspec(on_asset_event_emitted)  # type: ignore[attr-defined]
    return spec


def _taskinstance_spec() -> types.ModuleType:
    spec = types.ModuleType("airflow.listeners.spec.taskinstance")

    def on_task_instance_running(previous_state, task_instance, session):  # type: ignore[no-untyped-def]
        """Execute when task state changes to RUNNING."""

    def on_task_instance_success(previous_state, task_instance, session):  # type: ignore[no-untyped-def]
        """Execute when task state changes to SUCCESS."""

    spec.on_task_instance_running = hookspec(on_task_instance_running)  # type: ignore[attr-defined]
    spec.on_task_instance_success = hookspec(on_task_instance_success)  # type: ignore[attr-defined]
    return spec


def _lifecycle_spec() -> types.ModuleType:
    """The same on Airflow 2.9+ and 3.x; Airflow 2 passes the ``Job`` (before its runner sets ``job_type``)."""
    spec = types.ModuleType("airflow.listeners.spec.lifecycle")

    def on_starting(component):  # type: ignore[no-untyped-def]
        """Execute before Airflow component - jobs like scheduler, worker, or task runner starts."""

    def before_stopping(component):  # type: ignore[no-untyped-def]
        """Execute before Airflow component - jobs like scheduler, worker, or task runner stops."""

    spec.on_starting = hookspec(on_starting)  # type: ignore[attr-defined]
    spec.before_stopping = hookspec(before_stopping)  # type: ignore[attr-defined]
    return spec


def _dagrun_spec() -> types.ModuleType:
    """The same on Airflow 2.9+ and 3.x."""
    spec = types.ModuleType("airflow.listeners.spec.dagrun")

    def on_dag_run_running(dag_run, msg):  # type: ignore[no-untyped-def]
        """Execute when dag run state changes to RUNNING."""

    def on_dag_run_success(dag_run, msg):  # type: ignore[no-untyped-def]
        """Execute when dag run state changes to SUCCESS."""

    def on_dag_run_failed(dag_run, msg):  # type: ignore[no-untyped-def]
        """Execute when dag run state changes to FAIL."""

    spec.on_dag_run_running = hookspec(on_dag_run_running)  # type: ignore[attr-defined]
    spec.on_dag_run_success = hookspec(on_dag_run_success)  # type: ignore[attr-defined]
    spec.on_dag_run_failed = hookspec(on_dag_run_failed)  # type: ignore[attr-defined]
    return spec


class Session:
    """The part of a SQLAlchemy session the DAG-run listener uses; records whether it read with autoflush off."""

    def __init__(self) -> None:
        self.autoflush = True
        self.reads_without_autoflush = 0

    @property
    def no_autoflush(self):  # type: ignore[no-untyped-def]
        session = self

        class _NoAutoflush:
            def __enter__(self):  # type: ignore[no-untyped-def]
                session.autoflush = False

            def __exit__(self, *exc):  # type: ignore[no-untyped-def]
                session.autoflush = True

        return _NoAutoflush()


def _sqlalchemy() -> dict[str, types.ModuleType]:
    """``sqlalchemy.orm.object_session``: an object's ``session`` attribute (a fake DagRun sets it when bound)."""
    sqlalchemy = types.ModuleType("sqlalchemy")
    sqlalchemy.__path__ = []  # type: ignore[attr-defined]
    orm = types.ModuleType("sqlalchemy.orm")
    orm.object_session = lambda instance: getattr(instance, "session", None)  # type: ignore[attr-defined]
    sqlalchemy.orm = orm  # type: ignore[attr-defined]
    return {"sqlalchemy": sqlalchemy, "sqlalchemy.orm": orm}


OWN_SESSION = "the session @provide_session opens when none is passed"


class DatasetManager:
    """Airflow 2.10+'s shape: a classmethod with keyword-only arguments; returns the event, None for an unknown URI."""

    calls: list = []  # noqa: RUF012 (class-level record, reset by install())
    events: dict = {}  # noqa: RUF012 (uri -> the event the next registration returns)

    @classmethod
    def register_dataset_change(cls, *, task_instance=None, dataset, extra=None, session=OWN_SESSION, **kwargs):  # type: ignore[no-untyped-def]
        cls.calls.append({"task_instance": task_instance, "uri": dataset.uri, "extra": extra, "session": session})
        return cls.events.get(dataset.uri)


class AssetManager:
    """Airflow 3's shape: a classmethod with keyword-only arguments that registers the event, then calls the asset
    hooks within (``on_asset_changed``; 3.2+ also ``on_asset_event_emitted``); returns the event, None when the
    asset is unknown."""

    calls: list = []  # noqa: RUF012 (class-level record, reset by install())
    events: dict = {}  # noqa: RUF012 (uri -> the event the next registration returns)
    hook = None  # the listener manager's hook, set by install()
    event_hook = False

    @classmethod
    def register_asset_change(cls, *, task_instance=None, asset, extra=None, session=OWN_SESSION, **kwargs):  # type: ignore[no-untyped-def]
        cls.calls.append({"task_instance": task_instance, "uri": asset.uri, "extra": extra, "session": session})
        event = cls.events.get(asset.uri)
        if event is not None:
            cls.hook.on_asset_changed(asset=asset)  # type: ignore[attr-defined]
            if cls.event_hook:
                cls.hook.on_asset_event_emitted(asset_event=types.SimpleNamespace(asset=asset, **vars(event)))  # type: ignore[attr-defined]
        return event


def install(monkeypatch, version: str, *, event_hook: bool = True) -> pluggy.PluginManager:  # type: ignore[no-untyped-def]
    """Put a fake ``airflow`` of ``version`` in sys.modules; the listener manager it would use."""
    airflow = types.ModuleType("airflow")
    airflow.__version__ = version  # type: ignore[attr-defined]
    airflow.__path__ = []  # type: ignore[attr-defined]
    listeners = types.ModuleType("airflow.listeners")
    listeners.__path__ = []  # type: ignore[attr-defined]
    listeners.hookimpl = pluggy.HookimplMarker(PROJECT)  # type: ignore[attr-defined]
    spec_package = types.ModuleType("airflow.listeners.spec")
    spec_package.__path__ = []  # type: ignore[attr-defined]
    plugins_manager = types.ModuleType("airflow.plugins_manager")
    plugins_manager.AirflowPlugin = AirflowPlugin  # type: ignore[attr-defined]

    manager = pluggy.PluginManager(PROJECT)
    modules = {
        "airflow": airflow,
        "airflow.listeners": listeners,
        "airflow.listeners.spec": spec_package,
        "airflow.plugins_manager": plugins_manager,
    }
    if version.startswith("2."):
        spec = _taskinstance_spec()
        modules["airflow.listeners.spec.taskinstance"] = spec
        datasets = types.ModuleType("airflow.datasets")
        datasets.__path__ = []  # type: ignore[attr-defined]
        datasets_manager = types.ModuleType("airflow.datasets.manager")
        DatasetManager.calls, DatasetManager.events = [], {}
        datasets_manager.DatasetManager = DatasetManager  # type: ignore[attr-defined]
        modules["airflow.datasets"] = datasets
        modules["airflow.datasets.manager"] = datasets_manager
    else:
        spec = _asset_spec(event_hook)
        modules["airflow.listeners.spec.asset"] = spec
        assets = types.ModuleType("airflow.assets")
        assets.__path__ = []  # type: ignore[attr-defined]
        assets_manager = types.ModuleType("airflow.assets.manager")
        AssetManager.calls, AssetManager.events = [], {}
        AssetManager.hook, AssetManager.event_hook = manager.hook, event_hook
        assets_manager.AssetManager = AssetManager  # type: ignore[attr-defined]
        modules["airflow.assets"] = assets
        modules["airflow.assets.manager"] = assets_manager
    manager.add_hookspecs(spec)
    dagrun_spec = _dagrun_spec()
    modules["airflow.listeners.spec.dagrun"] = dagrun_spec
    manager.add_hookspecs(dagrun_spec)
    lifecycle_spec = _lifecycle_spec()
    modules["airflow.listeners.spec.lifecycle"] = lifecycle_spec
    manager.add_hookspecs(lifecycle_spec)
    modules.update(_sqlalchemy())
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in LISTENER_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return manager
