"""Turn one upstream dataset/asset event, or one finished DAG run, into the v1 envelope (docs/envelope.md).

Also holds the decisions made per event before anything is sent: the include filter and the
loop guard (an event that already passed through this deployment is not forwarded again).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
KIND_ASSET_EVENT = "asset_event"
KIND_DAG_RUN = "dag_run"
LINEAGE_KEY = "dataset_forwarder"
"""The reserved extra key the forwarder adds downstream: {"id", "source", "trail"}."""

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/airflow-dataset-forwarder/envelope/v1")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# The JSON object sent as the SQS message body (the forwarder parses it into its own `Envelope`).
EnvelopeBody = dict[str, Any]


@dataclass(frozen=True)
class UpstreamEvent:
    """What a hook knows about one dataset/asset event, whatever the Airflow version."""

    uri: str
    name: str | None = None
    extra: Mapping[str, Any] | None = None
    dag_id: str | None = None
    task_id: str | None = None
    run_id: str | None = None
    map_index: int | None = None
    event_key: str | None = None
    """What identifies the event in this deployment: the Airflow DB id where the hook sees it,
    else a key unique to this hook call. Together with the deployment it makes the envelope id."""
    timestamp: datetime | None = None
    partition_key: str | None = None
    """Airflow 3.2+: the event's partition key."""


@dataclass(frozen=True)
class RunOutcome:
    """What a DAG-run hook knows about one finished run, whatever the Airflow version."""

    dag_id: str
    run_id: str
    state: str
    """``success`` or ``failed``: the hook that reported it."""
    run_type: str | None = None
    logical_date: datetime | None = None
    start_date: datetime | None = None
    end_date: datetime | None = None
    clear_number: int = 0
    partition_key: str | None = None
    lineages: tuple[Any, ...] = ()
    """The reserved ``dataset_forwarder`` values of what started the run: the ``trigger_dag`` conf's
    (the `trigger_dag` conf) and those in the extras of the asset events the run consumed."""


def build(
    event: UpstreamEvent,
    *,
    deployment: str,
    airflow_version: str | None,
    include: Sequence[str] = (),
    now: datetime | None = None,
) -> EnvelopeBody | None:
    """The envelope for ``event``, or None when it must not be forwarded (filtered or looped)."""
    if not included(event.uri, include):
        log.debug("Not forwarding %s: it matches none of the include patterns %s.", event.uri, list(include))
        return None
    extra = _json_object(event.extra)
    lineage = extra.pop(LINEAGE_KEY, None)
    earlier = incoming_trail(lineage)
    if deployment in earlier:
        log.info("Not forwarding %s: the event already passed through %s (trail %s).", event.uri, deployment, earlier)
        return None
    emitted_at = utc(event.timestamp or now or datetime.now(timezone.utc))
    emitted_iso = emitted_at.isoformat()
    return {
        "version": VERSION,
        "kind": KIND_ASSET_EVENT,
        "id": event_id(deployment, event.event_key, event.uri, emitted_iso),
        "uri": event.uri,
        "name": event.name,
        "extra": extra,
        "partition_key": event.partition_key,
        "source": {
            "deployment": deployment,
            "airflow_version": airflow_version,
            "dag_id": event.dag_id,
            "task_id": event.task_id,
            "run_id": event.run_id,
            # Airflow stores its column default (-1) for an event no task made (REST API): no task, no map index.
            "map_index": event.map_index if event.task_id is not None else None,
        },
        "emitted_at": emitted_iso,
        "trail": [*earlier, deployment],
        "only_targets": None,
    }


def build_run(
    outcome: RunOutcome,
    *,
    deployment: str,
    airflow_version: str | None,
    now: datetime | None = None,
) -> EnvelopeBody | None:
    """The ``dag_run`` envelope of ``outcome``, or None when the run was started from this deployment's own
    forwarding (its trail holds this deployment already)."""
    uri = run_uri(deployment, outcome.dag_id, outcome.state)
    earlier = merged_trail(outcome.lineages)
    if deployment in earlier:
        log.info("Not forwarding %s: what started the run passed through %s (trail %s).", uri, deployment, earlier)
        return None
    emitted_at = utc(outcome.end_date or now or datetime.now(timezone.utc))
    return {
        "version": VERSION,
        "kind": KIND_DAG_RUN,
        "id": run_outcome_id(deployment, outcome),
        "uri": uri,
        "name": uri,
        "extra": {
            "dag_id": outcome.dag_id,
            "run_id": outcome.run_id,
            "state": outcome.state,
            "run_type": outcome.run_type,
            "logical_date": iso_or_none(outcome.logical_date),
            "start_date": iso_or_none(outcome.start_date),
            "end_date": iso_or_none(outcome.end_date),
        },
        "partition_key": outcome.partition_key,
        "source": {
            "deployment": deployment,
            "airflow_version": airflow_version,
            "dag_id": outcome.dag_id,
            "task_id": None,
            "run_id": outcome.run_id,
            "map_index": None,
        },
        "emitted_at": emitted_at.isoformat(),
        "trail": [*earlier, deployment],
        "only_targets": None,
    }


