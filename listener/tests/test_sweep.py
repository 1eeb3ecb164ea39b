"""Airflow 2's finished-run sweep: what it reads, what it sends, where it keeps its watermark, and that nothing it
does can reach the scheduler. The database is a list that answers the sweep's query as the SQL does; the hooks are
called through pluggy against the fake Airflow; envelopes go through the real spool and background sender to a stub
SQS client."""

from __future__ import annotations

import enum
import json
import logging
import os
import time
import types
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from dataset_forwarder_listener import config
from dataset_forwarder_listener.envelope import LINEAGE_KEY
from dataset_forwarder_listener.sender import BackgroundSender, Sender, SqsTransport
from dataset_forwarder_listener.spool import Spool
from tests.conftest import QUEUE_URL
from tests.fakes.sqs import StubSqs
from tests.test_plugin_and_hooks import load_plugin, use_stub

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)
DEPLOYMENT = "team-b"


def run_row(number, updated_at, *, dag_id="etl_daily", state="failed", **fields):
    """A DagRun row as the sweep's session returns it."""
    values = {
        "id": number,
        "dag_id": dag_id,
        "run_id": f"manual__{number}",
        "state": state,
        "run_type": "manual",
        "logical_date": None,
        "start_date": NOW - timedelta(hours=1, seconds=number),
        "end_date": NOW - timedelta(minutes=30),
        "clear_number": 0,
        "conf": {},
        "updated_at": updated_at,
    }
    values.update(fields)
    return types.SimpleNamespace(**values)


class DagRunState(str, enum.Enum):
    """Airflow's enum of run states, as the ORM returns the column."""

    SUCCESS = "success"
    FAILED = "failed"


class ListRuns:
    """Airflow's dag_run table as ``SqlFinishedRuns`` queries it: finished rows after a moment or a key, ordered."""

    def __init__(self, rows=()):
        self.rows = list(rows)
        self.calls = []
        self.error: Exception | None = None

    @contextmanager
    def batch(self, after, cursor, limit):
        self.calls.append((after, cursor, limit))
        if self.error is not None:
            raise self.error
        rows = sorted((r for r in self.rows if r.state in ("success", "failed")), key=lambda r: (r.updated_at, r.id))
        if cursor is not None:
            rows = [r for r in rows if (r.updated_at, r.id) > cursor]
        elif after is not None:
            rows = [r for r in rows if r.updated_at > after]
        yield rows[:limit]


class Sweeping:
    """A sweep module loaded against the fake Airflow, with a real spool, background sender and stub SQS."""

    def __init__(self, spool_dir, client=None):
        from dataset_forwarder_listener import sweep  # imported after fake_airflow.install (it imports dag_runs)

        self.module = sweep
        self.client = client or StubSqs()
        self.spool = Spool(spool_dir, max_files=100)
        self.background = BackgroundSender(
            Sender(SqsTransport(QUEUE_URL, client_factory=lambda: self.client), self.spool, budget_s=2.0)
        )
        self.config = config.Config(queue_url=QUEUE_URL, deployment=DEPLOYMENT, dag_runs=("etl_*",))

    def make(self, runs, *, recent=None, batch=500, now=NOW, interval_s=10.0):
        return self.module.DagRunSweep(
            self.config,
            "2.11.2",
            self.background,
            runs,
            recent=recent if recent is not None else self.module.RecentIds(),
            watermark=self.module.Watermark(self.spool),
            interval_s=interval_s,
            batch=batch,
            now=lambda: now,
        )

    def bodies(self):
        self.background.close(timeout_s=5)
        return [json.loads(body) for body in self.client.bodies]


@pytest.fixture
def sweeping(monkeypatch, tmp_path):
    from tests.fakes import airflow as fake_airflow

    fake_airflow.install(monkeypatch, "2.11.2")
    return Sweeping(tmp_path / "spool")


# --------------------------------------------------------------------------------------------------- what it reads


def test_first_start_begins_now_and_replays_no_history(sweeping):
    runs = ListRuns([run_row(1, NOW - timedelta(seconds=5)), run_row(2, NOW + timedelta(seconds=3))])
    sweep = sweeping.make(runs)

    swept = sweep.sweep()

    assert (swept.read, swept.submitted, swept.full) == (1, 1, False)
    assert runs.calls[0][0] == NOW  # not a minute before: the overlap never reaches behind the first start
    assert [b["extra"]["run_id"] for b in sweeping.bodies()] == ["manual__2"]


