"""Integration tier: moto server for SQS/SSM/DynamoDB, fake Airflow APIs on 127.0.0.1, the real handler."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from devkit.airflow_api import FakeAirflow
from devkit.aws import DeadLetterView, ForwarderStack
from devkit.lambda_sqs import Invocation, LambdaSqsDriver
from devkit.moto_env import moto_server, use_moto


def wait_for(condition: Callable[[], bool], *, timeout_s: float, what: str, every_s: float = 0.2) -> None:
    """Poll `condition` until it holds; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(every_s)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    use_moto(monkeypatch, moto_endpoint)
    return moto_endpoint


@pytest.fixture
def stack(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwarderStack]:
    from dataset_forwarder import runtime

    created = ForwarderStack.create(boto3.session.Session())
    settings = {
        **created.env(),
        "MAX_ATTEMPTS": "3",
        "CONFIG_TTL_S": "0",
        "ALLOW_HTTP_TARGETS": "true",
        "RETRY_BASE_DELAY_S": "0",
        "MAX_WORKERS": "16",
        "POWERTOOLS_SERVICE_NAME": "dataset-forwarder",
        "POWERTOOLS_METRICS_NAMESPACE": "DatasetForwarderTest",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    runtime.reset()
    yield created
    runtime.reset()


@pytest.fixture
def lambda_driver(stack: ForwarderStack) -> LambdaSqsDriver:
    import app

    return LambdaSqsDriver(stack.sqs, stack.queue_url, app.lambda_handler)


@pytest.fixture
def airflow() -> Iterator[Callable[..., FakeAirflow]]:
    """Start fake Airflow deployments; all are stopped after the test."""
    started: list[FakeAirflow] = []

    def start(version: str = "3", **kwargs: Any) -> FakeAirflow:
        fake = FakeAirflow(version, **kwargs).start()
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


@pytest.fixture
def served_target(stack: ForwarderStack, airflow: Callable[..., FakeAirflow]) -> Callable[..., FakeAirflow]:
    """Start a fake Airflow holding one dataset and put a target parameter sending that dataset to it.

    `serve(uri)` gives target "team-b" on a fake Airflow 3 with `"airflow": "3"` pinned; `pinned=False` leaves the
    version out (the forwarder detects it); `token` makes the fake take that bearer token, `password` makes it issue
    JWTs to admin/`password` (auth "airflow-token"), and the target reads either from its secret; any other keyword
    is one more field of the target parameter (it wins over the defaults).
    """

    def serve(
        uri: str,
        *,
        name: str = "team-b",
        version: str = "3",
        pinned: bool = True,
        token: str | None = None,
        password: str | None = None,
        **settings: object,
    ) -> FakeAirflow:
        target: dict[str, object] = {"datasets": [uri]}
        if token is not None:
            fake = airflow(version, auth="bearer", token=token)
            target["auth"] = {"type": "bearer", "secret": stack.put_secret(name, token)}
        elif password is not None:
            fake = airflow(version, auth="airflow-token", password=password)
            secret = stack.put_secret(name, password)
            target["auth"] = {"type": "airflow-token", "username": "admin", "secret": secret}
        else:
            fake = airflow(version)
        fake.add_dataset(uri)
        target["url"] = fake.url
        if pinned:
            target["airflow"] = version
        stack.put_target(name, {**target, **settings})
        return fake

    return serve


def polled(driver: LambdaSqsDriver) -> Invocation:
    """One invocation of the handler on what the queue holds now; fails when the queue gave it nothing."""
    invocation = driver.poll()
    assert invocation is not None, "the queue gave the handler no message"
    return invocation


class LogCapture(logging.Handler):
    """Collects every formatted line the forwarder logs (Powertools JSON), for leak checks."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def forwarder_logs() -> Iterator[LogCapture]:
    import app

    capture = LogCapture()
    capture.setFormatter(app.logger.registered_formatter)
    loggers = [logging.getLogger("dataset_forwarder"), logging.getLogger(app.logger.name)]
    previous = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(capture)
        lg.setLevel(logging.DEBUG)
    yield capture
    for lg, level in zip(loggers, previous, strict=True):
        lg.removeHandler(capture)
        lg.setLevel(level)


SeenByOperator = Callable[[list[DeadLetterView]], str]


@pytest.fixture
def everything_seen(forwarder_logs: LogCapture, capsys: pytest.CaptureFixture[str]) -> SeenByOperator:
    """`everything_seen(letters)`: what an operator can read afterwards, for leak checks.

    The forwarder's logs, what it printed so far (metrics on stdout, and stderr) and every given dead letter.
    """

    def seen(letters: list[DeadLetterView]) -> str:
        captured = capsys.readouterr()
        return "\n".join(
            [
                forwarder_logs.text,
                captured.out,
                captured.err,
                *(json.dumps(d.attributes) + "\n" + d.body for d in letters),
            ]
        )

    return seen
