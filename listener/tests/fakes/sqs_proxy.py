"""An HTTP proxy on 127.0.0.1 in front of moto's SQS that lets a test decide the fate of every request.

``Gate.PASS`` forwards a request and returns SQS's answer. ``Gate.HOLD`` never forwards it: the
send is stuck before SQS, and the proxy keeps the connection busy with a status line that never
ends, so the client's socket timeout never fires and only the listener's own budget (or a kill)
ends the send. ``Gate.SWALLOW`` forwards it, so SQS has the message, and then answers like
``HOLD``: the sender never learns that it landed. ``Gate.WAIT`` holds a request before SQS until
``release`` is called, then passes it on (a send kept in flight for as long as a test needs). The
proxy can also start closed (bound, not listening), so connections are refused until ``open``.
"""

from __future__ import annotations

import enum
import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

DRIBBLE_EVERY_S = 0.2


class Gate(enum.Enum):
    PASS = "pass"
    HOLD = "hold"
    SWALLOW = "swallow"
    WAIT = "wait"


@dataclass(frozen=True)
class Request:
    event_ids: tuple[str, ...]  # the envelopes a SendMessage or SendMessageBatch carried
    gate: Gate


class SqsProxy:
    def __init__(self, upstream: str, *, listening: bool = True) -> None:
        self.upstream = urlsplit(upstream)
        self.requests: list[Request] = []
        self._gate = Gate.PASS
        self._passes_left = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(), bind_and_activate=False)
        self._server.block_on_close = False  # a killed sender's connection must not keep close() waiting
        self._server.server_bind()  # the port is ours; until it listens, connections are refused
        self._thread: threading.Thread | None = None
        if listening:
            self.open()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def open(self) -> None:
        """Start accepting connections (the queue endpoint comes up)."""
        self._server.server_activate()
        self._thread = threading.Thread(target=self._server.serve_forever, name="sqs-proxy", daemon=True)
        self._thread.start()

    def set_gate(self, gate: Gate, *, after: int = 0) -> None:
        """Pass the next ``after`` requests, then treat every later one with ``gate``."""
        with self._lock:
            self._gate, self._passes_left = gate, after

    def release(self) -> None:
        """Let the requests held at ``Gate.WAIT`` (and any later ones) pass on to SQS."""
        self._released.set()

    def ids(self, gate: Gate) -> list[str]:
        """Event ids in the requests that met ``gate`` so far (SWALLOW: only once SQS has answered)."""
        with self._lock:
            return [event_id for r in self.requests if r.gate is gate for event_id in r.event_ids]

    def count(self, gate: Gate) -> int:
        """Requests that met ``gate`` so far (a batch counts once)."""
        with self._lock:
            return sum(1 for r in self.requests if r.gate is gate)

    def close(self) -> None:
        self._stopping.set()  # held requests end without an answer; they are never forwarded
        if self._thread is not None:
            self._server.shutdown()
        self._server.server_close()

    def _decide(self) -> Gate:
        with self._lock:
            if self._passes_left > 0:
                self._passes_left -= 1
                return Gate.PASS
            return self._gate

    def _record(self, event_ids: tuple[str, ...], gate: Gate) -> None:
        with self._lock:
            self.requests.append(Request(event_ids, gate))

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(self.upstream.netloc, timeout=10)
        try:
            upstream.request(method, path, body=body, headers=headers)
            answer = upstream.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        finally:
            upstream.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                event_ids = _event_ids(body)
                gate = proxy._decide()
                if gate is Gate.HOLD:
                    proxy._record(event_ids, gate)
                    self._stall()
                    return
                if gate is Gate.WAIT:
                    proxy._record(event_ids, gate)  # seen (and in flight) from now on
                    while not proxy._released.wait(0.01):
                        if proxy._stopping.is_set():
                            self.close_connection = True
                            return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                status, answer_headers, answer = proxy._forward(self.command, self.path, headers, body)
                if gate is not Gate.WAIT:
                    proxy._record(event_ids, gate)
                if gate is Gate.SWALLOW:
                    self._stall()
                    return
                self.send_response_only(status)
                for name, value in answer_headers:
                    if name.lower() not in {"connection", "transfer-encoding", "content-length", "date", "server"}:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def _stall(self) -> None:
                """Answer with a status line that never ends, until the client goes away or the proxy closes."""
                self.close_connection = True
                try:
                    self.wfile.write(b"HTTP/1.1 200 ")
                    while not proxy._stopping.wait(DRIBBLE_EVERY_S):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:
                    pass  # the sender gave up or was killed

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test reads ``requests`` instead."""

        return Handler


def _event_ids(body: bytes) -> tuple[str, ...]:
    """The envelope ids inside a SendMessage or SendMessageBatch request (JSON or query protocol)."""
    try:
        text = body.decode("utf-8")
        if text.startswith("{"):
            request = json.loads(text)
            bodies = [request.get("MessageBody")] + [e.get("MessageBody") for e in request.get("Entries") or ()]
        else:
            fields = parse_qs(text)
            bodies = [value for key, values in fields.items() if key.endswith("MessageBody") for value in values]
        return tuple(str(json.loads(message)["id"]) for message in bodies if message)
    except (ValueError, KeyError, TypeError, AttributeError):
        return ()
