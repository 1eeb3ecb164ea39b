"""Targets: the SSM JSON model, its validation, and a TTL cache of the whole set.

A target is a name, a *way in* to a downstream Airflow (`url` + `auth` over HTTPS, or `mwaa`), an
*action* (`asset_event`, the default, or `trigger_dag`) and the datasets it subscribes to. Ways in
and actions are registered in `ways_in` and `actions`; this module only dispatches to them by the
JSON key that names them, so a new kind adds no branch here.
"""

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

from .actions import ACTIONS, DEFAULT_ACTION, ActionSpec
from .ways_in import WAYS_IN, WayInSpec

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
AIRFLOW_MAJORS = ("auto", "2", "3")
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 60.0
MAX_DATASETS = 1000
MAX_PARAMETER_CHARS = 8192  # SSM's advanced-tier limit; a standard parameter holds 4 KiB
DEFAULT_SECRETS_PATH = "/dataset-forwarder/secrets"
_GLOB_CHARS = frozenset("*?[")


class InvalidTarget(ValueError):
    """A target parameter cannot be used; the message names the problem, never a secret."""


class TargetsUnavailable(RuntimeError):
    """The target set could not be loaded and there is no earlier copy to fall back on."""


@dataclass(frozen=True)
class ParseRules:
    """What the deployment allows a target to be; the function builds it from its settings.

    - `secrets_path`: a target's credential must be `{secrets_path}/{target name}` or below it, so one
      target can never name another's secret.
    - `mwaa_environments` / `role_arns`: the MWAA environments and roles the stack grants IAM on
      (`("*",)` = any; empty = none).
    - `max_timeout_s`: the longest `timeout_s` whose worst-case delivery still fits in the function's timeout.
    """

    allow_http: bool = False
    secrets_path: str = DEFAULT_SECRETS_PATH
    mwaa_environments: tuple[str, ...] = ()
    role_arns: tuple[str, ...] = ()
    max_timeout_s: float = MAX_TIMEOUT_S

    def secret_allowed(self, target: str, secret: str) -> bool:
        own = f"{self.secrets_path.rstrip('/')}/{target}"
        return secret == own or secret.startswith(own + "/")


def allowed(name: str, allow_list: tuple[str, ...]) -> bool:
    return "*" in allow_list or name in allow_list


@dataclass(frozen=True)
class Target:
    """One downstream Airflow deployment: how to reach it, what to do there, and what it subscribes to."""

    name: str
    way_in: WayInSpec
    datasets: tuple[str, ...]
    airflow: str = "auto"
    action: ActionSpec = field(default_factory=lambda: ACTIONS[DEFAULT_ACTION].parse({}, None))
    timeout_s: float = DEFAULT_TIMEOUT_S
    enabled: bool = True

    def matches(self, uri: str) -> bool:
        return any(
            pattern == uri or (not _GLOB_CHARS.isdisjoint(pattern) and fnmatchcase(uri, pattern))
            for pattern in self.datasets
        )

    @property
    def secret(self) -> str | None:
        """The SSM parameter holding this target's credential, if its way in has one."""
        return self.way_in.secret

    def replace(self, **changes: Any) -> Target:
        from dataclasses import replace

        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.way_in.to_json(),
            "airflow": self.airflow,
            **self.action.to_json(),
            "datasets": list(self.datasets),
            "timeout_s": self.timeout_s,
            "enabled": self.enabled,
        }


def validate_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidTarget(f"target name {name!r} must match {NAME_PATTERN.pattern}")
    return name


def _way_in(name: str, data: Mapping[str, Any], rules: ParseRules) -> WayInSpec:
    present = [key for key in WAYS_IN if key in data]
    if len(present) != 1:
        keys = " or ".join(f"'{key}'" for key in WAYS_IN)
        if not present:
            raise InvalidTarget(f"{keys} is required: a target needs exactly one way in")
        raise InvalidTarget(f"a target needs exactly one way in: {keys}, not both")
    try:
        return WAYS_IN[present[0]].parse(name, data, rules)
    except ValueError as exc:
        raise InvalidTarget(str(exc)) from None


def _action(data: Mapping[str, Any], way_in: WayInSpec) -> ActionSpec:
    kind = data.get("action", DEFAULT_ACTION)
    if kind not in ACTIONS:
        raise InvalidTarget(f"'action' must be one of {', '.join(ACTIONS)}, got {kind!r}")
    try:
        return ACTIONS[kind].parse(data, way_in)
    except ValueError as exc:
        raise InvalidTarget(str(exc)) from None