def test_outcome_envelope_is_the_hook_s_for_the_same_run(monkeypatch, tmp_path):
    """The sweep's envelope of a run equals the one ``on_dag_run_failed`` builds: the same id, the same body."""
    monkeypatch.setenv(config.QUEUE_URL, QUEUE_URL)
    monkeypatch.setenv(config.DEPLOYMENT, DEPLOYMENT)
    monkeypatch.setenv(config.SPOOL_DIR, str(tmp_path / "hook-spool"))
    monkeypatch.setenv(config.DAG_RUNS, "etl_*")
    plugin, manager = load_plugin(monkeypatch, "2.11.2")
    _, runs_listener, _ = plugin.DatasetForwarderPlugin.listeners
    hook_client = StubSqs()
    use_stub(runs_listener, hook_client)
    row = run_row(1, NOW + timedelta(seconds=1), run_type="scheduled", logical_date=NOW - timedelta(days=1))
    manager.hook.on_dag_run_failed(dag_run=row, msg="task failed")
    runs_listener.sender.close(timeout_s=5)

    sweeping = Sweeping(tmp_path / "spool")
    sweeping.make(ListRuns([row])).sweep()

    [from_hook] = [json.loads(body) for body in hook_client.bodies]
    assert sweeping.bodies() == [from_hook]


def test_only_selected_dags_finished_states_and_no_looped_runs(sweeping):
    later = NOW + timedelta(seconds=1)
    runs = ListRuns(
        [
            run_row(1, later, dag_id="reports"),  # not selected (SQL may match more than the globs: SQLite's LIKE)
            run_row(2, later, dag_id="ETL_daily"),
            run_row(3, later, conf={LINEAGE_KEY: {"id": "e", "trail": ["team-z", DEPLOYMENT]}}),  # passed through here
            run_row(4, later, state="success", conf={LINEAGE_KEY: {"id": "e", "trail": ["team-z"]}}),
            run_row(5, later, state=DagRunState.FAILED),
        ]
    )

    sweeping.make(runs).sweep()

    bodies = {b["extra"]["run_id"]: b for b in sweeping.bodies()}
    assert sorted(bodies) == ["manual__4", "manual__5"]
    assert bodies["manual__4"]["uri"] == f"dagrun://{DEPLOYMENT}/etl_daily/success"
    assert bodies["manual__4"]["trail"] == ["team-z", DEPLOYMENT]
    assert bodies["manual__5"]["extra"]["state"] == "failed"


def test_a_batch_is_bounded_and_the_next_look_goes_on_from_its_last_row(sweeping):
    same = NOW + timedelta(seconds=2)  # rows with one updated_at across a page boundary: the key includes the id
    rows = [run_row(n, NOW + timedelta(seconds=1)) for n in (1, 2)] + [run_row(n, same) for n in (3, 4, 5, 6)]
    rows.append(run_row(7, NOW + timedelta(seconds=3)))
    runs = ListRuns(rows)
    sweep = sweeping.make(runs, batch=3)

    looks = [sweep.sweep() for _ in range(4)]

    assert [(s.read, s.full) for s in looks] == [(3, True), (3, True), (1, False), (3, True)]
    assert [limit for _, _, limit in runs.calls] == [3, 3, 3, 3]
    assert runs.calls[1][1] == (same, 3)  # the second look starts after the first page's last row
    assert runs.calls[3][:2] == (NOW, None)  # caught up: back to the watermark less the overlap (here the first start)
    assert [s.submitted for s in looks] == [3, 3, 1, 0]  # the fourth re-reads the overlap: known ids are skipped
    assert sorted(b["extra"]["run_id"] for b in sweeping.bodies()) == [f"manual__{n}" for n in range(1, 8)]


