"""The seam between the forwarder and target kinds: a `Downstream` per target, built once from its spec.

The forwarder calls `deliver`, `already_received` and (the CLI) `access`/`checks`, and never asks how
a target is reached (its way in) or what it does there (its action): the target's specs decide.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .airflow_rest import Endpoints, Posted, endpoints_for

if TYPE_CHECKING:
    from .actions import Check
    from .envelope import Envelope
    from .services import Services
    from .targets import Target

MAX_CACHED = 1024  # live downstreams kept; beyond that the cache starts again (targets that changed linger)


@dataclass(frozen=True)
class Access:
    """What `targets test` learned first: the Airflow major and who the calls run as."""

    airflow_major: str
    identity: str


class Downstream:
    """One target, live: its way in connected, its endpoints (per Airflow major) found once."""

    def __init__(self, target: Target, services: Services) -> None:
        self.target = target
        self._api = target.way_in.connect(
            services, airflow=target.airflow, timeout_s=target.timeout_s, target=target.name
        )
        self._lock = threading.Lock()
        self._endpoints: Endpoints | None = None

    def endpoints(self) -> Endpoints:
        with self._lock:
            if self._endpoints is not None:
                return self._endpoints
        endpoints = endpoints_for(self._api, self.target.name)  # may probe the version: outside the lock
        with self._lock:
            if self._endpoints is None:
                self._endpoints = endpoints
            return self._endpoints

    def deliver(self, envelope: Envelope) -> Posted:
        return self.target.action.deliver(self.endpoints(), envelope)

    def already_received(self, envelope: Envelope, *, deadline: float) -> bool | None:
        """Whether an earlier try landed; None when only `deliver` itself can tell (its answer says so)."""
        return self.target.action.already_received(self.endpoints(), envelope, deadline=deadline)

    def access(self) -> Access:
        endpoints = self.endpoints()
        endpoints.check_read()
        return Access(self._api.airflow_major(), self._api.identity())

    def checks(self, uris: Sequence[str]) -> list[Check]:
        return self.target.action.checks(self.endpoints(), uris)


class Downstreams:
    """The live downstream of each target; equal targets (the same parameter re-read) share one."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._live: dict[Target, Downstream] = {}

    def get(self, target: Target) -> Downstream:
        with self._lock:
            live = self._live.get(target)
            if live is None:
                if len(self._live) >= MAX_CACHED:
                    self._live.clear()
                live = self._live[target] = Downstream(target, self._services)
            return live
