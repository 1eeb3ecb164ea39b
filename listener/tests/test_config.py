from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dataset_forwarder_listener import config

URL = "https://sqs.us-east-1.amazonaws.com/123456789012/q"


def test_no_queue_url_means_no_config():
    assert config.load({}) is None
    assert config.load({config.QUEUE_URL: "  "}) is None


def test_defaults(tmp_path):
    loaded = config.load({config.QUEUE_URL: URL, config.DEPLOYMENT: "team-a", "AIRFLOW_HOME": str(tmp_path)})

    assert loaded == config.Config(
        queue_url=URL,
        deployment="team-a",
        include=(),
        dag_runs=(),
        spool_dir=tmp_path / "dataset_forwarder_spool",
        spool_max=10_000,
        send_timeout_s=5.0,
    )


def test_spool_defaults_to_home_airflow_without_airflow_home():
    loaded = config.load({config.QUEUE_URL: URL, config.DEPLOYMENT: "a"})

    assert loaded.spool_dir == Path("~/airflow").expanduser() / "dataset_forwarder_spool"


def test_everything_set(tmp_path):
    loaded = config.load(
        {
            config.QUEUE_URL: URL,
            config.DEPLOYMENT: "team-a",
            config.INCLUDE: " s3://a/* ,, s3://b/c ",
            config.DAG_RUNS: "etl_* , ,reports",
            config.SPOOL_DIR: str(tmp_path / "s"),
            config.SPOOL_MAX: "7",
            config.SEND_TIMEOUT_S: "1.5",
        }
    )

    assert loaded.include == ("s3://a/*", "s3://b/c")
    assert loaded.dag_runs == ("etl_*", "reports")
    assert loaded.spool_dir == tmp_path / "s"
    assert loaded.spool_max == 7
    assert loaded.send_timeout_s == 1.5


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ASTRO_DEPLOYMENT_NAMESPACE": "celestial-orbit-1234", "AIRFLOW_ENV_NAME": "mwaa"}, "celestial-orbit-1234"),
        ({"AIRFLOW_ENV_NAME": "mwaa-prod"}, "mwaa-prod"),
        ({"AIRFLOW__API__INSTANCE_NAME": "af3", "AIRFLOW__WEBSERVER__INSTANCE_NAME": "af2"}, "af3"),
        ({"AIRFLOW__WEBSERVER__INSTANCE_NAME": "af2"}, "af2"),
        ({config.DEPLOYMENT: "explicit", "ASTRO_DEPLOYMENT_NAMESPACE": "astro"}, "explicit"),
    ],
)
def test_deployment_name_sources(env, expected):
    assert config.load({config.QUEUE_URL: URL, **env}).deployment == expected


def test_hostname_fallback_is_loud(monkeypatch, caplog):
    monkeypatch.setattr(config.socket, "gethostname", lambda: "worker-7")

    with caplog.at_level(logging.WARNING):
        loaded = config.load({config.QUEUE_URL: URL})

    assert loaded.deployment == "worker-7"
    assert config.DEPLOYMENT in caplog.text
    assert "hostname" in caplog.text


def test_deployment_name_that_cannot_be_a_target_name_is_flagged(caplog):
    with caplog.at_level(logging.WARNING):
        assert config.load({config.QUEUE_URL: URL, config.DEPLOYMENT: "team a/prod"}).deployment == "team a/prod"

    assert "does not match" in caplog.text


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "default"),
    [
        (config.SPOOL_MAX, "lots", "spool_max", 10_000),
        (config.SPOOL_MAX, "0", "spool_max", 10_000),
        (config.SEND_TIMEOUT_S, "soon", "send_timeout_s", 5.0),
        (config.SEND_TIMEOUT_S, "-1", "send_timeout_s", 5.0),
        (config.SEND_TIMEOUT_S, "nan", "send_timeout_s", 5.0),
        (config.SEND_TIMEOUT_S, "3600", "send_timeout_s", 5.0),
    ],
)
def test_bad_values_are_named_and_replaced_by_the_default(caplog, variable, raw, attribute, default):
    with caplog.at_level(logging.ERROR):
        loaded = config.load({config.QUEUE_URL: URL, config.DEPLOYMENT: "a", variable: raw})

    assert getattr(loaded, attribute) == default
    assert variable in caplog.text
    assert repr(raw) in caplog.text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", 10.0),
        ("0", 0.0),
        ("2.5", 2.5),
        ("3600", 3600.0),
        ("-1", 10.0),
        ("soon", 10.0),
        ("nan", 10.0),
        ("7200", 10.0),
    ],
)
def test_dag_run_sweep_interval(raw, expected, caplog):
    with caplog.at_level(logging.ERROR):
        loaded = config.load({config.QUEUE_URL: URL, config.DEPLOYMENT: "a", config.DAG_RUN_SWEEP_S: raw})

    assert loaded.dag_run_sweep_s == expected
    assert (config.DAG_RUN_SWEEP_S in caplog.text) == (raw in ("-1", "soon", "nan", "7200"))
