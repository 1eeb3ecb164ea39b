"""The HTTPS way in: Airflow's REST API at the target's `url`, with one of the `auth` types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

from dataset_forwarder.outcomes import (
    CONNECTION,
    INVALID_TARGET,
    TIMEOUT,
    DeliveryFailed,
    MayHaveLanded,
    excerpt,
    failure_for_status,
)
from dataset_forwarder.transport import ERROR_CONNECTION, ERROR_TIMEOUT, Reply, TransportError

from . import AirflowMajor
from .auth import Auth, authenticator, parse_auth

if TYPE_CHECKING:
    from dataset_forwarder.services import Services
    from dataset_forwarder.targets import ParseRules

CONNECT_TIMEOUT_CAP_S = 3.05
REST_ROOTS = {"3": "/api/v2", "2": "/api/v1"}  # probed in this order


def validate_url(url: Any, *, allow_http: bool) -> str:
    if not isinstance(url, str) or not url:
        raise ValueError("'url' is required and must be a string")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        raise ValueError(f"'url' is malformed: {exc}") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        hint = "" if allow_http else " (http is accepted only with ALLOW_HTTP_TARGETS=true, for local use)"
        raise ValueError(f"'url' must use https{hint}, got scheme {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("'url' has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("'url' must not carry credentials; put them in 'auth' with a SecureString secret")
    if parts.query or parts.fragment:
        raise ValueError("'url' must not have a query or fragment")
    return url.rstrip("/")


@dataclass(frozen=True)
class HttpsWayIn:
    """`{"url": …, "auth": {…}}`: the REST API over HTTPS (Astro, self-hosted, a private network)."""

    kind: ClassVar[str] = "https"
    max_path: ClassVar[int | None] = None

    url: str
    auth: Auth = field(default_factory=lambda: Auth("none"))

    @staticmethod
    def parse(name: str, data: Mapping[str, Any], rules: ParseRules) -> HttpsWayIn:
        return HttpsWayIn(
            validate_url(data.get("url"), allow_http=rules.allow_http), parse_auth(name, data.get("auth"), rules)
        )

    @property
    def secret(self) -> str | None:
        return self.auth.secret

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "auth": self.auth.to_json()}

    def describe(self) -> str:
        return f"{self.url} ({self.auth.type})"

    def connect(self, services: Services, *, airflow: str, timeout_s: float, target: str) -> HttpsApi:
        return HttpsApi(self, services, airflow=airflow, timeout_s=timeout_s, target=target)


class HttpsApi:
    """Calls under `{url}/api/v1` or `{url}/api/v2`, authorized, with the version probed once when `auto`."""

    max_path: int | None = None

    def __init__(self, spec: HttpsWayIn, services: Services, *, airflow: str, timeout_s: float, target: str) -> None:
        self._spec = spec
        self._transport = services.transport
        self._target = target
        self._timeout = (min(CONNECT_TIMEOUT_CAP_S, timeout_s), timeout_s)
        self._timeout_s = timeout_s
        self._auth = authenticator(
            spec.auth, services.secrets, self._exchange_unauthorized, target, clock=services.clock
        )
        self._major = AirflowMajor(airflow, self._probe_major)

    # -- RestApi ----------------------------------------------------------------------------

    def airflow_major(self) -> str:
        return self._major.get()

    def call(self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None) -> Reply:
        """One call under the REST root with the target's credentials; after a 401/403 they are read again once."""
        url_path = REST_ROOTS[self.airflow_major()] + path
        return self._authorized(method, url_path, params=params, body=body)

    def failure(self, reply: Reply, what: str) -> DeliveryFailed:
        detail = f"{what} on {self._target} answered {reply.status_code}: {excerpt(reply, self._auth.in_play())}"
        return failure_for_status(reply.status_code, reply.headers, detail, self._auth.in_play())

    def identity(self) -> str:
        return f"{self._spec.auth.type} credentials" if self._spec.auth.type != "none" else "no credentials"

    # -- inside -----------------------------------------------------------------------------

    def _probe_major(self) -> str:
        # Airflow 3's /auth/token is not needed to tell the majors apart: an unauthorized 401/403 is an answer too.
        headers = {} if self._spec.auth.type == "airflow-token" else self._auth.headers(fresh=False)
        for major, root in REST_ROOTS.items():
            path = root + "/version"
            response = self._send("GET", path, headers=headers)
            if response.status_code in (200, 401, 403):
                return major
            if response.status_code != 404:
                raise self.failure(response, f"GET {path}")
        raise DeliveryFailed(
            INVALID_TARGET,
            f"no Airflow REST API at {self._spec.url} (/api/v2/version and /api/v1/version answered 404)",
            transient=False,
        )

    def _authorized(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None
    ) -> Reply:
        headers = self._auth.headers(fresh=False)
        response = self._send(method, path, headers=headers, params=params, body=body)
        if response.status_code not in (401, 403) or not self._auth.renewable:
            return response
        renewed = self._auth.headers(fresh=True)
        if renewed == headers and self._spec.auth.type != "airflow-token":
            return response
        return self._send(method, path, headers=renewed, params=params, body=body)

    def _exchange_unauthorized(self, path: str, body: Any) -> Reply:
        return self._send("POST", path, body=body)

    def _send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        body: Any = None,
    ) -> Reply:
        try:
            return self._transport.request(
                method, self._spec.url + path, headers=headers, params=params, json_body=body, timeout=self._timeout
            )
        except TransportError as exc:
            what = f"{method} {path} on {self._target}"
            # a lost answer to a GET changes nothing downstream
            failed = MayHaveLanded if exc.sent and method == "POST" else DeliveryFailed
            if exc.kind == ERROR_TIMEOUT:
                raise failed(TIMEOUT, f"{what} got no answer within {self._timeout_s:g}s", transient=True) from None
            error, transient = (CONNECTION, True) if exc.kind == ERROR_CONNECTION else (INVALID_TARGET, False)
            raise failed(error, f"{what}: {exc.detail}", transient=transient) from None