def test_what_the_hook_sent_is_not_sent_again_and_a_repeat_look_sends_nothing(sweeping):
    recent = sweeping.module.RecentIds()
    row = run_row(1, NOW + timedelta(seconds=1))
    from dataset_forwarder_listener.dag_runs import DagRunListener

    hook = DagRunListener(sweeping.config, "2.11.2", sweeping.background, recent)
    hook.on_dag_run_failed(dag_run=row, msg="")
    other = run_row(2, NOW + timedelta(seconds=2))
    sweep = sweeping.make(ListRuns([row, other]), recent=recent)

    assert sweep.sweep().submitted == 1  # `other` only
    assert sweep.sweep().submitted == 0  # the overlap reads both again
    assert sorted(b["extra"]["run_id"] for b in sweeping.bodies()) == ["manual__1", "manual__2"]


def test_a_state_changed_again_is_a_new_outcome(sweeping):
    row = run_row(1, NOW + timedelta(seconds=1), state="success")
    runs = ListRuns([row])
    sweep = sweeping.make(runs)
    sweep.sweep()
    row.state, row.updated_at = "failed", NOW + timedelta(seconds=20)  # marked the other way; end_date unchanged

    assert sweep.sweep().submitted == 1

    bodies = sweeping.bodies()
    assert [b["extra"]["state"] for b in bodies] == ["success", "failed"]
    assert bodies[0]["id"] != bodies[1]["id"]


def test_recent_ids_are_bounded_oldest_forgotten_first(sweeping):
    recent = sweeping.module.RecentIds(capacity=3)
    for envelope_id in "abcd":
        assert recent.add(envelope_id)
    assert not recent.add("d")
    assert len(recent) == 3
    assert "a" not in recent
    assert "b" in recent


@pytest.mark.parametrize(
    ("globs", "expected"),
    [
        (["etl_daily"], [("=", "etl_daily")]),
        (["etl_*", "a?c"], [("like", "etl\\_%"), ("like", "a_c")]),
        (["100%_*"], [("like", "100\\%\\_%")]),
        (["back\\slash*"], [("like", "back\\\\slash%")]),
        (["etl_*", "[ab]*"], None),  # a class: no SQL filter, the globs alone decide
    ],
)
def test_dag_globs_as_sql_conditions(sweeping, globs, expected):
    assert sweeping.module.like_patterns(globs) == expected


# --------------------------------------------------------------------------------------------------- the watermark


def test_watermark_survives_a_restart_and_runs_changed_meanwhile_are_sent(sweeping, tmp_path):
    first = sweeping.make(ListRuns([run_row(1, NOW + timedelta(seconds=1))]))
    first.sweep()
    state = sweeping.spool.directory / "dag_run_sweep.state"
    assert json.loads(state.read_text()) == {"version": 1, "updated_at": (NOW + timedelta(seconds=1)).isoformat()}
    assert os.stat(state).st_mode & 0o777 == 0o600
    sweeping.bodies()

    # Restarted an hour later: what changed while it was down is sent; what it saw is outside the overlap.
    restarted = Sweeping(tmp_path / "spool")
    runs = ListRuns(
        [
            run_row(1, NOW + timedelta(seconds=1)),
            run_row(2, NOW - timedelta(minutes=5)),
            run_row(3, NOW + timedelta(minutes=10)),
        ]
    )
    sweep = restarted.make(runs, now=NOW + timedelta(hours=1))

    sweep.sweep()

    assert runs.calls[0][0] == NOW + timedelta(seconds=1) - timedelta(seconds=60)
    assert sorted(b["extra"]["run_id"] for b in restarted.bodies()) == ["manual__1", "manual__3"]
    assert json.loads(state.read_text())["updated_at"] == (NOW + timedelta(minutes=10)).isoformat()


def test_watermark_file_is_never_an_envelope_of_the_spool(sweeping):
    sweeping.make(ListRuns()).sweep()  # the first look writes it

    assert (sweeping.spool.directory / "dag_run_sweep.state").is_file()
    assert sweeping.spool.pending() == []
    assert sweeping.spool.count() == 0
    with pytest.raises(ValueError, match="not a name"):
        sweeping.spool.write_private("state.json", b"{}")


