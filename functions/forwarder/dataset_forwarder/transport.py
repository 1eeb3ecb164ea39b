"""HTTP to the downstream APIs on urllib3 connection pools: keep-alive, TLS verified, no redirects followed.

Straight urllib3 rather than requests: a profile of 200 concurrent deliveries (bench/README.md) showed
requests' per-call preparation (settings merges, cookie jars, runtime protocol checks) costing about
as much CPU as the HTTP exchange itself, and the handler is CPU-bound under the GIL. The retry policy
is urllib3's `Retry`, configured by the caller.
"""

from __future__ import annotations

import json
import time
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
# What is kept of an answer: enough for any page the forwarder reads, never a downstream's 300 MB body.
MAX_BODY_BYTES = 512 * 1024
_CHUNK = 64 * 1024


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
    """An HTTP answer; `content` holds at most MAX_BODY_BYTES of its body (`truncated` says more came)."""

    status_code: int
    headers: Mapping[str, str] = field(default_factory=dict)
    content: bytes = b""
    truncated: bool = False

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (cut short, or nested too deep to parse)."""
        if self.truncated:
            raise ValueError("the answer was cut at MAX_BODY_BYTES")
        try:
            return json.loads(self.content)
        except RecursionError:
            raise ValueError("the answer is nested too deep") from None


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
        """Send one request and read its answer (up to MAX_BODY_BYTES); redirects are returned, never followed.

        `timeout` is (connect, total): the whole exchange, a slowly trickling body included, ends by the total.
        """
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
        deadline = time.monotonic() + timeout[1]
        try:
            response = self._manager.urlopen(
                method,
                url,
                body=body,
                headers=all_headers,
                timeout=urllib3.Timeout(connect=timeout[0], read=timeout[1]),
                retries=self._retries,
                redirect=False,
                preload_content=False,
            )
        except exceptions.MaxRetryError as exc:  # the retries ran out: what failed last decides
            raise _transport_error(exc.reason or exc) from None
        except exceptions.HTTPError as exc:
            raise _transport_error(exc) from None
        except ValueError as exc:  # e.g. a url urllib3 cannot parse
            raise TransportError(ERROR_INVALID, type(exc).__name__) from None
        return _read(response, deadline)

    def close(self) -> None:
        self._manager.clear()

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


MAX_TARGET_POOLS = 128  # hosts whose connections are kept; beyond that the least recently used pool closes


def for_targets(pool_size: int, *, user_agent: str) -> Transport:
    """Keep-alive connections sized to the workers; urllib3 retries only what is safe to repeat."""
    retry = Retry(
        total=1,
        connect=1,  # the request never left: safe for POST too
        read=1,  # GET only (allowed_methods): a lookup cut off mid-answer is repeated once
        status=0,  # status codes are classified by us, not retried blindly
        other=0,
        redirect=0,
        allowed_methods=frozenset({"GET"}),  # read errors on POST are ambiguous: our retry policy decides
        backoff_factor=0.2,
        raise_on_status=False,
        raise_on_redirect=False,
    )
    # One pool per target host, each as large as the workers: connections are kept, never dropped for lack of room.
    return Transport(pool_size=pool_size, max_hosts=MAX_TARGET_POOLS, retries=retry, headers={"User-Agent": user_agent})


def _read(response: urllib3.BaseHTTPResponse, deadline: float) -> Reply:
    """Read the body in chunks until it ends, MAX_BODY_BYTES are kept, or the deadline passes."""
    chunks: list[bytes] = []
    kept = 0
    truncated = False
    reuse = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(ERROR_TIMEOUT, "TotalTimeout", sent=True)
            _limit_next_read(response, left)
            chunk = response.read1(_CHUNK)
            if not chunk:
                reuse = True
                break
            chunks.append(chunk)
            kept += len(chunk)
            if kept > MAX_BODY_BYTES:
                truncated = True  # the rest is not read: the connection is closed instead of drained
                break
    except exceptions.HTTPError as exc:
        raise _transport_error(exc) from None
    finally:
        if reuse:
            response.release_conn()
        else:
            response.close()
    content = b"".join(chunks)[:MAX_BODY_BYTES]
    return Reply(response.status, response.headers, content, truncated)


def _limit_next_read(response: urllib3.BaseHTTPResponse, left: float) -> None:
    """Let the next socket read wait no longer than the request has left."""
    connection = getattr(response, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(min(left, sock.gettimeout() or left))


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