def parse_target(
    name: str, value: str | Mapping[str, Any], *, allow_http: bool = False, rules: ParseRules | None = None
) -> Target:
    """Validate one target parameter (name relative to TARGETS_PATH, JSON value)."""
    rules = rules or ParseRules(allow_http=allow_http)
    validate_name(name)
    if isinstance(value, str):
        if len(value) > MAX_PARAMETER_CHARS:
            raise InvalidTarget(f"value is longer than {MAX_PARAMETER_CHARS} characters")
        try:
            data = json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise InvalidTarget(f"value is not JSON: {type(exc).__name__}") from None
    else:
        data = dict(value)
    if not isinstance(data, dict):
        raise InvalidTarget("value must be a JSON object")
    airflow = data.get("airflow", "auto")
    if isinstance(airflow, int) and not isinstance(airflow, bool):
        airflow = str(airflow)
    if airflow not in AIRFLOW_MAJORS:
        raise InvalidTarget(f"'airflow' must be one of {', '.join(AIRFLOW_MAJORS)}, got {airflow!r}")
    datasets = data.get("datasets")
    if not isinstance(datasets, list) or not datasets or not all(isinstance(item, str) and item for item in datasets):
        raise InvalidTarget("'datasets' must be a non-empty list of URIs or globs")
    if len(datasets) > MAX_DATASETS:
        raise InvalidTarget(f"'datasets' lists more than {MAX_DATASETS} entries")
    timeout_s = data.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise InvalidTarget(f"'timeout_s' must be a number in (0, {MAX_TIMEOUT_S:g}]")
    if timeout_s > rules.max_timeout_s:
        raise InvalidTarget(
            f"'timeout_s' {timeout_s:g} cannot fit in the function's timeout: at most {rules.max_timeout_s:g} here"
        )
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidTarget("'enabled' must be true or false")
    way_in = _way_in(name, data, rules)
    return Target(
        name=name,
        way_in=way_in,
        airflow=airflow,
        action=_action(data, way_in),
        datasets=tuple(dict.fromkeys(datasets)),
        timeout_s=float(timeout_s),
        enabled=enabled,
    )


@dataclass(frozen=True)
class Catalog:
    """The usable targets by name, and the broken parameters with why they are broken.

    A target whose parameter turned invalid keeps serving from its last good version (`targets`) and is
    listed in `broken` as well, so its events are neither lost nor delivered with the broken settings.
    """

    targets: Mapping[str, Target] = field(default_factory=dict)
    broken: Mapping[str, str] = field(default_factory=dict)


def build_catalog(
    raw: Mapping[str, str],
    *,
    allow_http: bool = False,
    rules: ParseRules | None = None,
    previous: Catalog | None = None,
) -> Catalog:
    rules = rules or ParseRules(allow_http=allow_http)
    targets: dict[str, Target] = {}
    broken: dict[str, str] = {}
    for name, value in sorted(raw.items()):
        try:
            targets[name] = parse_target(name, value, rules=rules)
        except InvalidTarget as exc:
            broken[name] = str(exc)
        except Exception as exc:  # one hostile parameter must never stop the others
            broken[name] = f"cannot be read: {type(exc).__name__}"
        if name in broken and previous is not None and name in previous.targets:
            targets[name] = previous.targets[name]
            broken[name] += " (serving its last good version)"
    return Catalog(targets=targets, broken=broken)


class TargetStore:
    """Loads every target under TARGETS_PATH at most once per TTL; keeps the last good set on errors."""

    def __init__(
        self,
        fetch: Callable[[], Mapping[str, str]],
        *,
        ttl_s: float,
        allow_http: bool = False,
        rules: ParseRules | None = None,
        on_broken: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_after_error_s: float = 5.0,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._rules = rules or ParseRules(allow_http=allow_http)
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
            catalog = build_catalog(raw, rules=self._rules, previous=self._catalog)
            for name, reason in catalog.broken.items():
                log.error("target parameter is broken", extra={"target": name, "reason": reason})
                if self._on_broken is not None:
                    self._on_broken(name, reason)
            self._catalog = catalog
            self._next_load = now + self._ttl_s
            return catalog
