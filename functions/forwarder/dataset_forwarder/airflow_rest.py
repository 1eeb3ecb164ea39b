"""What differs between Airflow 2 and Airflow 3 REST APIs, over any way in (`RestApi`).

Airflow 2 (`/api/v1`) names datasets by uri; Airflow 3 (`/api/v2`) names assets by id, found with
`uri_pattern` (a case-insensitive substring match, so the exact uri is picked here) and cached.
Paths are relative to the REST root, so the same endpoints serve HTTPS and MWAA.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .outcomes import INVALID_TARGET, UNKNOWN_DATASET, DeliveryFailed
from .single_flight import SingleFlight

if TYPE_CHECKING:
    from .transport import Reply
    from .ways_in import RestApi

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # Airflow's default maximum_page_limit
MAX_PAGES = 20
# Airflow accepts `partition_key` in asset events and DAG-run triggers from 3.2 on (3.0/3.1 forbid the field: 422).
PARTITIONS_SINCE = (3, 2)


@dataclass(frozen=True)
class Posted:
    """A 2xx answer to the delivering call (or a 409 that says the target already has it)."""

    status: int
    api: str
    downstream_id: Any = None
    already_there: bool = False


@dataclass(frozen=True)
class Dataset:
    """A dataset/asset as the downstream knows it: its id and the DAGs scheduled on it."""

    id: Any
    consumers: tuple[str, ...]


def answer_id(reply: Reply) -> Any:
    try:
        body = reply.json()
    except ValueError:
        return None
    return body.get("id") if isinstance(body, dict) else None


def _json_list(reply: Reply, key: str, what: str, *, transient: bool) -> list[dict[str, Any]]:
    try:
        items = reply.json()[key]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise DeliveryFailed(
            INVALID_TARGET, f"{what} answered something that is not a list", transient=transient
        ) from None
    return [item for item in items if isinstance(item, dict)]


def _dag_ids(dags: Any) -> tuple[str, ...]:
    return tuple(str(dag.get("dag_id")) for dag in dags if isinstance(dag, dict)) if isinstance(dags, list) else ()


class Endpoints:
    """The calls actions need, for one Airflow major. `api` is the way in."""

    name = ""
    datasets_path = ""
    events_path = ""
    events_key = ""
    dataset_key = ""

    def __init__(self, api: RestApi, target: str) -> None:
        self.api = api
        self.target = target

    def dataset(self, uri: str) -> Dataset | None:
        raise NotImplementedError

    def post_event(self, uri: str, extra: Mapping[str, Any], partition_key: str | None = None) -> Posted:
        raise NotImplementedError

    def run_body(self, run_id: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def with_partition(self, send: Callable[[dict[str, Any]], Reply], body: dict[str, Any], key: str | None) -> Reply:
        """`send(body)`, with `partition_key` in it when this Airflow takes one (Airflow 2 never does)."""
        return send(body)

    def run_exists(self, reply: Reply, run_id: str) -> bool:
        """Whether a 409 to a trigger says a run with this id exists (rather than another clash)."""
        return True

    def events_page(self, dataset: Dataset, offset: int, limit: int) -> list[dict[str, Any]]:
        params = {
            self.dataset_key: str(dataset.id),
            "order_by": "-timestamp",
            "limit": str(limit),
            "offset": str(offset),
        }
        reply = self.api.call("GET", self.events_path, params=params)
        if reply.status_code != 200:
            raise self.api.failure(reply, f"GET {self.events_path}")
        return _json_list(reply, self.events_key, f"GET {self.events_path} on {self.target}", transient=True)

    def check_read(self) -> None:
        """One authorized read: proves the credentials work."""
        reply = self.api.call("GET", self.datasets_path, params={"limit": "1"})
        if reply.status_code != 200:
            raise self.api.failure(reply, f"GET {self.datasets_path}")

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        path = "/dags/" + quote(dag_id, safe="")
        reply = self.api.call("GET", path)
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise self.api.failure(reply, "GET /dags/{dag_id}")
        try:
            dag = reply.json()
        except ValueError:
            return None
        return dag if isinstance(dag, dict) else None

    def trigger(self, dag_id: str, run_id: str, conf: Mapping[str, Any], partition_key: str | None) -> Reply:
        path = dag_runs_path(dag_id)
        return self.with_partition(
            lambda body: self.api.call("POST", path, body=body), self.run_body(run_id, conf), partition_key
        )


def dag_runs_path(dag_id: str) -> str:
    return f"/dags/{quote(dag_id, safe='')}/dagRuns"


class Airflow2(Endpoints):
    name = "v1"
    datasets_path = "/datasets"
    events_path = "/datasets/events"
    events_key = "dataset_events"
    dataset_key = "dataset_id"

    def dataset(self, uri: str) -> Dataset | None:
        path = "/datasets/" + quote(uri, safe="")
        if self.api.max_path is not None and len(path) > self.api.max_path:
            return self._listed(uri)  # the exact lookup does not fit (MWAA's 64-character path)
        reply = self.api.call("GET", path)
        if reply.status_code == 404:
            return None
        if reply.status_code != 200:
            raise self.api.failure(reply, "GET /datasets/{uri}")
        try:
            found = reply.json()
        except ValueError:
            return None
        if not isinstance(found, dict) or "id" not in found:
            return None
        return Dataset(found["id"], _dag_ids(found.get("consuming_dags")))

    def _listed(self, uri: str) -> Dataset | None:
        offset = 0
        for _ in range(MAX_PAGES):  # 2.x's total_entries ignores the filter: page until a short page
            params = {"uri_pattern": uri, "limit": str(PAGE_SIZE), "offset": str(offset)}
            reply = self.api.call("GET", "/datasets", params=params)
            if reply.status_code != 200:
                raise self.api.failure(reply, "GET /datasets")
            page = _json_list(reply, "datasets", f"GET /datasets on {self.target}", transient=False)
            for found in page:
                if found.get("uri") == uri and "id" in found:
                    return Dataset(found["id"], _dag_ids(found.get("consuming_dags")))
            if len(page) < PAGE_SIZE:
                return None
            offset += len(page)
        return None

    def post_event(self, uri: str, extra: Mapping[str, Any], partition_key: str | None = None) -> Posted:
        reply = self.api.call("POST", "/datasets/events", body={"dataset_uri": uri, "extra": extra})
        if 200 <= reply.status_code <= 299:
            return Posted(reply.status_code, self.name, answer_id(reply))
        if reply.status_code == 404:
            failure = self.api.failure(reply, "POST /datasets/events")
            raise DeliveryFailed(
                UNKNOWN_DATASET,
                f"{self.target} does not know dataset {uri} (no DAG there references it): {failure.detail}",
                transient=False,
            )
        raise self.api.failure(reply, "POST /datasets/events")

    def run_body(self, run_id: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        return {"dag_run_id": run_id, "conf": dict(conf)}

    def run_exists(self, reply: Reply, run_id: str) -> bool:
        # Airflow 2 gives the run a logical date of now: a 409 may also mean another run of that same instant.
        return run_id.encode() in reply.content


class Airflow3(Endpoints):
    name = "v2"
    datasets_path = "/assets"
    events_path = "/assets/events"
    events_key = "asset_events"
    dataset_key = "asset_id"

    def __init__(self, api: RestApi, target: str) -> None:
        super().__init__(api, target)
        self._lock = threading.Lock()
        self._ids: dict[str, Any] = {}
        self._flight = SingleFlight()  # concurrent first deliveries of one uri make one lookup
        self._takes_partitions: bool | None = None  # from GET /version, asked once an event carries a key

    def dataset(self, uri: str) -> Dataset | None:
        """The asset whose uri is exactly `uri` (its id is cached), or None."""
        offset = 0
        for _ in range(MAX_PAGES):
            params = {"uri_pattern": uri, "limit": str(PAGE_SIZE), "offset": str(offset)}
            reply = self.api.call("GET", "/assets", params=params)
            if reply.status_code != 200:
                raise self.api.failure(reply, "GET /assets")
            try:
                page = reply.json()
                assets = page["assets"]
                total = int(page.get("total_entries", 0))
            except (ValueError, KeyError, TypeError):
                raise DeliveryFailed(
                    INVALID_TARGET, "GET /assets answered something that is not an asset list", transient=False
                ) from None
            for asset in assets:
                if isinstance(asset, dict) and asset.get("uri") == uri and "id" in asset:
                    with self._lock:
                        self._ids[uri] = asset["id"]
                    return Dataset(asset["id"], _dag_ids(asset.get("scheduled_dags")))
            offset += len(assets)
            if not assets or offset >= total:
                return None
        return None

    def post_event(self, uri: str, extra: Mapping[str, Any], partition_key: str | None = None) -> Posted:
        with self._lock:
            asset_id = self._ids.get(uri)
        from_cache = asset_id is not None
        for _ in range(2):
            if asset_id is None:
                asset = self._flight.run(uri, lambda: self.dataset(uri))
                if asset is None:
                    raise DeliveryFailed(
                        UNKNOWN_DATASET,
                        f"{self.target} has no asset with uri {uri} (no DAG there references it)",
                        transient=False,
                    )
                asset_id = asset.id
            reply = self.with_partition(
                lambda body: self.api.call("POST", "/assets/events", body=body),
                {"asset_id": asset_id, "extra": extra},
                partition_key,
            )
            if 200 <= reply.status_code <= 299:
                return Posted(reply.status_code, self.name, answer_id(reply))
            if reply.status_code != 404:
                raise self.api.failure(reply, "POST /assets/events")
            with self._lock:
                self._ids.pop(uri, None)
            if not from_cache:
                break
            from_cache, asset_id = False, None  # a stale cached id: resolve once more
        failure = self.api.failure(reply, "POST /assets/events")
        raise DeliveryFailed(
            UNKNOWN_DATASET, f"{self.target} no longer has asset {uri}: {failure.detail}", transient=False
        )

    def cached_dataset(self, uri: str) -> Dataset | None:
        with self._lock:
            asset_id = self._ids.get(uri)
        return Dataset(asset_id, ()) if asset_id is not None else self.dataset(uri)

    def run_body(self, run_id: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        return {"dag_run_id": run_id, "logical_date": None, "conf": dict(conf)}

    def with_partition(self, send: Callable[[dict[str, Any]], Reply], body: dict[str, Any], key: str | None) -> Reply:
        """Airflow 3.2+ takes `partition_key`; 3.0/3.1 forbid it, and a DAG that is not partitioned refuses one.

        Where it cannot go in the request, the key still reaches the downstream in the extra's (or conf's)
        `dataset_forwarder` block, and the log says so once per target. A refusal that names the partition key
        is answered by sending once more without it (a 4xx created nothing), and remembered: never a 422 loop.
        """
        if key is None or not self._partitions_taken():
            return send(body)
        reply = send({**body, "partition_key": key})
        if reply.status_code in (400, 422) and b"partition" in reply.content.lower():
            self._stop_partitions("it refused the partition key")
            return send(body)
        return reply

    def _partitions_taken(self) -> bool:
        with self._lock:
            known = self._takes_partitions
        if known is not None:
            return known
        reply = self.api.call("GET", "/version")
        try:
            version = str(reply.json()["version"]) if reply.status_code == 200 else ""
            release = tuple(int(part) for part in version.split(".")[:2])
        except (ValueError, KeyError, TypeError):
            release = ()
        if release and release >= PARTITIONS_SINCE:
            with self._lock:
                self._takes_partitions = True
            return True
        self._stop_partitions(f"Airflow {version or 'of unknown version'} takes no partition key (3.2+ does)")
        return False

    def _stop_partitions(self, why: str) -> None:
        with self._lock:
            first = self._takes_partitions is not False
            self._takes_partitions = False
        if first:
            log.warning(
                "partition keys go to this target only in the dataset_forwarder block of the extra or conf",
                extra={"target": self.target, "why": why},
            )


def endpoints_for(api: RestApi, target: str) -> Endpoints:
    return Airflow3(api, target) if api.airflow_major() == "3" else Airflow2(api, target)
