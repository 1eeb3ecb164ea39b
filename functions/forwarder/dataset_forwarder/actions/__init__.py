"""What a target does with an event, registered by the target JSON's `action` value.

An action is a frozen spec (parsed from the target's JSON) whose methods deliver an envelope through
the Airflow endpoints of the target's major, tell whether an earlier try already landed, and list
what `targets test` should check. Adding an action: a module, one line in `ACTIONS`, its CLI
options, a fake endpoint, docs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from dataset_forwarder.airflow_rest import Endpoints, Posted
    from dataset_forwarder.envelope import Envelope
    from dataset_forwarder.ways_in import WayInSpec

DEFAULT_ACTION = "asset_event"


@dataclass(frozen=True)
class Check:
    """One line of `targets test`."""

    name: str
    ok: bool
    detail: str


class ActionSpec(Protocol):
    kind: ClassVar[str]

    def to_json(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...

    def deliver(self, endpoints: Endpoints, envelope: Envelope) -> Posted: ...

    def already_received(self, endpoints: Endpoints, envelope: Envelope, *, deadline: float) -> bool | None:
        """Whether an earlier try landed; None when only the delivering call itself can tell."""

    def checks(self, endpoints: Endpoints, uris: Sequence[str]) -> list[Check]: ...


class ActionKind(Protocol):
    @staticmethod
    def parse(data: Mapping[str, Any], way_in: WayInSpec | None) -> ActionSpec: ...


def _registry() -> dict[str, ActionKind]:
    from .asset_event import AssetEvent
    from .trigger_dag import TriggerDag

    return {"asset_event": AssetEvent, "trigger_dag": TriggerDag}  # type: ignore[dict-item]


ACTIONS: dict[str, ActionKind] = _registry()
