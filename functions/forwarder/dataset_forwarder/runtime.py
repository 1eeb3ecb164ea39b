"""Wires the forwarder from the environment, once per Lambda container, on first use.

Nothing heavy happens at import: boto3, urllib3 and Powertools utilities are imported and
their clients built only when the first record arrives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:
    from .forwarder import Forwarder
    from .ledger import StoreFactory
    from .settings import Settings
    from .transport import Transport

USER_AGENT = f"airflow-dataset-forwarder/{__version__}"

_lock = threading.Lock()
_forwarder: Forwarder | None = None


def forwarder() -> Forwarder:
    """The container's forwarder, built on first call."""
    global _forwarder
    with _lock:
        if _forwarder is None:
            _forwarder = build()
        return _forwarder


def reset() -> None:
    """Forget the built forwarder (tests change the environment between cases)."""
    global _forwarder
    with _lock:
        _forwarder = None


def install(built: Forwarder) -> None:
    """Serve with a forwarder the caller built (benchmarks: `build` with another idempotency store)."""
    global _forwarder
    with _lock:
        _forwarder = built


def http_transport(pool_size: int) -> Transport:
    """The function's transport to downstream APIs (see `transport.for_targets`)."""
    from .transport import for_targets

    return for_targets(pool_size, user_agent=USER_AGENT)


class _OnFirstUse:
    """A client made on its first use (by whichever thread gets there first), then reused."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._make()
        return getattr(self._client, name)


def build(settings: Settings | None = None, *, ledger_store: StoreFactory | None = None) -> Forwarder:
    """Wire the forwarder; the idempotency ledger is on DynamoDB unless `ledger_store` makes another
    persistence layer, a `LedgerStore` (benchmarks measure the forwarder without moto's DynamoDB)."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    from aws_lambda_powertools.utilities.parameters import SSMProvider
    from botocore.config import Config

    from .dead_letters import DeadLetterQueue
    from .downstream import Downstreams
    from .forwarder import Forwarder
    from .ledger import Ledger
    from .queue_control import QueueControl
    from .secrets import SecretNotFound, SecretStore
    from .services import Services
    from .settings import Settings
    from .stats import INVALID_TARGET_CONFIG, Stats
    from .targets import TargetStore
    from .ways_in.mwaa import MwaaClients

    settings = settings or Settings.from_env()
    boto_config = Config(
        max_pool_connections=settings.max_workers,
        connect_timeout=3,
        read_timeout=10,
        retries={"mode": "standard", "max_attempts": 3},
        user_agent_extra=USER_AGENT,
    )
    session = boto3.session.Session()
    ssm = session.client("ssm", config=boto_config)
    # A boto3 session is not thread-safe (its clients are): clients made later, from delivery threads, are made
    # one at a time under this lock.
    making = threading.Lock()

    def make_sqs() -> Any:
        with making:
            return session.client("sqs", config=boto_config)

    # Only dead letters and retries use SQS: a cold start whose deliveries succeed never builds its client.
    sqs = _OnFirstUse(make_sqs)
    provider = SSMProvider(boto3_client=ssm)
    stats = Stats()

    def fetch_targets() -> dict[str, str]:
        values = provider.get_multiple(
            settings.targets_path, decrypt=True, recursive=True, force_fetch=True, raise_on_transform_error=True
        )
        return {name: str(value) for name, value in values.items()}

    def fetch_secret(name: str) -> str:
        try:
            return str(provider.get(name, decrypt=True, force_fetch=True))
        except Exception as exc:
            if type(exc).__name__ == "GetParameterError" and "ParameterNotFound" in str(exc):
                raise SecretNotFound("ParameterNotFound") from None
            if "AccessDenied" in str(exc):
                raise SecretNotFound("AccessDenied") from None
            raise

    ttl_s = settings.idempotency_ttl_s
    if ledger_store is None:
        dynamodb = session.client("dynamodb", config=boto_config)
        ledger = Ledger.on_dynamodb(table=settings.idempotency_table, ttl_s=ttl_s, dynamodb=dynamodb)
    else:
        ledger = Ledger(ttl_s=ttl_s, store=ledger_store)

    return Forwarder(
        settings=settings,
        targets=TargetStore(
            fetch_targets,
            ttl_s=settings.config_ttl_s,
            rules=settings.parse_rules(),
            on_broken=lambda name, _reason: stats.count(INVALID_TARGET_CONFIG, name),
        ),
        downstreams=Downstreams(
            Services(
                transport=http_transport(settings.max_workers),
                secrets=SecretStore(fetch_secret, ttl_s=settings.config_ttl_s),
                mwaa=MwaaClients(lambda: session, endpoint_override=settings.mwaa_endpoint_override, making=making),
            )
        ),
        ledger=ledger,
        dead_letters=DeadLetterQueue(sqs, settings.dead_letter_queue_url),
        queue=QueueControl(sqs),
        stats=stats,
        executor=ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix="deliver"),
    )