def test_a_link_planted_as_the_watermark_is_neither_followed_nor_written_through(sweeping, tmp_path, caplog):
    sweeping.spool.directory.mkdir(mode=0o700)
    target = tmp_path / "elsewhere"
    target.write_text(json.dumps({"version": 1, "updated_at": "2020-01-01T00:00:00+00:00"}))
    (sweeping.spool.directory / "dag_run_sweep.state").symlink_to(target)
    runs = ListRuns([run_row(1, NOW - timedelta(days=1))])  # would be sent if the link's old moment were read

    with caplog.at_level(logging.WARNING):
        swept = sweeping.make(runs).sweep()

    assert swept.read == 0
    assert runs.calls[0][0] == NOW  # unreadable: a first start
    assert "Cannot read" in caplog.text
    state = sweeping.spool.directory / "dag_run_sweep.state"
    assert not state.is_symlink()  # replaced by a file of its own
    assert json.loads(target.read_text())["updated_at"] == "2020-01-01T00:00:00+00:00"  # untouched


def test_unreadable_watermark_starts_from_now(sweeping, caplog):
    sweeping.spool.directory.mkdir(mode=0o700)
    (sweeping.spool.directory / "dag_run_sweep.state").write_text("{not json")
    runs = ListRuns([run_row(1, NOW - timedelta(days=1))])

    with caplog.at_level(logging.WARNING):
        assert sweeping.make(runs).sweep().read == 0

    assert "Ignoring the DAG-run sweep's watermark" in caplog.text


def test_a_refused_spool_is_neither_read_nor_written(monkeypatch, tmp_path, caplog):
    from tests.fakes import airflow as fake_airflow

    fake_airflow.install(monkeypatch, "2.11.2")
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    sweeping = Sweeping(tmp_path / "link")
    runs = ListRuns([run_row(1, NOW + timedelta(seconds=1))])
    sweep = sweeping.make(runs)

    with caplog.at_level(logging.ERROR):
        assert sweep.sweep().read == 1
        assert sweep.sweep().read == 1  # still no error: the sweep carries on; nothing is forwarded from here

    assert "refusing to use the spool directory" in caplog.text
    assert list(real.iterdir()) == []
    assert sweeping.bodies() == []


# --------------------------------------------------------------------------------------------------- the thread


def wait_until(check, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)


class Job:
    """Airflow 2's ``Job`` as ``on_starting`` gets it: untyped until its runner sets ``job_type``."""

    job_type = None


def sweeper_of(monkeypatch, tmp_path, rows, *, sweep_s="0.02", version="2.11.2"):
    monkeypatch.setenv(config.QUEUE_URL, QUEUE_URL)
    monkeypatch.setenv(config.DEPLOYMENT, DEPLOYMENT)
    monkeypatch.setenv(config.SPOOL_DIR, str(tmp_path / "spool"))
    monkeypatch.setenv(config.DAG_RUNS, "etl_*")
    monkeypatch.setenv(config.DAG_RUN_SWEEP_S, sweep_s)
    plugin, manager = load_plugin(monkeypatch, version)
    listeners = plugin.DatasetForwarderPlugin.listeners
    client = StubSqs()
    use_stub(listeners[0], client)
    if len(listeners) < 3:
        return None, manager, client, listeners
    sweeper = listeners[2]
    sweeper.sweep.runs = ListRuns(rows)
    sweeper.sweep._now = lambda: NOW
    return sweeper, manager, client, listeners


def test_the_scheduler_s_job_runs_the_sweep_and_its_stop_ends_it(monkeypatch, tmp_path):
    sweeper, manager, client, _ = sweeper_of(monkeypatch, tmp_path, [run_row(1, NOW + timedelta(seconds=1))])
    job = Job()

    manager.hook.on_starting(component=job)
    job.job_type = "SchedulerJob"  # what SchedulerJobRunner does right after Job() returns
    wait_until(lambda: len(client.bodies) == 1)
    assert sweeper.sweep.running
    manager.hook.before_stopping(component=job)

    assert not sweeper.sweep.running
    assert json.loads(client.bodies[0])["extra"]["run_id"] == "manual__1"


