"""The local MWAA emulator's way into an environment's Airflow: the REST root and login of each Airflow major.

An `InvokeRestApi` `Path` is relative to the REST root (`/api/v1` on Airflow 2, `/api/v2` on Airflow 3). MWAA logs
in for the caller; here Airflow 2 gets HTTP basic auth and Airflow 3 a JWT from `POST /auth/token`, cached until
Airflow answers 401 (then fetched once more). The whole relay, login included, has one deadline: MWAA's 10 s.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlencode

import urllib3

REST_ROOTS = {"2": "/api/v1", "3": "/api/v2"}


class RelayTimeout(Exception):
    """Airflow did not answer before the deadline."""


class RelayUnreachable(Exception):
    """Airflow could not be reached (connection refused or reset)."""


class LoginFailed(Exception):
    """Airflow 3 refused the configured user: the emulator is set up wrong."""


@dataclass(frozen=True)
class Login:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Answer:
    """Airflow's status and its body as a JSON document (text when it is not JSON, {} when empty)."""

    status: int
    payload: Any


class _Auth(Protocol):
    def headers(self, relay: Relay, deadline: float) -> dict[str, str]: ...

    def refused(self) -> bool:
        """Airflow answered 401: True if a fresh login is worth one more try."""
        ...


class _NoAuth:
    def headers(self, relay: Relay, deadline: float) -> dict[str, str]:
        return {}

    def refused(self) -> bool:
        return False


class _BasicAuth:
    def __init__(self, login: Login) -> None:
        encoded = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
        self._header = {"Authorization": f"Basic {encoded}"}

    def headers(self, relay: Relay, deadline: float) -> dict[str, str]:
        return self._header

    def refused(self) -> bool:
        return False


class _TokenAuth:
    """Airflow 3: a JWT from POST /auth/token, kept until Airflow refuses it."""

    def __init__(self, login: Login) -> None:
        self._login = login
        self._lock = threading.Lock()
        self._token: str | None = None

    def headers(self, relay: Relay, deadline: float) -> dict[str, str]:
        with self._lock:
            if self._token is None:
                body = {"username": self._login.username, "password": self._login.password}
                answer = relay.send("POST", "/auth/token", {}, body, deadline)
                token = answer.payload.get("access_token") if isinstance(answer.payload, dict) else None
                if answer.status not in (200, 201) or not isinstance(token, str):
                    raise LoginFailed(f"POST /auth/token as {self._login.username!r} answered {answer.status}")
                self._token = token
            return {"Authorization": f"Bearer {self._token}"}

    def refused(self) -> bool:
        with self._lock:
            had = self._token is not None
            self._token = None
        return had


def _auth_for(major: str, login: Login | None) -> _Auth:
    if login is None:
        return _NoAuth()
    return _TokenAuth(login) if major == "3" else _BasicAuth(login)


class Relay:
    """Calls one Airflow's REST API on behalf of InvokeRestApi."""

    def __init__(self, base_url: str, major: str, login: Login | None, pool: urllib3.PoolManager) -> None:
        if major not in REST_ROOTS:
            raise ValueError(f"airflow major must be one of {sorted(REST_ROOTS)}, not {major!r}")
        self.base_url = base_url.rstrip("/")
        self.major = major
        self._auth = _auth_for(major, login)
        self._pool = pool

    def call(self, method: str, path: str, query: Mapping[str, Any], body: Any, timeout_s: float) -> Answer:
        """`method` REST-root + `path` with `query` and JSON `body`; RelayTimeout after `timeout_s` in all."""
        deadline = time.monotonic() + timeout_s
        target = REST_ROOTS[self.major] + (path if path.startswith("/") else f"/{path}")
        answer = self.send(method, target, query, body, deadline, self._auth.headers(self, deadline))
        if answer.status == 401 and self._auth.refused():
            answer = self.send(method, target, query, body, deadline, self._auth.headers(self, deadline))
        return answer

    def send(
        self,
        method: str,
        target: str,
        query: Mapping[str, Any],
        body: Any,
        deadline: float,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RelayTimeout(f"{method} {target}")
        url = self.base_url + target + (f"?{urlencode(_query_pairs(query))}" if query else "")
        payload = None if body is None or method in ("GET", "DELETE") else json.dumps(body).encode()
        request_headers = {"Accept": "application/json", **(headers or {})}
        if payload is not None:
            request_headers["Content-Type"] = "application/json"
        try:
            response = self._pool.request(
                method,
                url,
                body=payload,
                headers=request_headers,
                timeout=urllib3.Timeout(total=remaining),
                retries=False,
                redirect=False,
            )
        except urllib3.exceptions.NewConnectionError as exc:  # a TimeoutError subclass in urllib3, but not one
            raise RelayUnreachable(f"{method} {target}: {type(exc).__name__}") from None
        except urllib3.exceptions.TimeoutError:
            raise RelayTimeout(f"{method} {target}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise RelayUnreachable(f"{method} {target}: {type(exc).__name__}") from None
        return Answer(response.status, _document(response.data))


def _query_pairs(query: Mapping[str, Any]) -> list[tuple[str, str]]:
    """QueryParameters as Airflow wants them: a list repeats its key, booleans are lower case."""
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, json.dumps(item) if isinstance(item, bool) else str(item)))
    return pairs


def _document(data: bytes) -> Any:
    if not data.strip():
        return {}
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return data.decode("utf-8", errors="replace")
