"""Credentials of targets: SecureString parameters fetched with decryption and cached for a TTL."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .outcomes import AUTH, CONNECTION, DeliveryFailed
from .single_flight import SingleFlight


class SecretNotFound(LookupError):
    """The secret parameter does not exist or may not be read."""


class SecretStore:
    """Caches secret values by parameter name; `fresh=True` bypasses the cache (after a 401/403)."""

    def __init__(
        self,
        fetch: Callable[[str], str],
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, float]] = {}
        self._flights = SingleFlight()  # concurrent first reads of one secret make one SSM call

    def get(self, name: str, *, fresh: bool = False) -> str:
        now = self._clock()
        with self._lock:
            cached = self._values.get(name)
        if cached and not fresh and cached[1] > now:
            return cached[0]
        if fresh:
            return self._load(name, now)
        return self._flights.run(name, lambda: self._load(name, now))

    def _load(self, name: str, now: float) -> str:
        try:
            value = self._fetch(name)
        except SecretNotFound as exc:
            # The name is not echoed: a token pasted where the parameter's name belongs would be.
            raise DeliveryFailed(AUTH, f"cannot read the target's secret parameter: {exc}", transient=False) from None
        except Exception as exc:
            raise DeliveryFailed(
                CONNECTION, f"cannot fetch the target's secret parameter: {type(exc).__name__}", transient=True
            ) from None
        with self._lock:
            self._values[name] = (value, now + self._ttl_s)
        return value

    def known_values(self) -> list[str]:
        with self._lock:
            return [value for value, _ in self._values.values()]
