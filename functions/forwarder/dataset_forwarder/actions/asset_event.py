"""`asset_event`: post the event to the downstream dataset/asset, where its consumers are scheduled on it."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from dataset_forwarder.envelope import LINEAGE_KEY, parse_time
from dataset_forwarder.outcomes import TIMEOUT, DeliveryFailed

from . import Check

if TYPE_CHECKING:
    from dataset_forwarder.airflow_rest import Endpoints, Posted
    from dataset_forwarder.envelope import Envelope

CLOCK_SKEW_ALLOWANCE = timedelta(minutes=15)  # upstream and downstream clocks may disagree
VERIFY_PAGE_SIZE = 100  # Airflow's default maximum_page_limit
VERIFY_MAX_PAGES = 20
_GLOB_CHARS = "*?["


def _lineage_id(event: Mapping[str, Any]) -> Any:
    extra = event.get("extra")
    lineage = extra.get(LINEAGE_KEY) if isinstance(extra, dict) else None
    return lineage.get("id") if isinstance(lineage, dict) else None


@dataclass(frozen=True)
class AssetEvent:
    kind: ClassVar[str] = "asset_event"

    @staticmethod
    def parse(data: Mapping[str, Any], way_in: Any) -> AssetEvent:
        if data.get("dag_id") is not None:
            raise ValueError('\'dag_id\' belongs to "action": "trigger_dag"')
        return AssetEvent()

    def to_json(self) -> dict[str, Any]:
        return {}  # the default action is left out of the parameter

    def describe(self) -> str:
        return "asset event"

    def deliver(self, endpoints: Endpoints, envelope: Envelope) -> Posted:
        return endpoints.post_event(envelope.uri, envelope.downstream_extra(), envelope.partition_key)

    def already_received(self, endpoints: Endpoints, envelope: Envelope, *, deadline: float) -> bool:
        """Whether the target holds an event with this envelope's lineage id.

        Asked before posting again after an ambiguous try (a timeout or a reset after the request left).
        Pages through the dataset's events newest first, down to when the envelope was emitted less a
        clock-skew allowance. Raises DeliveryFailed rather than answer "no" without having looked: when
        that is more than VERIFY_MAX_PAGES pages, or the invocation's time runs out first (`deadline`,
        time.monotonic()).
        """
        dataset = endpoints.dataset(envelope.uri)
        if dataset is None:
            return False
        since = envelope.emitted_at
        oldest_wanted = since - CLOCK_SKEW_ALLOWANCE if since is not None else None
        offset = 0
        for _ in range(VERIFY_MAX_PAGES):
            if time.monotonic() >= deadline:
                raise DeliveryFailed(
                    TIMEOUT, f"could not finish checking {endpoints.target} in this invocation's time", transient=True
                )
            events = endpoints.events_page(dataset, offset, VERIFY_PAGE_SIZE)
            if any(_lineage_id(event) == envelope.id for event in events):
                return True
            if len(events) < VERIFY_PAGE_SIZE or oldest_wanted is None:
                return False  # the last page, or an envelope without a time: the newest page is all we can do
            oldest = parse_time(events[-1].get("timestamp"))
            if oldest is not None and oldest < oldest_wanted:
                return False  # older events predate the envelope
            offset += len(events)
        raise DeliveryFailed(
            TIMEOUT,
            f"could not check {endpoints.target}: more than {VERIFY_MAX_PAGES * VERIFY_PAGE_SIZE} events of "
            f"{envelope.uri} since the envelope was emitted",
            transient=True,
        )

    def checks(self, endpoints: Endpoints, uris: Sequence[str]) -> list[Check]:
        if not uris:
            return [Check("datasets", False, "only globs configured: pass --dataset URI to check one")]
        found: list[Check] = []
        for uri in uris:
            dataset = endpoints.dataset(uri)
            if dataset is None:
                found.append(Check(f"dataset {uri}", False, "not known downstream (no DAG there references it)"))
            else:
                found.append(
                    Check(f"dataset {uri}", True, "scheduled DAGs: " + (", ".join(dataset.consumers) or "none"))
                )
        return found


def exact_uris(datasets: Sequence[str]) -> list[str]:
    return [d for d in datasets if not any(c in d for c in _GLOB_CHARS)]
