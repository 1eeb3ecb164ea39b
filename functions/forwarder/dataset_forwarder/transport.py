"""HTTP to the downstream APIs on urllib3 connection pools: keep-alive, TLS verified, no redirects followed.

Straight urllib3 rather than requests: a profile of 200 concurrent deliveries (bench/README.md) showed
requests' per-call preparation (settings merges, cookie jars, runtime protocol checks) costing about
as much CPU as the HTTP exchange itself, and the handler is CPU-bound under the GIL. The retry policy
is urllib3's `Retry`, configured by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import urllib3
from urllib3 import exceptions
from urllib3.util.retry import Retry

ERROR_TIMEOUT = "timeout"
ERROR_CONNECTION = "connection"
ERROR_INVALID = "invalid"


class TransportError(Exception):
    """The request got no HTTP answer. `kind` is timeout, connection or invalid (a request we cannot send).

    `sent`: the request may have reached the server (it failed while waiting for the answer), as opposed to
    failing before it left (refused, unresolvable, TLS handshake, connect timeout, invalid).
    """

    def __init__(self, kind: str, detail: str, *, sent: bool = False) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.sent = sent


@dataclass(frozen=True)
class Reply:
    """An HTTP answer, read in full."""

    status_code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return json.loads(self.content)


class Transport:
    """One urllib3 pool per host (up to `max_hosts`), each holding up to `pool_size` connections."""

    def __init__(
        self,
        *,
        pool_size: int,
        max_hosts: int,
        retries: Retry | bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._retries = retries
        self._headers = dict(headers or {})
        self._manager = urllib3.PoolManager(
            num_pools=max_hosts,
            maxsize=pool_size,
            block=False,  # beyond pool_size a connection is opened anyway and dropped after use
            cert_reqs="CERT_REQUIRED",
            ca_certs=_ca_bundle(),
        )

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        timeout: tuple[float, float],
    ) -> Reply:
        """Send one request and read its whole answer; redirects are returned, never followed."""
        all_headers = {**self._headers, **(headers or {})}
        body = None
        if json_body is not None:
            try:
                body = json.dumps(json_body, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                raise TransportError(ERROR_INVALID, f"body is not JSON: {type(exc).__name__}") from None
            all_headers["Content-Type"] = "application/json"
        if params:
            url = f"{url}?{urlencode(params)}"
        try:
            response = self._manager.urlopen(
                method,
                url,
                body=body,
                headers=all_headers,
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                retries=self._retries,
                redirect=False,
                preload_content=True,
            )
        except exceptions.MaxRetryError as exc:  # the retries ran out: what failed last decides
            raise _transport_error(exc.reason or exc) from None
        except exceptions.HTTPError as exc:
            raise _transport_error(exc) from None
        except ValueError as exc:  # e.g. a url urllib3 cannot parse
            raise TransportError(ERROR_INVALID, type(exc).__name__) from None
        return Reply(response.status, response.headers, response.data or b"")

    def close(self) -> None:
        self._manager.clear()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _transport_error(error: BaseException) -> TransportError:
    name = type(error).__name__
    if isinstance(error, exceptions.NewConnectionError):  # refused, unresolvable: urllib3 files it under timeouts
        return TransportError(ERROR_CONNECTION, name)
    if isinstance(error, exceptions.ConnectTimeoutError):
        return TransportError(ERROR_TIMEOUT, name)
    if isinstance(error, exceptions.TimeoutError):  # the read timed out: the request went out
        return TransportError(ERROR_TIMEOUT, name, sent=True)
    if isinstance(error, exceptions.LocationValueError):
        return TransportError(ERROR_INVALID, name)
    if isinstance(error, exceptions.SSLError | exceptions.ProxyError):  # before any byte of the request
        return TransportError(ERROR_CONNECTION, name)
    return TransportError(ERROR_CONNECTION, name, sent=True)  # resets and broken answers


def _ca_bundle() -> str | None:
    """certifi's CA bundle when installed (as with requests before), else the system's."""
    try:
        import certifi
    except ImportError:
        return None
    return str(certifi.where())
