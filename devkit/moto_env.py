"""moto server for tests and benchmarks, and the fake AWS environment pointed at it.

The starter, the ports and the fake credentials are the local stack's own (`dataset_forwarder_cli.local.stack`,
which `dataset-forwarder local up` ships): this module only adds what tests need around them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dataset_forwarder_cli.local.stack import (
    DEFAULT_REGION,
    FAKE_CREDENTIALS,
    HOST,
    MotoServer,
    aws_session,
    free_port,
)
from dataset_forwarder_cli.local.stack import fake_aws_env as _local_stack_env

if TYPE_CHECKING:
    import pytest

__all__ = [
    "AWS_NOISE",
    "DEFAULT_REGION",
    "FAKE_CREDENTIALS",
    "HOST",
    "MotoServer",
    "aws_session",
    "fake_aws_env",
    "free_port",
    "moto_server",
    "use_moto",
]

# Variables of a developer's shell that would send a client elsewhere than the test says.
AWS_NOISE = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_SQS",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


def fake_aws_env(endpoint: str | None = None, region: str = DEFAULT_REGION) -> dict[str, str]:
    """The local stack's client settings (endpoint when given, fake credentials, region) and a fake session token,
    so that a real one of the developer's shell never rides along."""
    return {**_local_stack_env(endpoint, region), "AWS_SESSION_TOKEN": "testing"}


@contextlib.contextmanager
def moto_server(log_path: Path) -> Iterator[str]:
    """moto server in a process of its own, logging to `log_path` (it does not compete with the tests for the GIL);
    yields its endpoint."""
    with MotoServer(log_path=log_path) as server:
        yield server.endpoint


def use_moto(patch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Point every AWS client of this process at `endpoint` with fake credentials, and no profile."""
    for key, value in fake_aws_env(endpoint).items():
        patch.setenv(key, value)
    patch.delenv("AWS_PROFILE", raising=False)
