"""Ways in to a downstream Airflow's REST API, registered by the target JSON key that selects them.

A way in is two things: a *spec* (frozen, parsed from the target's JSON, cheap to import) and the
`RestApi` it connects to (the live client: credentials, version detection, the exchange itself).
Everything above a way in — endpoints per Airflow major, actions, the forwarder — talks to a
`RestApi` and never asks which kind it is.

Adding a way in: one module with a spec class (`parse`, `to_json`, `describe`, `connect`) and its
`RestApi`, one line in `WAYS_IN`, its CLI options, a fake, docs (docs/architecture.md says how).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dataset_forwarder.single_flight import SingleFlight

if TYPE_CHECKING:
    from dataset_forwarder.outcomes import DeliveryFailed
    from dataset_forwarder.services import Services
    from dataset_forwarder.targets import ParseRules
    from dataset_forwarder.transport import Reply


class RestApi(Protocol):
    """Airflow's REST API, reached one way; paths are relative to the REST root (`/version`, `/dags`)."""

    max_path: int | None  # the longest path this way in can carry (MWAA: 64), None = no limit

    def airflow_major(self) -> str:
        """ "2" or "3": configured, or found out once and cached."""

    def call(self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None) -> Reply:
        """One authorized call; raises DeliveryFailed when no answer came (or the way in itself refused)."""

    def failure(self, reply: Reply, what: str) -> DeliveryFailed:
        """The failure a non-2xx answer means, its detail free of every credential in play."""

    def identity(self) -> str:
        """Who the calls run as, for `targets test` (never a credential)."""


class AirflowMajor:
    """A target's Airflow major: as configured, or found out once by `probe` (concurrent first calls share it)."""

    def __init__(self, configured: str, probe: Callable[[], str]) -> None:
        self._known = None if configured == "auto" else configured
        self._probe = probe
        self._lock = threading.Lock()
        self._flight = SingleFlight()

    def get(self) -> str:
        with self._lock:
            if self._known:
                return self._known
        return self._flight.run("major", self._found)

    def _found(self) -> str:
        major = self._probe()
        with self._lock:
            self._known = major
        return major


class WayInSpec(Protocol):
    """A target's parsed way in: frozen and hashable, so equal targets share one live client."""

    kind: ClassVar[str]
    max_path: ClassVar[int | None]

    @property
    def secret(self) -> str | None: ...

    def to_json(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...

    def connect(self, services: Services, *, airflow: str, timeout_s: float, target: str) -> RestApi: ...


class WayInKind(Protocol):
    @staticmethod
    def parse(name: str, data: Mapping[str, Any], rules: ParseRules) -> WayInSpec: ...


def _registry() -> dict[str, WayInKind]:
    from .https import HttpsWayIn
    from .mwaa import MwaaWayIn

    return {"url": HttpsWayIn, "mwaa": MwaaWayIn}  # type: ignore[dict-item]


# The JSON key that selects each way in (exactly one per target).
WAYS_IN: dict[str, WayInKind] = _registry()
