"""Envelopes v1 as the listener writes them, for tests."""

from __future__ import annotations

import uuid
from typing import Any


def envelope(uri: str, *, event_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A valid envelope v1 as the listener writes it."""
    return {
        "version": 1,
        "id": event_id or uuid.uuid4().hex,
        "uri": uri,
        "name": uri,
        "extra": fields.pop("extra", {"rows": 42}),
        "source": {
            "deployment": "team-a-prod",
            "airflow_version": "3.3.2",
            "dag_id": "producer",
            "task_id": "get_bear",
            "run_id": "scheduled__2026-11-23T00:00:00+00:00",
            "map_index": -1,
        },
        "emitted_at": "2026-11-23T23:00:00.123456+00:00",
        "trail": fields.pop("trail", ["team-a-prod"]),
        "only_targets": fields.pop("only_targets", None),
        **fields,
    }
