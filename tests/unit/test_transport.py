"""The HTTP transport against real servers on 127.0.0.1: TLS always verified, redirects never followed,
failures sorted into timeout / connection / invalid, and what the runtime's retry policy repeats."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataset_forwarder import runtime
from dataset_forwarder.transport import (
    ERROR_CONNECTION,
    ERROR_INVALID,
    ERROR_TIMEOUT,
    Transport,
    TransportError,
)
from devkit.airflow_api import FakeAirflow, Fault

TIMEOUT = (2.0, 2.0)


class Recorder(BaseHTTPRequestHandler):
    """Answers 200 with the request line, headers and body it got; `redirect` paths answer 302 elsewhere."""

    seen: list[str]

    def _answer(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.server.location)  # type: ignore[attr-defined]
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = json.dumps(
            {"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(length).decode()}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        return None


class Server:
    def __init__(self, tls: ssl.SSLContext | None = None, location: str = "") -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
        self.httpd.seen = []  # type: ignore[attr-defined]
        self.httpd.location = location  # type: ignore[attr-defined]
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def seen(self) -> list[str]:
        return self.httpd.seen  # type: ignore[attr-defined, no-any-return]

    def __enter__(self) -> Server:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a certificate for 127.0.0.1 that no CA signed."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context


@pytest.fixture
def transport() -> Iterator[Transport]:
    with runtime.http_transport(4) as http:
        yield http


def failure(transport: Transport, method: str, url: str, **kwargs: object) -> TransportError:
    with pytest.raises(TransportError) as caught:
        transport.request(method, url, timeout=TIMEOUT, **kwargs)  # type: ignore[arg-type]
    return caught.value


def test_a_certificate_no_ca_signed_is_refused_before_any_request(transport: Transport, tmp_path: Path) -> None:
    with Server(tls=self_signed_context(tmp_path)) as server:
        error = failure(transport, "POST", server.url + "/api/v2/assets/events", json_body={"asset_id": 1})

    assert error.kind == ERROR_CONNECTION
    assert error.detail == "SSLError"
    assert not error.sent
    assert server.seen == []  # the body (and any Authorization header) never left


def test_a_redirect_is_returned_and_not_followed(transport: Transport) -> None:
    with Server() as elsewhere, Server(location=elsewhere.url + "/steal") as server:
        reply = transport.request(
            "GET", server.url + "/redirect", headers={"Authorization": "Bearer secret-value"}, timeout=TIMEOUT
        )

    assert reply.status_code == 302
    assert reply.headers["location"] == elsewhere.url + "/steal"
    assert elsewhere.seen == []


def test_params_headers_and_json_body_reach_the_server(transport: Transport) -> None:
    with Server() as server:
        reply = transport.request(
            "POST",
            server.url + "/api/v2/assets/events",
            headers={"Authorization": "Bearer t"},
            params={"uri_pattern": "s3://lake/a b&c", "limit": "100"},
            json_body={"asset_id": 7, "extra": {"rows": 1, "name": "é"}},
            timeout=TIMEOUT,
        )

    echoed = reply.json()
    assert echoed["path"] == "/api/v2/assets/events?uri_pattern=s3%3A%2F%2Flake%2Fa+b%26c&limit=100"
    assert echoed["headers"]["Authorization"] == "Bearer t"
    assert echoed["headers"]["Content-Type"] == "application/json"
    assert echoed["headers"]["User-Agent"] == runtime.USER_AGENT
    assert json.loads(echoed["body"]) == {"asset_id": 7, "extra": {"rows": 1, "name": "é"}}


def test_a_body_that_is_not_json_is_invalid_and_never_sent(transport: Transport) -> None:
    with Server() as server:
        error = failure(transport, "POST", server.url + "/x", json_body={"rows": float("nan")})

    assert error.kind == ERROR_INVALID
    assert server.seen == []


def test_a_refused_connection_is_a_connection_error_not_a_timeout(transport: Transport) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once the socket closes

    error = failure(transport, "GET", f"http://127.0.0.1:{port}/api/v2/version")

    assert error.kind == ERROR_CONNECTION
    assert not error.sent  # nothing left: a POST refused like this cannot have landed


def test_a_slow_answer_is_a_timeout() -> None:
    with FakeAirflow("3") as fake, Transport(pool_size=1, max_hosts=1) as http:
        fake.inject(Fault(delay_s=1.0, method="GET"))
        with pytest.raises(TransportError) as caught:
            http.request("GET", fake.url + "/api/v2/version", timeout=(1.0, 0.2))

    assert caught.value.kind == ERROR_TIMEOUT
    assert caught.value.sent  # the request went out; only its answer is missing


def test_an_unparsable_url_is_invalid(transport: Transport) -> None:
    assert failure(transport, "GET", "http://[::1/x").kind == ERROR_INVALID


def test_the_runtime_retry_policy_repeats_a_reset_get_once_and_never_a_post(transport: Transport) -> None:
    with FakeAirflow("3", datasets=["s3://a/b"]) as fake:
        fake.inject(Fault(reset=True, method="GET", path_prefix="/api/v2/version"))
        fake.inject(Fault(reset=True, method="POST"))

        assert transport.request("GET", fake.url + "/api/v2/version", timeout=TIMEOUT).status_code == 200
        post_error = failure(transport, "POST", fake.url + "/api/v2/assets/events", json_body={"asset_id": 1})

        assert fake.count("GET", "/api/v2/version") == 2
        assert fake.count("POST", "/api/v2/assets/events") == 1
    assert post_error.kind == ERROR_CONNECTION
    assert post_error.sent
