"""Concurrent cache misses for one key share one lookup.

A cold container's first batch sends every record to every target at once: without this, each
of them would probe the target's API version, fetch its token and look up the asset itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    """`run(key, call)`: the first caller runs `call`; callers arriving meanwhile wait for its result.

    Like `Future.result()`, waiters get the leader's return value or raise the leader's exception.
    Nothing is cached here: the caller caches the result, and a call after the flight ends runs anew.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Future[Any]] = {}

    def run(self, key: Hashable, call: Callable[[], T]) -> T:
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            result: T = flight.result()
            return result
        try:
            value = call()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(value)
            return value
        finally:
            with self._lock:
                del self._flights[key]
