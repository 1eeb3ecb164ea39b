"""An HTTP proxy on 127.0.0.1 in front of moto server that spoils chosen receipt handles in DeleteMessageBatch.

moto then answers as SQS does for a receipt handle that is no longer valid (expired, or from an earlier receive): that
entry is in `Failed` and its message stays in the queue. Everything else passes through unchanged.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

DELETE_BATCH = "AmazonSQS.DeleteMessageBatch"
RECEIVE = "AmazonSQS.ReceiveMessage"


class SpoilingProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.spoil_message_ids: set[str] = set()
        self.spoiled: list[str] = []  # message ids whose delete was spoiled
        self._handles: dict[str, str] = {}  # receipt handle -> message id, learnt from ReceiveMessage answers
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _spoil(self, target: str, body: bytes) -> bytes:
        if target != DELETE_BATCH:
            return body
        request = json.loads(body)
        for entry in request.get("Entries", []):
            message_id = self._handles.get(entry["ReceiptHandle"])
            if message_id in self.spoil_message_ids:
                self.spoiled.append(message_id)
                entry["ReceiptHandle"] = "expired-" + entry["ReceiptHandle"][::-1]
        return json.dumps(request).encode()

    def _learn(self, target: str, status: int, data: bytes) -> None:
        if target == RECEIVE and status == 200:
            for message in json.loads(data).get("Messages", []):
                self._handles[message["ReceiptHandle"]] = message["MessageId"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                target = self.headers.get("X-Amz-Target", "")
                body = proxy._spoil(target, body)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("content-length", "host")}
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                try:
                    upstream.request("POST", self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                proxy._learn(target, answer.status, data)
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    @contextmanager
    def running(self) -> Iterator[SpoilingProxy]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
