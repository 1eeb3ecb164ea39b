"""The forwarder's configuration, read once from the environment into a frozen dataclass."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .targets import ParseRules

DEFAULT_TARGETS_PATH = "/dataset-forwarder/targets"
DEFAULT_SECRETS_PATH = "/dataset-forwarder/secrets"
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


def _path(env: Mapping[str, str], name: str, default: str) -> str:
    path = env.get(name, "").strip() or default
    if not path.startswith("/"):
        raise SettingsError(f"{name} must start with '/', got {path!r}")
    return path.rstrip("/") or "/"


def _names(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated allow-list: empty = none, `*` = any."""
    return tuple(dict.fromkeys(item.strip() for item in env.get(name, "").split(",") if item.strip()))


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the function reads from its environment (docs/operate.md, configuration), validated."""

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
    idempotency_ttl_s: int = 15 * 24 * 3600  # the DLQ's 14 days of retention + a redriven letter's retries
    secrets_path: str = DEFAULT_SECRETS_PATH
    mwaa_environments: tuple[str, ...] = ()
    target_role_arns: tuple[str, ...] = ()
    # Lambda does not tell a function its timeout: the template passes it, so that a target's timeout_s that
    # could never fit is refused when the target is read, not on every try.
    function_timeout_s: float = 60.0
    mwaa_endpoint_override: bool = False

    def parse_rules(self) -> ParseRules:
        from .forwarder import max_timeout_s
        from .targets import ParseRules

        return ParseRules(
            allow_http=self.allow_http_targets,
            secrets_path=self.secrets_path,
            mwaa_environments=self.mwaa_environments,
            role_arns=self.target_role_arns,
            max_timeout_s=max_timeout_s(self.function_timeout_s),
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            dead_letter_queue_url=_required(env, "DEAD_LETTER_QUEUE_URL"),
            idempotency_table=_required(env, "IDEMPOTENCY_TABLE"),
            targets_path=_path(env, "TARGETS_PATH", DEFAULT_TARGETS_PATH),
            secrets_path=_path(env, "SECRETS_PATH", DEFAULT_SECRETS_PATH),
            mwaa_environments=_names(env, "MWAA_ENVIRONMENTS"),
            target_role_arns=_names(env, "TARGET_ROLE_ARNS"),
            function_timeout_s=_number(env, "FUNCTION_TIMEOUT_S", 60.0, 3.5, 900.0),
            mwaa_endpoint_override=bool(
                env.get("AWS_ENDPOINT_URL_MWAA", "").strip() or env.get("AWS_ENDPOINT_URL", "").strip()
            ),
            max_attempts=_int(env, "MAX_ATTEMPTS", 5, 1, 100),
            config_ttl_s=_int(env, "CONFIG_TTL_S", 60, 0, 86400),
            allow_http_targets=_bool(env, "ALLOW_HTTP_TARGETS", False),
            retry_base_delay_s=_number(env, "RETRY_BASE_DELAY_S", 10.0, 0.0, 900.0),
            retry_max_delay_s=_int(env, "RETRY_MAX_DELAY_S", 900, 0, 43200),
            max_workers=_int(env, "MAX_WORKERS", DEFAULT_MAX_WORKERS, 1, 512),
            idempotency_ttl_s=_int(env, "IDEMPOTENCY_TTL_S", 15 * 24 * 3600, 60, 365 * 24 * 3600),
        )
