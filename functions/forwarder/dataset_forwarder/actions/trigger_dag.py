"""`trigger_dag`: start a run of one DAG downstream, the event in its conf, under a run id made from the event.

The run id `dataset_forwarder__{event id}` is deterministic: a retry or replay whose POST is answered 409
learns that the target already has the run. That 409 is also this action's "did an earlier try land"
check, so nothing is looked up before a POST.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dataset_forwarder.airflow_rest import Posted, answer_id, dag_runs_path
from dataset_forwarder.envelope import LINEAGE_KEY
from dataset_forwarder.outcomes import UNKNOWN_DAG, DeliveryFailed

from . import Check

if TYPE_CHECKING:
    from dataset_forwarder.airflow_rest import Endpoints
    from dataset_forwarder.envelope import Envelope

RUN_ID_PREFIX = "dataset_forwarder__"
DAG_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")  # Airflow's own rule for DAG ids


def run_id(envelope: Envelope) -> str:
    return RUN_ID_PREFIX + envelope.id


def run_conf(envelope: Envelope) -> dict[str, Any]:
    """The run's conf: the upstream event (its extra without our reserved key) and its trail."""
    extra = {key: value for key, value in envelope.extra.items() if key != LINEAGE_KEY}
    return {
        LINEAGE_KEY: {
            "id": envelope.id,
            "uri": envelope.uri,
            "extra": extra,
            "partition_key": envelope.partition_key,
            "source": envelope.source,
            "trail": list(envelope.trail),
        }
    }


@dataclass(frozen=True)
class TriggerDag:
    kind: ClassVar[str] = "trigger_dag"

    dag_id: str

    @staticmethod
    def parse(data: Mapping[str, Any], way_in: Any) -> TriggerDag:
        dag_id = data.get("dag_id")
        if not isinstance(dag_id, str) or not DAG_ID_PATTERN.fullmatch(dag_id):
            raise ValueError("'dag_id' is required for trigger_dag: a DAG id ([A-Za-z0-9_.-], up to 250 characters)")
        limit = getattr(way_in, "max_path", None)
        path = dag_runs_path(dag_id)
        if limit is not None and len(path) > limit:
            raise ValueError(
                f"'dag_id' is too long for this way in: {path} has {len(path)} characters, at most {limit} fit"
            )
        return TriggerDag(dag_id)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.kind, "dag_id": self.dag_id}

    def describe(self) -> str:
        return f"trigger {self.dag_id}"

    def deliver(self, endpoints: Endpoints, envelope: Envelope) -> Posted:
        reply = endpoints.trigger(self.dag_id, run_id(envelope), run_conf(envelope), envelope.partition_key)
        if 200 <= reply.status_code <= 299:
            return Posted(reply.status_code, endpoints.name, answer_id(reply) or run_id(envelope))
        if reply.status_code == 409 and endpoints.run_exists(reply, run_id(envelope)):
            # a run with this id exists: an earlier try or copy created it
            return Posted(reply.status_code, endpoints.name, run_id(envelope), already_there=True)
        failure = endpoints.api.failure(reply, f"POST {dag_runs_path(self.dag_id)}")
        if reply.status_code == 409:  # another run at the same logical date (Airflow 2): the next try gets another
            failure.transient = True
        if reply.status_code == 404:
            raise DeliveryFailed(
                UNKNOWN_DAG, f"{endpoints.target} has no DAG {self.dag_id}: {failure.detail}", transient=False
            )
        raise failure

    def already_received(self, endpoints: Endpoints, envelope: Envelope, *, deadline: float) -> bool | None:
        return None  # nothing to look up: the POST itself tells (409 for a run id that exists)

    def checks(self, endpoints: Endpoints, uris: Sequence[str]) -> list[Check]:
        dag = endpoints.dag(self.dag_id)
        if dag is None:
            return [Check(f"dag {self.dag_id}", False, "does not exist downstream")]
        paused = dag.get("is_paused")
        state = "paused: runs are created but wait until it is unpaused" if paused else "active"
        return [Check(f"dag {self.dag_id}", True, f"exists, {state}")]