def run_uri(deployment: str, dag_id: str, state: str) -> str:
    """The URI a DAG run's outcome is published under: ``dagrun://{deployment}/{dag_id}/{state}``."""
    return f"dagrun://{deployment}/{dag_id}/{state}"


def run_outcome_id(deployment: str, outcome: RunOutcome) -> str:
    """A 32-hex id per run *outcome*: the same whenever this outcome is reported, new when the run runs again.

    Built from what Airflow fixes before the run finishes: the run's start and its clear count, both
    renewed when a finished run is cleared and runs again (2.x and 3.x). Not the end date: Airflow sets
    it anew each time it computes the final state, so a scheduler loop retried after a failed commit
    would report one outcome under two ids.
    """
    start = iso_or_none(outcome.start_date)
    name = json.dumps(
        [KIND_DAG_RUN, deployment, outcome.dag_id, outcome.run_id, outcome.state, outcome.clear_number, start]
    )
    return uuid.uuid5(_ID_NAMESPACE, name).hex


def selected(dag_id: str, patterns: Sequence[str]) -> bool:
    """True when ``dag_id`` matches one of ``patterns`` (fnmatch, case-sensitive); no patterns: none is."""
    return any(fnmatch.fnmatchcase(dag_id, p) for p in patterns)


def merged_trail(lineages: Sequence[Any]) -> list[str]:
    """The trails of several incoming lineages as one, each deployment once, in order of first appearance."""
    trail: list[str] = []
    for lineage in lineages:
        for entry in incoming_trail(lineage):
            if entry not in trail:
                trail.append(entry)
    return trail


def included(uri: str, patterns: Sequence[str]) -> bool:
    """True when no patterns are set or ``uri`` matches one of them (fnmatch, case-sensitive)."""
    return not patterns or any(fnmatch.fnmatchcase(uri, p) for p in patterns)


def incoming_trail(lineage: Any) -> list[str]:
    """The trail an event forwarded from elsewhere carries in its extra; [] for a local event."""
    if not isinstance(lineage, Mapping):
        return []
    trail = lineage.get("trail")
    if not isinstance(trail, list):
        return []
    return [entry for entry in trail if isinstance(entry, str) and entry]


def event_id(deployment: str, event_key: str | None, uri: str, emitted_at: str) -> str:
    """A 32-hex id that is the same every time the same event is described, and differs between events."""
    name = json.dumps([deployment, event_key, uri, emitted_at])
    return uuid.uuid5(_ID_NAMESPACE, name).hex


def message_attributes(envelope: EnvelopeBody) -> dict[str, dict[str, str]]:
    """The SQS message attributes every envelope carries (all String): uri, event_id, source_deployment."""
    values = {
        "uri": envelope["uri"],
        "event_id": envelope["id"],
        "source_deployment": (envelope.get("source") or {}).get("deployment") or "-",
    }
    return {key: {"DataType": "String", "StringValue": value} for key, value in values.items()}


def dumps(envelope: EnvelopeBody) -> str:
    """The message body: compact JSON, ASCII only (SQS rejects some raw Unicode code points)."""
    return json.dumps(envelope, separators=(",", ":"))


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already (Airflow stores UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def iso_or_none(moment: datetime | None) -> str | None:
    """``moment`` as an ISO 8601 string in UTC, None when unknown."""
    return utc(moment).isoformat() if moment is not None else None


def epoch_ns(iso: str | None) -> int:
    """Nanoseconds since the epoch of an ISO 8601 timestamp; 0 when missing or unreadable."""
    if not iso:
        return 0
    try:
        moment = utc(datetime.fromisoformat(iso))
    except ValueError:
        return 0
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _json_object(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """A plain JSON copy of ``extra`` (Airflow's extras may hold lazy proxies or odd scalars)."""
    if not extra:
        return {}
    copied = json.loads(json.dumps(dict(extra), default=str))
    return copied if isinstance(copied, dict) else {}
