"""The one catch-all at the boundary with Airflow: a failing hook is a log line, never a failed task or a 500."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("dataset_forwarder_listener")


@contextmanager
def guard(hook: str) -> Iterator[None]:
    """Run a hook body; any exception is logged as a warning and goes no further."""
    try:
        yield
    except Exception:
        log.warning("Dataset forwarder: %s failed; Airflow carries on unaffected.", hook, exc_info=True)
