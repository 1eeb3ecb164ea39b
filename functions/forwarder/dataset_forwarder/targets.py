"""Targets (DESIGN.md §4): the SSM JSON model, its validation, and a TTL cache of the whole set."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
AUTH_TYPES = ("bearer", "basic", "airflow-token", "none")
AIRFLOW_VERSIONS = ("auto", "2", "3")
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
_GLOB_CHARS = frozenset("*?[")


class InvalidTarget(ValueError):
    """A target parameter cannot be used; the message names the problem, never a secret."""


class TargetsUnavailable(RuntimeError):
    """The target set could not be loaded and there is no earlier copy to fall back on."""


@dataclass(frozen=True)
class Auth:
    type: str
    secret: str | None = None
    username: str | None = None


@dataclass(frozen=True)
class Target:
    """One downstream Airflow deployment and the datasets it subscribes to."""

    name: str
    url: str
    airflow: str
    datasets: tuple[str, ...]
    auth: Auth
    timeout_s: float = DEFAULT_TIMEOUT_S
    enabled: bool = True

    def matches(self, uri: str) -> bool:
        return any(
            pattern == uri or (not _GLOB_CHARS.isdisjoint(pattern) and fnmatchcase(uri, pattern))
            for pattern in self.datasets
        )

    def to_json(self) -> dict[str, Any]:
        auth: dict[str, Any] = {"type": self.auth.type}
        if self.auth.username is not None:
            auth["username"] = self.auth.username
        if self.auth.secret is not None:
            auth["secret"] = self.auth.secret
        return {
            "url": self.url,
            "airflow": self.airflow,
            "datasets": list(self.datasets),
            "auth": auth,
            "timeout_s": self.timeout_s,
            "enabled": self.enabled,
        }


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidTarget(f"target name {name!r} must match {NAME_PATTERN.pattern}")
    return name


def validate_url(url: Any, *, allow_http: bool) -> str:
    if not isinstance(url, str) or not url:
        raise InvalidTarget("'url' is required and must be a string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise InvalidTarget(f"'url' is malformed: {exc}") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        hint = "" if allow_http else " (http is accepted only with ALLOW_HTTP_TARGETS=true, for local use)"
        raise InvalidTarget(f"'url' must use https{hint}, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise InvalidTarget("'url' has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidTarget("'url' must not carry credentials; put them in 'auth' with a SecureString secret")
    if parts.query or parts.fragment:
        raise InvalidTarget("'url' must not have a query or fragment")
    return url.rstrip("/")


def _parse_auth(raw: Any) -> Auth:
    if raw is None:
        return Auth("none")
    if not isinstance(raw, dict):
        raise InvalidTarget("'auth' must be an object")
    auth_type = raw.get("type")
    if auth_type not in AUTH_TYPES:
        raise InvalidTarget(f"'auth.type' must be one of {', '.join(AUTH_TYPES)}, got {auth_type!r}")
    secret = raw.get("secret")
    username = raw.get("username")
    if auth_type == "none":
        return Auth("none")
    if not isinstance(secret, str) or not secret:
        raise InvalidTarget(f"'auth.secret' (the SSM parameter holding the credential) is required for {auth_type}")
    if auth_type in ("basic", "airflow-token") and (not isinstance(username, str) or not username):
        raise InvalidTarget(f"'auth.username' is required for {auth_type}")
    return Auth(auth_type, secret=secret, username=username if auth_type != "bearer" else None)


def parse_target(name: str, value: str | Mapping[str, Any], *, allow_http: bool = False) -> Target:
    """Validate one target parameter (name relative to TARGETS_PATH, JSON value)."""
    validate_name(name)
    if isinstance(value, str):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidTarget(f"value is not JSON: {exc}") from None
    else:
        data = dict(value)
    if not isinstance(data, dict):
        raise InvalidTarget("value must be a JSON object")
    airflow = data.get("airflow", "auto")
    if isinstance(airflow, int) and not isinstance(airflow, bool):
        airflow = str(airflow)
    if airflow not in AIRFLOW_VERSIONS:
        raise InvalidTarget(f"'airflow' must be one of {', '.join(AIRFLOW_VERSIONS)}, got {airflow!r}")
    datasets = data.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(item, str) and item for item in datasets):
        raise InvalidTarget("'datasets' must be a non-empty list of URIs or globs")
    timeout_s = data.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidTarget(f"'timeout_s' must be a number in (0, {MAX_TIMEOUT_S:g}]")
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidTarget("'enabled' must be true or false")
    return Target(
        name=name,
        url=validate_url(data.get("url"), allow_http=allow_http),
        airflow=airflow,
        datasets=tuple(dict.fromkeys(datasets)),
        auth=_parse_auth(data.get("auth")),
        timeout_s=float(timeout_s),
        enabled=enabled,
    )


@dataclass(frozen=True)
class Catalog:
    """The usable targets by name, and the broken parameters with why they are broken."""

    targets: Mapping[str, Target] = field(default_factory=dict)
    broken: Mapping[str, str] = field(default_factory=dict)


def build_catalog(raw: Mapping[str, str], *, allow_http: bool) -> Catalog:
    targets: dict[str, Target] = {}
    broken: dict[str, str] = {}
    for name, value in sorted(raw.items()):
        try:
            targets[name] = parse_target(name, value, allow_http=allow_http)
        except InvalidTarget as exc:
            broken[name] = str(exc)
    return Catalog(targets=targets, broken=broken)


class TargetStore:
    """Loads every target under TARGETS_PATH at most once per TTL; keeps the last good set on errors."""

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, str]],
        *,
        ttl_s: float,
        allow_http: bool,
        on_broken: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_after_error_s: float = 5.0,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._allow_http = allow_http
        self._on_broken = on_broken
        self._clock = clock
        self._retry_after_error_s = retry_after_error_s
        self._lock = threading.Lock()
        self._catalog: Catalog | None = None
        self._next_load = 0.0

    def catalog(self) -> Catalog:
        with self._lock:
            now = self._clock()
            if self._catalog is not None and now < self._next_load:
                return self._catalog
            try:
                raw = self._fetch()
            except Exception as exc:
                if self._catalog is None:
                    raise TargetsUnavailable(f"cannot load targets: {type(exc).__name__}: {exc}") from exc
                log.warning(
                    "cannot refresh targets, using the previous set",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                )
                self._next_load = now + min(self._ttl_s, self._retry_after_error_s)
                return self._catalog
            catalog = build_catalog(raw, allow_http=self._allow_http)
            for name, reason in catalog.broken.items():
                log.error("target parameter is broken and skipped", extra={"target": name, "reason": reason})
                if self._on_broken is not None:
                    self._on_broken(name, reason)
            self._catalog = catalog
            self._next_load = now + self._ttl_s
            return catalog
