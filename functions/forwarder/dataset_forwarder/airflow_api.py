"""Clients for downstream Airflow REST APIs: version detection, auth, asset lookup, event POST.

Airflow 2: `POST /api/v1/datasets/events`. Airflow 3: resolve the asset id (the `uri_pattern`
filter is a case-insensitive substring match, so the exact uri is picked here), then
`POST /api/v2/assets/events`. Every failure becomes a `DeliveryFailed` with a secret-free detail.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import quote

from .envelope import LINEAGE_KEY, parse_time
from .outcomes import (
    AUTH,
    CONNECTION,
    INVALID_TARGET,
    TIMEOUT,
    UNKNOWN_DATASET,
    DeliveryFailed,
    failure_for_status,
    redact,
)
from .single_flight import SingleFlight
from .targets import Target
from .transport import ERROR_CONNECTION, ERROR_TIMEOUT, Reply, Transport, TransportError

TOKEN_REFRESH_MARGIN_S = 60.0
TOKEN_DEFAULT_LIFETIME_S = 300.0
ASSET_PAGE_SIZE = 100
ASSET_MAX_PAGES = 20
VERIFY_PAGE_SIZE = 100  # Airflow's default maximum_page_limit
VERIFY_MAX_PAGES = 20
CLOCK_SKEW_ALLOWANCE = timedelta(minutes=15)  # upstream and downstream clocks may disagree
CONNECT_TIMEOUT_CAP_S = 3.05
BODY_EXCERPT = 300


class SecretSource(Protocol):
    def get(self, name: str, *, fresh: bool = False) -> str: ...

    def known_values(self) -> list[str]: ...


@dataclass(frozen=True)
class Posted:
    """A 2xx answer to the event POST."""

    status: int
    api: str
    downstream_event_id: Any = None


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, AttributeError):
        return None


def _lineage_id(event: Mapping[str, Any]) -> Any:
    extra = event.get("extra")
    lineage = extra.get(LINEAGE_KEY) if isinstance(extra, dict) else None
    return lineage.get("id") if isinstance(lineage, dict) else None


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    return parse_time(event.get("timestamp"))


def _excerpt(response: Reply) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:BODY_EXCERPT]


class AirflowClient:
    """Delivers one event to one target; caches API versions, asset ids and JWTs across calls."""

    def __init__(
        self,
        transport: Transport,
        secrets: SecretSource,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._transport = transport
        self._secrets = secrets
        self._clock = clock
        self._lock = threading.Lock()
        self._versions: dict[str, str] = {}
        self._asset_ids: dict[tuple[str, str], int] = {}
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._flights = SingleFlight()  # one version probe, token and asset lookup per target at a time

    # -- public -----------------------------------------------------------------------------

    def deliver(self, target: Target, uri: str, extra: Mapping[str, Any]) -> Posted:
        version = self.api_version(target)
        if version == "2":
            return self._post_v1(target, uri, extra)
        return self._post_v2(target, uri, extra)

    def api_version(self, target: Target) -> str:
        """ "2" or "3": from the target's setting, or probed once per url and cached."""
        if target.airflow != "auto":
            return target.airflow
        with self._lock:
            cached = self._versions.get(target.url)
        if cached:
            return cached
        return self._flights.run(("version", target.url), lambda: self._probe_version(target))

    def _probe_version(self, target: Target) -> str:
        headers = {} if target.auth.type == "airflow-token" else self._static_auth(target, fresh=False)
        version = None
        for candidate, path in (("3", "/api/v2/version"), ("2", "/api/v1/version")):
            response = self._request(target, "GET", path, headers=headers)
            if response.status_code in (200, 401, 403):
                version = candidate
                break
            if response.status_code != 404:
                raise self._failure(target, response, "GET", path)
        if version is None:
            raise DeliveryFailed(
                INVALID_TARGET,
                f"no Airflow REST API at {target.url} (/api/v2/version and /api/v1/version answered 404)",
                transient=False,
            )
        with self._lock:
            self._versions[target.url] = version
        return version

    def already_received(self, target: Target, uri: str, event_id: str, *, since: datetime | None = None) -> bool:
        """Whether the target already holds an event with this lineage id.

        Asked before posting again after an ambiguous try (a timeout or a reset after the request
        left): the earlier POST may have been accepted, and a second one would run the DAG twice.
        Pages through the dataset's events newest first, down to `since` (when the envelope was
        emitted) less a clock-skew allowance; raises DeliveryFailed when that is more than
        VERIFY_MAX_PAGES pages, rather than answer "no" without having looked.
        """
        if self.api_version(target) == "3":
            with self._lock:
                asset_id = self._asset_ids.get((target.url, uri))
            if asset_id is None:
                asset = self.find_asset(target, uri)
                if asset is None:
                    return False
                asset_id = int(asset["id"])
            path, params, key = "/api/v2/assets/events", {"asset_id": str(asset_id)}, "asset_events"
        else:
            dataset = self._v1_dataset(target, uri)
            if dataset is None:
                return False
            path, params, key = "/api/v1/datasets/events", {"dataset_id": str(dataset["id"])}, "dataset_events"
        oldest_wanted = since - CLOCK_SKEW_ALLOWANCE if since is not None else None
        offset = 0
        for _ in range(VERIFY_MAX_PAGES):
            page = {**params, "order_by": "-timestamp", "limit": str(VERIFY_PAGE_SIZE), "offset": str(offset)}
            response = self._authorized(target, "GET", path, params=page)
            if response.status_code != 200:
                raise self._failure(target, response, "GET", path)
            try:
                events = [event for event in response.json()[key] if isinstance(event, dict)]
            except (ValueError, KeyError, TypeError):
                raise DeliveryFailed(
                    INVALID_TARGET,
                    f"GET {path} on {target.name} answered something that is not an event list",
                    transient=True,
                ) from None
            if any(_lineage_id(event) == event_id for event in events):
                return True
            if len(events) < VERIFY_PAGE_SIZE or oldest_wanted is None:
                return False  # the last page, or an envelope without a time: the newest page is all we can do
            oldest = _event_time(events[-1])
            if oldest is not None and oldest < oldest_wanted:
                return False  # older events predate the envelope
            offset += len(events)
        raise DeliveryFailed(
            TIMEOUT,
            f"could not check {target.name}: more than {VERIFY_MAX_PAGES * VERIFY_PAGE_SIZE} events of {uri} "
            "since the envelope was emitted",
            transient=True,
        )

    def check_access(self, target: Target) -> str:
        """The target's API version, after one authorized read proved the credentials work."""
        version = self.api_version(target)
        path = "/api/v2/assets" if version == "3" else "/api/v1/datasets"
        response = self._authorized(target, "GET", path, params={"limit": "1"})
        if response.status_code != 200:
            raise self._failure(target, response, "GET", path)
        return version

    def consumers(self, target: Target, uri: str) -> list[str] | None:
        """The DAGs scheduled on `uri` downstream, or None when the target does not know the dataset."""
        if self.api_version(target) == "3":
            asset = self.find_asset(target, uri)
            dags = None if asset is None else asset.get("scheduled_dags")
        else:
            dataset = self._v1_dataset(target, uri)
            dags = None if dataset is None else dataset.get("consuming_dags")
        if dags is None:
            return None
        return [str(dag.get("dag_id")) for dag in dags if isinstance(dag, dict)]

    def _v1_dataset(self, target: Target, uri: str) -> dict[str, Any] | None:
        path = "/api/v1/datasets/" + quote(uri, safe="")
        response = self._authorized(target, "GET", path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._failure(target, response, "GET", "/api/v1/datasets/{uri}")
        try:
            dataset = response.json()
        except ValueError:
            return None
        return dataset if isinstance(dataset, dict) and "id" in dataset else None

    def find_asset(self, target: Target, uri: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """Airflow 3: the asset whose uri is exactly `uri` (cached by id), or None."""
        offset = 0
        for _ in range(ASSET_MAX_PAGES):
            params = {"uri_pattern": uri, "limit": str(ASSET_PAGE_SIZE), "offset": str(offset)}
            response = self._authorized(target, "GET", "/api/v2/assets", params=params)
            if response.status_code != 200:
                raise self._failure(target, response, "GET", "/api/v2/assets")
            try:
                page = response.json()
                assets = page["assets"]
                total = int(page.get("total_entries", 0))
            except (ValueError, KeyError, TypeError):
                raise DeliveryFailed(
                    INVALID_TARGET, "GET /api/v2/assets answered something that is not an asset list", transient=False
                ) from None
            for asset in assets:
                if isinstance(asset, dict) and asset.get("uri") == uri:
                    with self._lock:
                        self._asset_ids[(target.url, uri)] = int(asset["id"])
                    return asset
            offset += len(assets)
            if not assets or offset >= total:
                return None
        return None

    # -- event POSTs ------------------------------------------------------------------------

    def _post_v1(self, target: Target, uri: str, extra: Mapping[str, Any]) -> Posted:
        path = "/api/v1/datasets/events"
        response = self._authorized(target, "POST", path, json_body={"dataset_uri": uri, "extra": extra})
        if 200 <= response.status_code <= 299:
            return Posted(response.status_code, "v1", self._event_id(response))
        if response.status_code == 404:
            raise DeliveryFailed(
                UNKNOWN_DATASET,
                f"{target.name} does not know dataset {uri} (no DAG there references it): {_excerpt(response)}",
                transient=False,
            )
        raise self._failure(target, response, "POST", path)

    def _post_v2(self, target: Target, uri: str, extra: Mapping[str, Any]) -> Posted:
        path = "/api/v2/assets/events"
        with self._lock:
            asset_id = self._asset_ids.get((target.url, uri))
        from_cache = asset_id is not None
        for _ in range(2):
            if asset_id is None:
                asset = self._flights.run(("asset", target.url, uri), lambda: self.find_asset(target, uri))
                if asset is None:
                    raise DeliveryFailed(
                        UNKNOWN_DATASET,
                        f"{target.name} has no asset with uri {uri} (no DAG there references it)",
                        transient=False,
                    )
                asset_id = int(asset["id"])
            response = self._authorized(target, "POST", path, json_body={"asset_id": asset_id, "extra": extra})
            if 200 <= response.status_code <= 299:
                return Posted(response.status_code, "v2", self._event_id(response))
            if response.status_code != 404:
                raise self._failure(target, response, "POST", path)
            with self._lock:
                self._asset_ids.pop((target.url, uri), None)
            if not from_cache:
                break
            from_cache, asset_id = False, None  # a stale cached id: resolve once more
        raise DeliveryFailed(
            UNKNOWN_DATASET, f"{target.name} no longer has asset {uri}: {_excerpt(response)}", transient=False
        )

    @staticmethod
    def _event_id(response: Reply) -> Any:
        try:
            body = response.json()
        except ValueError:
            return None
        return body.get("id") if isinstance(body, dict) else None

    # -- auth -------------------------------------------------------------------------------

    def _authorized(
        self,
        target: Target,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Reply:
        """One API call with the target's credentials; on 401/403 the credential is fetched again once."""
        headers = self._auth_headers(target, fresh=False)
        response = self._request(target, method, path, headers=headers, params=params, json_body=json_body)
        if response.status_code not in (401, 403) or target.auth.type == "none":
            return response
        renewed = self._auth_headers(target, fresh=True)
        if renewed == headers and target.auth.type != "airflow-token":
            return response
        return self._request(target, method, path, headers=renewed, params=params, json_body=json_body)

    def _auth_headers(self, target: Target, *, fresh: bool) -> dict[str, str]:
        if target.auth.type == "airflow-token":
            return {"Authorization": f"Bearer {self._jwt(target, fresh=fresh)}"}
        return self._static_auth(target, fresh=fresh)

    def _static_auth(self, target: Target, *, fresh: bool) -> dict[str, str]:
        auth = target.auth
        if auth.type == "bearer":
            return {"Authorization": f"Bearer {self._secret(target, fresh=fresh)}"}
        if auth.type == "basic":
            pair = f"{auth.username}:{self._secret(target, fresh=fresh)}".encode()
            return {"Authorization": f"Basic {base64.b64encode(pair).decode()}"}
        return {}

    def _secret(self, target: Target, *, fresh: bool) -> str:
        name = target.auth.secret
        if not name:
            raise DeliveryFailed(AUTH, f"target {target.name} names no secret", transient=False)
        return self._secrets.get(name, fresh=fresh)

    def _jwt(self, target: Target, *, fresh: bool) -> str:
        key = (target.url, target.auth.username or "")
        now = self._clock()
        with self._lock:
            cached = self._tokens.get(key)
        if cached and not fresh and cached[1] > now:
            return cached[0]
        if fresh:  # after a 401/403: this caller's own new token, with the secret read again
            return self._fetch_jwt(target, key, now, fresh=True)
        return self._flights.run(("token", *key), lambda: self._fetch_jwt(target, key, now, fresh=False))

    def _fetch_jwt(self, target: Target, key: tuple[str, str], now: float, *, fresh: bool) -> str:
        body = {"username": target.auth.username, "password": self._secret(target, fresh=fresh)}
        response = self._request(target, "POST", "/auth/token", json_body=body)
        if response.status_code in (401, 403) and not fresh:
            body["password"] = self._secret(target, fresh=True)
            response = self._request(target, "POST", "/auth/token", json_body=body)
        if response.status_code not in (200, 201):
            failure = self._failure(target, response, "POST", "/auth/token")
            if response.status_code in (400, 401, 403, 422):
                failure = DeliveryFailed(
                    AUTH, f"{target.name} refused the credentials at /auth/token: {failure.detail}", transient=False
                )
            raise failure
        try:
            token = str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            raise DeliveryFailed(AUTH, "/auth/token answered without an access_token", transient=False) from None
        expiry = _jwt_expiry(token) or now + TOKEN_DEFAULT_LIFETIME_S
        with self._lock:
            self._tokens[key] = (token, expiry - TOKEN_REFRESH_MARGIN_S)
        return token

    # -- transport --------------------------------------------------------------------------

    def _request(
        self,
        target: Target,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Reply:
        timeout = (min(CONNECT_TIMEOUT_CAP_S, target.timeout_s), target.timeout_s)
        try:
            return self._transport.request(
                method, target.url + path, headers=headers, params=params, json_body=json_body, timeout=timeout
            )
        except TransportError as exc:
            what = f"{method} {path} on {target.name}"
            landed = exc.sent and method == "POST"  # a lost answer to a GET changes nothing downstream
            if exc.kind == ERROR_TIMEOUT:
                detail = f"{what} got no answer within {target.timeout_s:g}s"
                raise DeliveryFailed(TIMEOUT, detail, transient=True, may_have_landed=landed) from None
            error, transient = (CONNECTION, True) if exc.kind == ERROR_CONNECTION else (INVALID_TARGET, False)
            raise DeliveryFailed(error, f"{what}: {exc.detail}", transient=transient, may_have_landed=landed) from None

    def _failure(self, target: Target, response: Reply, method: str, path: str) -> DeliveryFailed:
        detail = f"{method} {path} on {target.name} answered {response.status_code}: {_excerpt(response)}"
        with self._lock:
            known = [token for token, _ in self._tokens.values()]
        secrets = self._secrets.known_values()
        known += secrets
        if target.auth.type == "basic":  # an echoed Authorization header carries the pair in base64
            known += [base64.b64encode(f"{target.auth.username}:{s}".encode()).decode() for s in secrets]
        return failure_for_status(response.status_code, response.headers, redact(detail, known))