@pytest.mark.parametrize("component", [types.SimpleNamespace(job_type="LocalTaskJob"), types.SimpleNamespace()])
def test_other_jobs_and_task_commands_never_sweep(monkeypatch, tmp_path, component):
    sweeper, manager, _, _ = sweeper_of(monkeypatch, tmp_path, [run_row(1, NOW + timedelta(seconds=1))])

    manager.hook.on_starting(component=component)  # a task's LocalTaskJob; `tasks run --raw`'s marker (no job_type)
    wait_until(lambda: not sweeper.sweep.running)

    assert sweeper.sweep.runs.calls == []
    assert not (tmp_path / "spool" / "dag_run_sweep.state").exists()


@pytest.mark.parametrize(("version", "sweep_s"), [("3.3.2", "0.02"), ("2.11.2", "0")])
def test_no_sweep_on_airflow_3_or_when_switched_off(monkeypatch, tmp_path, version, sweep_s):
    sweeper, _, _, listeners = sweeper_of(monkeypatch, tmp_path, [], sweep_s=sweep_s, version=version)

    assert sweeper is None
    assert [type(listener).__name__ for listener in listeners][1:] == ["DagRunListener"]


def test_a_failing_database_is_logged_and_the_sweep_carries_on(monkeypatch, tmp_path, caplog):
    sweeper, manager, client, _ = sweeper_of(monkeypatch, tmp_path, [run_row(1, NOW + timedelta(seconds=1))])
    sweeper.sweep.runs.error = RuntimeError("database is locked")
    job = Job()
    job.job_type = "SchedulerJob"

    with caplog.at_level(logging.INFO):
        manager.hook.on_starting(component=job)
        wait_until(lambda: len(sweeper.sweep.runs.calls) >= 3)
        sweeper.sweep.runs.error = None
        wait_until(lambda: len(client.bodies) == 1)
        manager.hook.before_stopping(component=job)

    failures = [r for r in caplog.records if "the DAG-run sweep failed" in r.getMessage()]
    assert len(failures) == 1  # said once, not at every look
    assert failures[0].exc_info is not None
    assert "works again" in caplog.text


def test_a_run_that_cannot_be_read_is_skipped_and_the_others_are_sent(sweeping, caplog):
    class Broken:
        id, updated_at, state, dag_id = 1, NOW + timedelta(seconds=1), "failed", "etl_daily"

        @property
        def run_id(self):
            raise RuntimeError("DetachedInstanceError")

    runs = ListRuns([Broken(), run_row(2, NOW + timedelta(seconds=2))])

    with caplog.at_level(logging.WARNING):
        swept = sweeping.make(runs).sweep()

    assert (swept.read, swept.submitted) == (2, 1)
    assert "could not report the run with row id 1" in caplog.text
    assert [b["extra"]["run_id"] for b in sweeping.bodies()] == ["manual__2"]


def test_hooks_never_raise_into_airflow(monkeypatch, tmp_path):
    sweeper, manager, _, _ = sweeper_of(monkeypatch, tmp_path, [])

    def explode(is_scheduler):
        raise RuntimeError("cannot start a thread")

    sweeper.sweep.start = explode
    manager.hook.on_starting(component=Job())  # logged by the guard, nothing raised
    manager.hook.before_stopping(component=Job())


def test_an_sqs_outage_loses_nothing_and_one_outcome_stays_one_spooled_file(sweeping):
    from tests.fakes.sqs import connection_error

    sweeping.client.fail = connection_error()
    row = run_row(1, NOW + timedelta(seconds=1))
    sweeping.make(ListRuns([row])).sweep()
    wait_until(lambda: sweeping.client.calls >= 1 and len(sweeping.spool.pending()) == 1)  # failed: stays spooled
    # While another process sends that file, the same outcome comes again from a process that does not know it
    # was reported (a restarted scheduler's sweep): no second copy that would be sent once more.
    [waiting] = sweeping.spool.pending()
    claimed = sweeping.spool.claim(waiting)
    sweeping.make(ListRuns([row])).sweep()

    assert sweeping.spool.pending() == []
    assert sweeping.spool.count() == 1
    sweeping.spool.release(claimed)  # that process's send failed too
    sweeping.client.fail = None
    wait_until(lambda: len(sweeping.client.bodies) >= 1)  # sent after the back-off
    bodies = sweeping.bodies()
    assert {b["extra"]["run_id"] for b in bodies} == {"manual__1"}
    assert len({b["id"] for b in bodies}) == 1
    assert sweeping.spool.count() == 0
