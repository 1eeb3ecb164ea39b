"""The forwarder's configuration, read once from the environment into a frozen dataclass."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_TARGETS_PATH = "/dataset-forwarder/targets"
DEFAULT_MAX_WORKERS = 256


class SettingsError(ValueError):
    """An environment variable holds a value the forwarder cannot use."""


def _number(
    env: Mapping[str, str],
    name: str,
    default: float,
    minimum: float,
    maximum: float,
    *,
    parse: Callable[[str], float] = float,
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        kind = "an integer" if parse is int else "a number"
        raise SettingsError(f"{name} must be {kind}, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum:g} and {maximum:g}, got {raw}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    return int(_number(env, name, default, minimum, maximum, parse=int))


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the function reads from its environment (DESIGN.md §5), validated."""

    dead_letter_queue_url: str
    idempotency_table: str
    targets_path: str = DEFAULT_TARGETS_PATH
    max_attempts: int = 5
    config_ttl_s: int = 60
    allow_http_targets: bool = False
    retry_base_delay_s: float = 10.0
    retry_max_delay_s: int = 900
    # A full batch fans out at once (10 records x 25 targets): fewer workers deliver in waves, each
    # wave paying the downstream's whole latency again.
    max_workers: int = DEFAULT_MAX_WORKERS
    idempotency_ttl_s: int = 14 * 24 * 3600

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        targets_path = env.get("TARGETS_PATH", "").strip() or DEFAULT_TARGETS_PATH
        if not targets_path.startswith("/"):
            raise SettingsError(f"TARGETS_PATH must start with '/', got {targets_path!r}")
        return cls(
            dead_letter_queue_url=_required(env, "DEAD_LETTER_QUEUE_URL"),
            idempotency_table=_required(env, "IDEMPOTENCY_TABLE"),
            targets_path=targets_path.rstrip("/") or "/",
            max_attempts=_int(env, "MAX_ATTEMPTS", 5, 1, 100),
            config_ttl_s=_int(env, "CONFIG_TTL_S", 60, 0, 86400),
            allow_http_targets=_bool(env, "ALLOW_HTTP_TARGETS", False),
            retry_base_delay_s=_number(env, "RETRY_BASE_DELAY_S", 10.0, 0.0, 900.0),
            retry_max_delay_s=_int(env, "RETRY_MAX_DELAY_S", 900, 0, 43200),
            max_workers=_int(env, "MAX_WORKERS", DEFAULT_MAX_WORKERS, 1, 512),
            idempotency_ttl_s=_int(env, "IDEMPOTENCY_TTL_S", 14 * 24 * 3600, 60, 365 * 24 * 3600),
        )
