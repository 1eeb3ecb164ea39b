"""A call-per-target face over `Downstreams` for tests that exercise one way in and action at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from dataset_forwarder.airflow_rest import Posted
from dataset_forwarder.downstream import Downstreams
from dataset_forwarder.envelope import LINEAGE_KEY, Envelope, parse_envelope
from dataset_forwarder.services import Services
from dataset_forwarder.targets import Target
from dataset_forwarder.transport import Transport
from dataset_forwarder.ways_in.auth import SecretSource
from dataset_forwarder.ways_in.mwaa import MwaaClients
from devkit.envelopes import envelope


def envelope_of(
    uri: str, extra: Mapping[str, Any], *, event_id: str | None = None, since: datetime | None = None
) -> Envelope:
    """The envelope whose downstream extra is `extra` (its lineage key gives the id, source and trail)."""
    lineage = dict(extra.get(LINEAGE_KEY) or {})
    body = envelope(
        uri,
        event_id=event_id or lineage.get("id") or "e1",
        name=None,
        extra={k: v for k, v in extra.items() if k != LINEAGE_KEY},
        source=lineage.get("source"),
        trail=lineage.get("trail") or [],
        emitted_at=since.isoformat() if since else None,
    )
    return parse_envelope(json.dumps(body))


class AirflowClient:
    """deliver / api_version / already_received / check_access / consumers of one target, as the forwarder
    and `targets test` reach them through the target's `Downstream`."""

    def __init__(
        self,
        transport: Transport,
        secrets: SecretSource,
        *,
        clock: Callable[[], float] = time.time,
        mwaa: MwaaClients | None = None,
    ) -> None:
        mwaa = mwaa or MwaaClients(lambda: None, endpoint_override=True)
        self.downstreams = Downstreams(Services(transport=transport, secrets=secrets, mwaa=mwaa, clock=clock))

    def deliver(self, target: Target, uri: str, extra: Mapping[str, Any]) -> Posted:
        return self.downstreams.get(target).deliver(envelope_of(uri, extra))

    def api_version(self, target: Target) -> str:
        return self.downstreams.get(target).endpoints().api.airflow_major()

    def already_received(self, target: Target, uri: str, event_id: str, *, since: datetime | None = None) -> bool:
        envelope = envelope_of(uri, {}, event_id=event_id, since=since)
        return self.downstreams.get(target).already_received(envelope, deadline=time.monotonic() + 60)

    def check_access(self, target: Target) -> str:
        return self.downstreams.get(target).access().airflow_major

    def consumers(self, target: Target, uri: str) -> list[str] | None:
        dataset = self.downstreams.get(target).endpoints().dataset(uri)
        return None if dataset is None else list(dataset.consumers)
