"""A fake Airflow REST API server for the forwarder's tests.

`FakeAirflow` runs a real HTTP/1.1 (keep-alive) server on 127.0.0.1 that imitates the parts of the
Airflow 2.11 (`/api/v1`) and Airflow 3.3 (`/api/v2`, `/auth/token`) REST APIs a forwarder uses: the
version probe, asset/dataset look-up (with Airflow's case-insensitive *substring* `uri_pattern`),
asset/dataset event creation, DAG look-up and DAG-run creation (`add_dag`, `dag_runs`), and each
version's auth rules and status codes. Tests can inject faults (a status with Retry-After, a delay,
a TCP reset; hostile answers: another body or headers, a body trickled byte by byte, a huge body streamed)
and read back every accepted event, every created DAG run and every request the server saw. Standard
library only.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["AIRFLOW2_VERSION", "AIRFLOW3_VERSION", "CreatedDagRun", "FakeAirflow", "Fault", "ReceivedEvent"]

AIRFLOW2_VERSION = "2.11.2"
AIRFLOW3_VERSION = "3.3.2"
AUTH_MODES = ("none", "bearer", "basic", "airflow-token")
V3_DEFAULT_LIMIT = 50  # Airflow 3 default page size of list endpoints
V2_DEFAULT_LIMIT = 100  # Airflow 2 [api] fallback_page_limit default
MAXIMUM_PAGE_LIMIT = 100  # [api] maximum_page_limit default: larger `limit` values are capped
_V2_ERRORS_URL = (
    f"https://airflow.apache.org/docs/apache-airflow/{AIRFLOW2_VERSION}/stable-rest-api-ref.html#section/Errors/"
)
_V2_HTML_404 = (
    b"<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    b"<p>The requested URL was not found on the server.</p>\n"
)


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, consumed by the first request it matches."""

    status: int | None = None  # respond with this status (JSON {"detail": "injected"}) instead of handling
    retry_after: str | None = None  # Retry-After header value sent with `status`
    delay_s: float = 0.0  # sleep before handling (then respond normally, or with `status` if set)
    reset: bool = False  # abort the TCP connection with RST (SO_LINGER 0) without responding
    method: str | None = None  # only match requests with this method (e.g. "POST"); None = any
    path_prefix: str | None = None  # only match requests whose path (with query) starts with this
    body: str | None = None  # the body sent with `status` instead of {"detail": "injected"}
    # Hostile answers (additive): `raw_body` replaces the answer's body (with `status`, or after normal handling: the
    # request then takes effect, e.g. a POST lands, and only its answer is hostile); `headers` are added to it.
    raw_body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    trickle_s: float = 0.0  # write the body one byte every `trickle_s` seconds
    body_bytes: int = 0  # a body of this many bytes, streamed from one small block (never held in memory)

    @property
    def shapes_answer(self) -> bool:
        return self.raw_body is not None or bool(self.headers) or self.trickle_s > 0 or self.body_bytes > 0

    def matches(self, method: str, target: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path_prefix is None or target.startswith(self.path_prefix)


@dataclass(frozen=True)
class ReceivedEvent:
    """An asset (Airflow 3) or dataset (Airflow 2) event the fake accepted."""

    uri: str
    extra: dict[str, Any]
    asset_id: int | None  # Airflow 3 only
    received_at: float  # time.monotonic()
    authorization: str | None  # raw Authorization header value the request carried
    partition_key: str | None = None  # Airflow 3 only, when the request sent one
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))  # the event's `timestamp`


@dataclass
class _Asset:
    id: int
    uri: str
    scheduled_dags: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class _Request:
    method: str
    target: str  # path with query, as sent
    path: str  # path without query, still percent-encoded
    query: dict[str, list[str]]
    authorization: str | None
    body: bytes


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


_Route = dict[str, tuple[bool, Callable[[_Request], _Response]]]  # method -> (needs auth, handler)


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(payload).encode(), headers=headers or {})


def _problem(status: int, title: str, detail: str | None, error: str) -> _Response:
    """An Airflow 2 (connexion) error: RFC 7807 problem+json."""
    payload = {"detail": detail, "status": status, "title": title, "type": _V2_ERRORS_URL + error}
    return _Response(status, json.dumps(payload).encode(), content_type="application/problem+json")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _timestamp(when: datetime, *, zulu: bool) -> str:
    text = when.isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z") if zulu else text


_NO_JSON = object()


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _NO_JSON


# Airflow 3 (FastAPI) validates request bodies with pydantic: a 422 whose `detail` lists one error per problem.
_PYDANTIC_MESSAGES = {
    "dict_type": "Input should be a valid dictionary",
    "extra_forbidden": "Extra inputs are not permitted",
    "int_type": "Input should be a valid integer",
    "json_invalid": "JSON decode error",
    "missing": "Field required",
    "model_attributes_type": "Input should be a valid dictionary or object to extract fields from",
    "string_type": "Input should be a valid string",
    "timezone_aware": "Input should have timezone info",
}


def _body_error(kind: str, field: str | None, value: Any) -> dict[str, Any]:
    """One pydantic error about the request body (`field` None) or one of its fields, as Airflow 3 lists it."""
    loc = ["body"] if field is None else ["body", field]
    return {"type": kind, "loc": loc, "msg": _PYDANTIC_MESSAGES[kind], "input": value}


def _extra_fields_errors(data: dict[str, Any], allowed: tuple[str, ...]) -> list[dict[str, Any]]:
    """The errors of a model with extra="forbid": one per field it does not declare."""
    return [_body_error("extra_forbidden", key, data[key]) for key in data if key not in allowed]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else head and body, written apart, meet the client's delayed ACK
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.fake._connection_opened(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._connection_closed(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _serve(self) -> None:
        fake = self.server.fake
        method, target = self.command, self.path
        try:
            body = self._read_body()
        except ValueError:
            self.close_connection = True
            response = _json(400, {"detail": "bad request framing"})
            fake._record_request(method, target, response.status)
            self._write(response)
            return
        fake._record_authorization(self.headers.get("Authorization"))
        fault = fake._take_fault(method, target)
        if fault is not None and fault.delay_s > 0:
            time.sleep(fault.delay_s)
        if fault is not None and fault.reset:
            fake._record_request(method, target, 0)
            self._reset()
            return
        if fault is not None and fault.status is not None and not fault.shapes_answer:
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            payload = json.loads(fault.body) if fault.body is not None else {"detail": "injected"}
            response = _json(fault.status, payload, headers)
        elif fault is not None and fault.status is not None:
            response = _Response(fault.status, b"")
        else:
            split = urlsplit(target)
            request = _Request(
                method=method,
                target=target,
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                authorization=self.headers.get("Authorization"),
                body=body,
            )
            try:
                response = fake._handle(request)
            except Exception as exc:
                response = _json(500, {"detail": f"fake airflow error: {exc!r}"})
        # Record before answering, so a client holding the response always finds it recorded.
        fake._record_request(method, target, response.status)
        if fault is not None and fault.shapes_answer:
            self._write_hostile(response, fault)
            return
        self._write(response)

    def _write_hostile(self, response: _Response, fault: Fault) -> None:
        """Answer as `fault` shapes it: another body or headers, a trickle, or a huge body streamed."""
        body = fault.raw_body if fault.raw_body is not None else response.body
        length = fault.body_bytes or len(body)
        headers = {**response.headers, **dict(fault.headers)}
        if fault.retry_after is not None:
            headers["Retry-After"] = fault.retry_after
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Connection", "close")  # the client may stop reading: never reuse this connection
            self.end_headers()
            self.wfile.flush()
            if fault.body_bytes:
                block = (body or b" ") * max(1, 65536 // max(1, len(body or b" ")))
                sent = 0
                while sent < length:
                    piece = block[: length - sent]
                    self.wfile.write(piece)
                    sent += len(piece)
                    self.server.fake._streamed(len(piece))
            elif fault.trickle_s > 0:
                for index in range(len(body)):
                    self.wfile.write(body[index : index + 1])
                    self.wfile.flush()
                    self.server.fake._streamed(1)
                    time.sleep(fault.trickle_s)
            else:
                self.wfile.write(body)
        except OSError:  # the client went away: what a bounded client does
            pass
        self.close_connection = True

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        size = int(length)
        if size < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self.rfile.readline(65537).split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # skip trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(65537)

    def _write(self, response: _Response) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)
        except OSError:  # the client went away (e.g. it timed out during a delay fault)
            self.close_connection = True

    def _reset(self) -> None:
        """Drop the connection with a TCP RST instead of answering."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # releases the makefile() reference so close() really closes the fd
            self.connection.close()
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, fake: FakeAirflow, port: int = 0) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse DNS look-up that can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]


# --------------------------------------------------------------------------------------------- DAGs and DAG runs
# What the trigger_dag action uses: GET /api/vN/dags/{dag_id} and POST /api/vN/dags/{dag_id}/dagRuns, as Airflow
# 2.11 (connexion + marshmallow, problem+json errors) and 3.3 (FastAPI + pydantic) answer them.

ALLOWED_RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.~:+-]+$")  # [scheduler] allowed_run_id_pattern default
_V3_TRIGGER_FIELDS = (
    "dag_run_id",
    "data_interval_start",
    "data_interval_end",
    "logical_date",
    "run_after",
    "conf",
    "note",
    "partition_key",
)  # TriggerDAGRunPostBody (extra="forbid")
_V2_TRIGGER_FIELDS = (
    "dag_run_id",
    "logical_date",
    "execution_date",
    "conf",
    "note",
    "data_interval_start",
    "data_interval_end",
)  # DAGRunSchema's loadable fields (unknown fields rejected)


@dataclass
class _Dag:
    dag_id: str
    paused: bool
    partitioned: bool


@dataclass(frozen=True)
class CreatedDagRun:
    """A DAG run the fake created (through the REST API, or seeded)."""

    dag_id: str
    run_id: str
    conf: dict[str, Any]
    logical_date: str | None  # as the answer shows it (Airflow 3: null when the request sent null)
    body: Any  # the request's JSON body as sent (None when seeded)
    authorization: str | None
    partition_key: str | None = None
    received_at: float = field(default_factory=time.monotonic)


class _DagRuns:
    """The DAG part of FakeAirflow (a mixin: its state lives in the same lock as the rest)."""

    version: str
    username: str
    _cond: threading.Condition

    def _init_dags(self) -> None:
        self._dags: dict[str, _Dag] = {}
        self._dag_runs: list[CreatedDagRun] = []

    # -- set-up and observation

    def add_dag(self, dag_id: str, *, paused: bool = False, partitioned: bool = False) -> None:
        """Declare a DAG (active, parsed without import errors); re-adding one updates it."""
        with self._cond:
            self._dags[dag_id] = _Dag(dag_id, paused, partitioned)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        with self._cond:
            self._dags[dag_id].paused = paused

    def remove_dag(self, dag_id: str) -> None:
        with self._cond:
            self._dags.pop(dag_id, None)

    def seed_dag_run(self, dag_id: str, run_id: str, conf: dict[str, Any] | None = None) -> None:
        """A run that exists already (as if triggered earlier), without HTTP."""
        with self._cond:
            self._dag_runs.append(CreatedDagRun(dag_id, run_id, dict(conf or {}), None, None, None))
            self._cond.notify_all()

    @property
    def dag_runs(self) -> list[CreatedDagRun]:
        with self._cond:
            return list(self._dag_runs)

    def runs_for(self, dag_id: str) -> list[CreatedDagRun]:
        with self._cond:
            return [run for run in self._dag_runs if run.dag_id == dag_id]

    def wait_for_dag_runs(self, n: int, timeout_s: float = 10.0) -> list[CreatedDagRun]:
        """Wait until at least `n` runs exist and return them all; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._dag_runs) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [(run.dag_id, run.run_id) for run in self._dag_runs]
                    raise AssertionError(f"expected at least {n} DAG run(s) within {timeout_s}s, got {got}")
                self._cond.wait(remaining)
            return list(self._dag_runs)

    # -- routing: a route for /api/vN/dags/{dag_id}[/dagRuns], or None

    def _dag_route(self, path: str) -> _Route | None:
        prefix = "/api/v2/dags/" if self.version == "3" else "/api/v1/dags/"
        if not path.startswith(prefix):
            return None
        rest = path[len(prefix) :].split("/")
        if len(rest) == 1 and rest[0]:
            return {"GET": (True, self._get_dag)}
        if len(rest) == 2 and rest[0] and rest[1] == "dagRuns":
            return {"POST": (True, self._post_dag_run)}
        return None

    @staticmethod
    def _dag_id_of(request: _Request) -> str:
        return unquote(request.path.split("/")[4])

    def _dag(self, dag_id: str) -> _Dag | None:
        with self._cond:
            dag = self._dags.get(dag_id)
            return None if dag is None else _Dag(dag.dag_id, dag.paused, dag.partitioned)

    # -- GET /dags/{dag_id}

    def _get_dag(self, request: _Request) -> _Response:
        dag_id = self._dag_id_of(request)
        dag = self._dag(dag_id)
        if self.version == "3":
            if dag is None:
                return _json(404, {"detail": f"The Dag with ID: `{dag_id}` was not found"})
            return _json(
                200,
                {
                    "dag_id": dag.dag_id,
                    "dag_display_name": dag.dag_id,
                    "is_paused": dag.paused,
                    "is_stale": False,
                    "has_import_errors": False,
                    "timetable_partitioned": dag.partitioned,
                    "fileloc": f"/dags/{dag.dag_id}.py",
                    "owners": ["airflow"],
                    "tags": [],
                },
            )
        if dag is None:
            return _problem(404, "DAG not found", f"The DAG with dag_id: {dag_id} was not found", "NotFound")
        return _json(
            200,
            {
                "dag_id": dag.dag_id,
                "dag_display_name": dag.dag_id,
                "is_paused": dag.paused,
                "is_active": True,
                "is_subdag": False,
                "has_import_errors": False,
                "fileloc": f"/dags/{dag.dag_id}.py",
                "owners": ["airflow"],
                "tags": [],
            },
        )

    # -- POST /dags/{dag_id}/dagRuns

    def _post_dag_run(self, request: _Request) -> _Response:
        return self._v3_trigger(request) if self.version == "3" else self._v2_trigger(request)

    def _create_run(self, run: CreatedDagRun) -> bool:
        """Record the run unless this DAG has one with its run id (the unique constraint)."""
        with self._cond:
            if any(r.dag_id == run.dag_id and r.run_id == run.run_id for r in self._dag_runs):
                return False
            self._dag_runs.append(run)
            self._cond.notify_all()
            return True

    def _v3_trigger(self, request: _Request) -> _Response:
        data = _parse_json(request.body)
        if data is _NO_JSON:
            return _json(422, {"detail": [_body_error("json_invalid", None, {})]})
        errors = self._v3_trigger_errors(data)
        if errors:
            return _json(422, {"detail": errors})
        dag_id = self._dag_id_of(request)
        dag = self._dag(dag_id)
        if dag is None:
            return _json(404, {"detail": f"Dag with dag_id: '{dag_id}' not found"})
        now = datetime.now(UTC)
        partition_key = data.get("partition_key")
        if partition_key is not None and not dag.partitioned:
            detail = f"Dag '{dag_id}' is not a partitioned Dag and does not accept a partition_key."
            return _json(400, {"detail": detail})
        logical_date = data.get("logical_date")
        run_id = data.get("dag_run_id") or f"manual__{_timestamp(now, zulu=False)}"
        problem = _run_id_problem(run_id)
        if problem:
            return _json(400, {"detail": problem})
        conf = data.get("conf") or {}
        run = CreatedDagRun(dag_id, run_id, dict(conf), logical_date, data, request.authorization, partition_key)
        if not self._create_run(run):
            return _json(
                409,
                {
                    "detail": {
                        "reason": "Unique constraint violation",
                        "statement": "hidden",
                        "orig_error": "hidden",
                        "message": "Serious error when handling your request. Check logs for more details - "
                        "you will find it in api server when you look for ID fake0123",
                    }
                },
            )
        stamp = _timestamp(now, zulu=True)
        return _json(
            200,
            {
                "dag_run_id": run_id,
                "dag_id": dag_id,
                "logical_date": logical_date,
                "queued_at": stamp,
                "start_date": None,
                "end_date": None,
                "duration": None,
                "data_interval_start": logical_date,
                "data_interval_end": logical_date,
                "run_after": stamp,
                "last_scheduling_decision": None,
                "run_type": "manual",
                "state": "queued",
                "triggered_by": "rest_api",
                "triggering_user_name": self.username,
                "conf": conf,
                "note": data.get("note"),
                "dag_versions": [],
                "bundle_version": None,
                "dag_display_name": dag_id,
                "partition_key": partition_key,
                "partition_date": None,
            },
        )

    @staticmethod
    def _v3_trigger_errors(data: Any) -> list[dict[str, Any]]:
        """Pydantic validation of TriggerDAGRunPostBody: logical_date required (nullable), extra fields forbidden."""
        if not isinstance(data, dict):
            return [_body_error("model_attributes_type", None, data)]
        errors: list[dict[str, Any]] = []
        if "logical_date" not in data:
            errors.append(_body_error("missing", "logical_date", data))
        elif data["logical_date"] is not None and not _aware_timestamp(data["logical_date"]):
            errors.append(_body_error("timezone_aware", "logical_date", data["logical_date"]))
        for key in ("dag_run_id", "note", "partition_key"):
            if data.get(key) is not None and not isinstance(data[key], str):
                errors.append(_body_error("string_type", key, data[key]))
        if data.get("conf") is not None and not isinstance(data["conf"], dict):
            errors.append(_body_error("dict_type", "conf", data["conf"]))
        return errors + _extra_fields_errors(data, _V3_TRIGGER_FIELDS)

    def _v2_trigger(self, request: _Request) -> _Response:
        dag_id = self._dag_id_of(request)
        dag = self._dag(dag_id)
        if dag is None:  # 2.11 looks the DAG up before it reads the body
            return _problem(404, "DAG not found", f"DAG with dag_id: '{dag_id}' not found", "NotFound")
        data = _parse_json(request.body)
        if data is _NO_JSON:
            return _problem(400, "Bad Request", "Request body is not valid JSON", "BadRequest")
        if not isinstance(data, dict):
            return _problem(400, "Bad Request", "{'_schema': ['Invalid input type.']}", "BadRequest")
        unknown = {key: ["Unknown field."] for key in data if key not in _V2_TRIGGER_FIELDS}
        if unknown:
            return _problem(400, "Bad Request", str(unknown), "BadRequest")
        now = datetime.now(UTC)
        logical_date = data.get("logical_date") or data.get("execution_date") or _timestamp(now, zulu=False)
        run_id = data.get("dag_run_id")
        if run_id is None:
            run_id = f"manual__{logical_date}"
        if not isinstance(run_id, str):
            return _problem(400, "Bad Request", "{'dag_run_id': ['Not a valid string.']}", "BadRequest")
        problem = _run_id_problem(run_id)
        if problem:
            return _problem(400, "Bad Request", problem, "BadRequest")
        raw_conf = data.get("conf")
        conf = json.loads(raw_conf) if isinstance(raw_conf, str) else (raw_conf or {})
        run = CreatedDagRun(dag_id, run_id, dict(conf), logical_date, data, request.authorization)
        if not self._create_run(run):
            detail = f"DAGRun with DAG ID: '{dag_id}' and DAGRun ID: '{run_id}' already exists"
            return _problem(409, "Conflict", detail, "AlreadyExists")
        return _json(
            200,
            {
                "conf": conf,
                "dag_id": dag_id,
                "dag_run_id": run_id,
                "data_interval_end": logical_date,
                "data_interval_start": logical_date,
                "end_date": None,
                "execution_date": logical_date,
                "external_trigger": True,
                "last_scheduling_decision": None,
                "logical_date": logical_date,
                "note": data.get("note"),
                "run_type": "manual",
                "start_date": None,
                "state": "queued",
            },
        )


def _aware_timestamp(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return False


def _run_id_problem(run_id: str) -> str | None:
    """DagRun.validate_run_id: the run id must match [scheduler] allowed_run_id_pattern."""
    if ALLOWED_RUN_ID_PATTERN.match(run_id) and ".." not in run_id:
        return None
    return f"The run_id provided '{run_id}' does not match regex pattern '{ALLOWED_RUN_ID_PATTERN.pattern}'"


class FakeAirflow(_DagRuns):
    """A fake Airflow 2.11 (`version="2"`) or 3.3 (`version="3"`) REST API on 127.0.0.1.

    Use as a context manager (`with FakeAirflow(...) as airflow:`) or call start()/stop().
    """

    def __init__(
        self,
        version: str = "3",
        *,
        datasets: Iterable[str] = (),
        auth: str = "none",
        token: str = "static-token",
        username: str = "admin",
        password: str = "admin-pw",
        jwt_secret: str = "fake-jwt-secret",
        jwt_ttl_s: int = 86400,
        release: str | None = None,
    ) -> None:
        """`release`: the version GET /version reports (default 2.11.2 / 3.3.2); a 3.x before 3.2 forbids
        `partition_key` in asset events, as Airflow 3.0 and 3.1 do."""
        if version not in ("2", "3"):
            raise ValueError(f"version must be '2' or '3', not {version!r}")
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {AUTH_MODES}, not {auth!r}")
        if version == "2" and auth == "airflow-token":
            raise ValueError("auth='airflow-token' (JWT from /auth/token) exists on Airflow 3 only")
        self.version = version
        self.release = release or (AIRFLOW3_VERSION if version == "3" else AIRFLOW2_VERSION)
        self.auth = auth
        self.username = username
        self.jwt_ttl_s = jwt_ttl_s
        self._token = token
        self._password = password
        self._jwt_secret = jwt_secret
        self._revocations = 0
        self._cond = threading.Condition()
        self._assets: dict[str, _Asset] = {}
        self._next_asset_id = 1
        self._next_event_id = 1
        self._events: list[ReceivedEvent] = []
        self._numbered_by_uri: dict[str, list[tuple[int, ReceivedEvent]]] = {}  # (list id, event) per dataset
        self._requests: list[tuple[str, str, int]] = []
        self._init_dags()
        self._faults: list[Fault] = []
        self._connections = 0
        self._bytes_streamed = 0
        self._authorizations: list[str | None] = []
        self._open_sockets: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None  # kept after stop(): the url then refuses connections
        for uri in datasets:
            self.add_dataset(uri)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("FakeAirflow is already running")
        server: _Server | None = None
        if self._port is not None:  # a restart: come back on the same url when the port is still free
            try:
                server = _Server(self, self._port)
            except OSError:
                server = None
        self._server = server or _Server(self)
        self._port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-airflow-{self.version}-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections; `url` then refuses connections.

        Safe to call twice. start() may follow: it serves again on the same port when that is free.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        with self._cond:
            sockets = list(self._open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeAirflow has not been started: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------- set-up and control

    def add_dataset(self, uri: str, scheduled_dags: Sequence[str] = ("consumer",)) -> int:
        """Register an asset/dataset and return its id (1, 2, ...). Re-adding a uri keeps its id."""
        with self._cond:
            asset = self._assets.get(uri)
            if asset is not None:
                asset.scheduled_dags = tuple(scheduled_dags)
                return asset.id
            asset = _Asset(self._next_asset_id, uri, tuple(scheduled_dags), datetime.now(UTC))
            self._next_asset_id += 1
            self._assets[uri] = asset
            return asset.id

    def seed_events(self, uri: str, lineage_ids: Sequence[str], *, created_at: datetime | None = None) -> None:
        """Record events as if posted earlier (oldest first), each carrying one lineage id, without HTTP."""
        with self._cond:
            asset = self._assets[uri]
        for lineage_id in lineage_ids:
            self._record_event(
                ReceivedEvent(
                    uri=uri,
                    extra={"dataset_forwarder": {"id": lineage_id}},
                    asset_id=asset.id if self.version == "3" else None,
                    received_at=time.monotonic(),
                    authorization=None,
                    created_at=created_at or datetime.now(UTC),
                )
            )

    def inject(self, *faults: Fault, times: int = 1) -> None:
        """Queue faults: inject(a, b, times=2) queues a, a, b, b; a request takes the first match."""
        with self._cond:
            for fault in faults:
                self._faults.extend([fault] * times)

    def clear_faults(self) -> None:
        with self._cond:
            self._faults.clear()

    def faults_left(self) -> int:
        """Injected faults no request has taken yet."""
        with self._cond:
            return len(self._faults)

    def set_token(self, token: str) -> None:
        with self._cond:
            self._token = token

    def set_password(self, password: str) -> None:
        with self._cond:
            self._password = password

    def mint_jwt(self, *, exp: float | None = None, secret: str | None = None) -> str:
        """A token as /auth/token would issue; `exp` is an absolute epoch time (default iat + ttl)."""
        iat = int(time.time())
        expires: float = iat + self.jwt_ttl_s if exp is None else exp
        if float(expires).is_integer():
            expires = int(expires)
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
        claims = {"sub": self.username, "iat": iat, "exp": expires}
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}"
        key = self._current_secret() if secret is None else secret
        return f"{signing_input}.{self._sign(signing_input, key)}"

    def revoke_jwts(self) -> None:
        """Rotate the signing secret: every JWT issued so far now fails its signature check (403)."""
        with self._cond:
            self._revocations += 1
            self._jwt_secret = hashlib.sha256(f"{self._jwt_secret}/{self._revocations}".encode()).hexdigest()

    # ----------------------------------------------------------------- observation

    @property
    def events(self) -> list[ReceivedEvent]:
        with self._cond:
            return list(self._events)

    def events_for(self, uri: str) -> list[ReceivedEvent]:
        with self._cond:
            return [event for event in self._events if event.uri == uri]

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path_with_query, status) of every request; a reset is recorded with status 0."""
        with self._cond:
            return list(self._requests)

    def count(self, method: str, path_prefix: str) -> int:
        with self._cond:
            return sum(
                1
                for req_method, target, _ in self._requests
                if req_method == method.upper() and target.startswith(path_prefix)
            )

    @property
    def connections(self) -> int:
        """How many TCP connections the server has accepted so far."""
        with self._cond:
            return self._connections

    def wait_for_events(self, n: int, timeout_s: float = 10.0) -> list[ReceivedEvent]:
        """Wait until at least `n` events were accepted and return them all; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while len(self._events) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    got = [event.uri for event in self._events]
                    recent = self._requests[-10:]
                    raise AssertionError(
                        f"FakeAirflow(version={self.version}): expected at least {n} event(s) within "
                        f"{timeout_s}s, got {len(got)}: {got}; last requests (method, path, status): {recent}"
                    )
                self._cond.wait(remaining)
            return list(self._events)

    # ----------------------------------------------------------------- server-side internals

    def _connection_opened(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections += 1
            self._open_sockets.add(sock)

    def _connection_closed(self, sock: socket.socket) -> None:
        with self._cond:
            self._open_sockets.discard(sock)

    @property
    def bytes_streamed(self) -> int:
        """Body bytes written by `body_bytes` and `trickle_s` faults (what a client made the fake send)."""
        with self._cond:
            return self._bytes_streamed

    @property
    def authorizations(self) -> list[str | None]:
        """The Authorization header of every request the fake handled (faulted ones included), in order."""
        with self._cond:
            return list(self._authorizations)

    def _streamed(self, count: int) -> None:
        with self._cond:
            self._bytes_streamed += count

    def _record_authorization(self, value: str | None) -> None:
        with self._cond:
            self._authorizations.append(value)

    def _record_request(self, method: str, target: str, status: int) -> None:
        with self._cond:
            self._requests.append((method, target, status))

    def _take_fault(self, method: str, target: str) -> Fault | None:
        with self._cond:
            for index, fault in enumerate(self._faults):
                if fault.matches(method, target):
                    return self._faults.pop(index)
        return None

    def _current_secret(self) -> str:
        with self._cond:
            return self._jwt_secret

    @staticmethod
    def _sign(signing_input: str, secret: str) -> str:
        return _b64url(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())

    def _record_event(self, event: ReceivedEvent) -> int:
        with self._cond:
            event_id = self._next_event_id
            self._next_event_id += 1
            self._events.append(event)
            self._numbered_by_uri.setdefault(event.uri, []).append((len(self._events), event))
            self._cond.notify_all()
            return event_id

    def _handle(self, request: _Request) -> _Response:
        return self._handle_v3(request) if self.version == "3" else self._handle_v2(request)

    @staticmethod
    def _dispatch(
        request: _Request,
        route: _Route | None,
        authorize: Callable[[_Request], _Response | None],
        not_found: _Response,
        not_allowed: _Response,
    ) -> _Response:
        if route is None:
            return not_found
        entry = route.get(request.method)
        if entry is None:
            return not_allowed
        needs_auth, handler = entry
        if needs_auth:
            denial = authorize(request)
            if denial is not None:
                return denial
        return handler(request)

    def _credentials_ok(self, authorization: str | None) -> bool:
        """Static bearer token or HTTP basic credentials, per the auth mode ("bearer" or "basic")."""
        if authorization is None:
            return False
        scheme, _, value = authorization.strip().partition(" ")
        with self._cond:
            token, password = self._token, self._password
        if self.auth == "bearer":
            return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return False
        user, sep, given = decoded.partition(":")
        return bool(sep) and user == self.username and hmac.compare_digest(given, password)

    # ----------------------------------------------------------------- Airflow 3

    def _handle_v3(self, request: _Request) -> _Response:
        path = request.path
        routes: dict[str, _Route] = {
            "/auth/token": {"POST": (False, self._v3_token)},
            "/api/v2/version": {"GET": (False, self._version_response)},
            "/api/v2/monitor/health": {"GET": (False, self._health_response)},
            "/api/v2/assets": {"GET": (True, self._v3_list_assets)},
            "/api/v2/assets/events": {"POST": (True, self._v3_create_event), "GET": (True, self._v3_list_events)},
        }
        route = routes.get(path) or self._dag_route(path)
        asset_prefix = "/api/v2/assets/"
        if route is None and path.startswith(asset_prefix) and path[len(asset_prefix) :].isdigit():
            route = {"GET": (True, self._v3_get_asset)}
        return self._dispatch(
            request,
            route,
            self._v3_authorize,
            _json(404, {"detail": "Not Found"}),
            _json(405, {"detail": "Method Not Allowed"}),
        )

    def _v3_authorize(self, request: _Request) -> _Response | None:
        if self.auth == "none":
            return None
        header = request.authorization
        if self.auth == "basic":
            if self._credentials_ok(header):
                return None
            return _json(401, {"detail": "Not authenticated"}, {"WWW-Authenticate": "Basic"})
        scheme, _, value = (header or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return _json(401, {"detail": "Not authenticated"}, {"WWW-Authenticate": "Bearer"})
        if self.auth == "bearer":
            return None if self._credentials_ok(header) else _json(403, {"detail": "Invalid token"})
        return self._check_jwt(value.strip())

    def _check_jwt(self, token: str) -> _Response | None:
        invalid = _json(403, {"detail": "Invalid JWT token"})
        parts = token.split(".")
        if len(parts) != 3:
            return invalid
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
        except (ValueError, UnicodeDecodeError):
            return invalid
        if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
            return invalid
        expected = self._sign(f"{parts[0]}.{parts[1]}", self._current_secret())
        if not hmac.compare_digest(expected, parts[2]):
            return invalid
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            return invalid
        if exp <= time.time():
            return _json(401, {"detail": "Token Expired"})
        return None

    def _v3_token(self, request: _Request) -> _Response:
        data = _parse_json(request.body)
        with self._cond:
            password = self._password
        if (
            isinstance(data, dict)
            and data.get("username") == self.username
            and isinstance(data.get("password"), str)
            and hmac.compare_digest(data["password"], password)
        ):
            return _json(201, {"access_token": self.mint_jwt()})
        return _json(401, {"detail": "Invalid credentials"})

    def _version_response(self, request: _Request) -> _Response:
        return _json(200, {"version": self.release, "git_version": None})

    def _health_response(self, request: _Request) -> _Response:
        beat = _timestamp(datetime.now(UTC), zulu=self.version == "3")
        healthy = {"status": "healthy", "latest_scheduler_heartbeat": beat}
        return _json(200, {"metadatabase": {"status": "healthy"}, "scheduler": healthy})

    def _v3_asset(self, asset: _Asset) -> dict[str, Any]:
        created = _timestamp(asset.created_at, zulu=True)
        return {
            "id": asset.id,
            "name": asset.uri,
            "uri": asset.uri,
            "group": "asset",
            "extra": {},
            "created_at": created,
            "updated_at": created,
            "scheduled_dags": [
                {"asset_id": asset.id, "dag_id": dag_id, "created_at": created, "updated_at": created}
                for dag_id in asset.scheduled_dags
            ],
            "producing_tasks": [],
            "consuming_tasks": [],
            "aliases": [],
        }

    def _page(self, query: dict[str, list[str]], default_limit: int) -> tuple[int, int] | None:
        """(limit, offset) from the query string, or None when either is not a non-negative integer."""
        try:
            limit = int(query.get("limit", [str(default_limit)])[-1])
            offset = int(query.get("offset", ["0"])[-1])
        except ValueError:
            return None
        if limit < 0 or offset < 0:
            return None
        return min(limit, MAXIMUM_PAGE_LIMIT), offset

    def _matching_assets(self, query: dict[str, list[str]], pattern_keys: Sequence[str]) -> list[_Asset]:
        """Airflow's `*_pattern` filters: case-insensitive substring (SQL ILIKE '%x%'), ordered by id."""
        with self._cond:
            assets = sorted(self._assets.values(), key=lambda asset: asset.id)
        for key in pattern_keys:
            pattern = query.get(key, [""])[-1].lower()
            if pattern:  # name == uri in this fake
                assets = [asset for asset in assets if pattern in asset.uri.lower()]
        return assets

    def _v3_list_assets(self, request: _Request) -> _Response:
        page = self._page(request.query, V3_DEFAULT_LIMIT)
        if page is None:
            error = {
                "type": "int_parsing",
                "loc": ["query", "limit|offset"],
                "msg": "Input should be a valid integer",
            }
            return _json(422, {"detail": [error]})
        limit, offset = page
        assets = self._matching_assets(request.query, ("uri_pattern", "name_pattern"))
        return _json(
            200,
            {
                "assets": [self._v3_asset(asset) for asset in assets[offset : offset + limit]],
                "total_entries": len(assets),
            },
        )

    def _v3_get_asset(self, request: _Request) -> _Response:
        asset_id = int(request.path.rsplit("/", 1)[1])
        asset = self._asset_by_id(asset_id)
        if asset is None:
            return _json(404, {"detail": f"The Asset with ID: `{asset_id}` was not found"})
        return _json(200, self._v3_asset(asset))

    def _asset_by_id(self, asset_id: int) -> _Asset | None:
        with self._cond:
            return next((asset for asset in self._assets.values() if asset.id == asset_id), None)

    def _v3_create_event(self, request: _Request) -> _Response:
        data = _parse_json(request.body)
        if data is _NO_JSON:
            return _json(422, {"detail": [_body_error("json_invalid", None, {})]})
        errors = self._v3_event_errors(data)
        if errors:
            return _json(422, {"detail": errors})
        asset_id: int = data["asset_id"]
        extra: dict[str, Any] = data.get("extra", {})
        asset = self._asset_by_id(asset_id)
        if asset is None:
            return _json(404, {"detail": f"Asset with ID: `{asset_id}` was not found"})
        event = ReceivedEvent(
            uri=asset.uri,
            extra=dict(extra),
            asset_id=asset_id,
            received_at=time.monotonic(),
            authorization=request.authorization,
            partition_key=data.get("partition_key"),
        )
        event_id = self._record_event(event)
        return _json(
            200,
            {
                "id": event_id,
                "asset_id": asset_id,
                "uri": asset.uri,
                "extra": {**extra, "from_rest_api": True},
                "source_task_id": None,
                "source_dag_id": None,
                "source_run_id": None,
                "source_map_index": -1,
                "created_dagruns": [],
                "timestamp": _timestamp(event.created_at, zulu=True),
            },
        )

    def _takes_partitions(self) -> bool:
        return tuple(int(part) for part in self.release.split(".")[:2]) >= (3, 2)

    def _v3_event_errors(self, data: Any) -> list[dict[str, Any]]:
        """Pydantic-style validation of CreateAssetEventsBody (extra="forbid")."""
        if not isinstance(data, dict):
            return [_body_error("model_attributes_type", None, data)]
        errors: list[dict[str, Any]] = []
        if "asset_id" not in data:
            errors.append(_body_error("missing", "asset_id", data))
        elif isinstance(data["asset_id"], bool) or not isinstance(data["asset_id"], int):
            errors.append(_body_error("int_type", "asset_id", data["asset_id"]))
        if "extra" in data and not isinstance(data["extra"], dict):
            errors.append(_body_error("dict_type", "extra", data["extra"]))
        partition_key = data.get("partition_key")
        if partition_key is not None and not isinstance(partition_key, str):
            errors.append(_body_error("string_type", "partition_key", partition_key))
        allowed = ("asset_id", "extra", "partition_key") if self._takes_partitions() else ("asset_id", "extra")
        return errors + _extra_fields_errors(data, allowed)

    # ----------------------------------------------------------------- Airflow 2

    def _handle_v2(self, request: _Request) -> _Response:
        path = request.path
        if path == "/health":
            route: _Route | None = {"GET": (False, self._health_response)}
        elif not path.startswith("/api/v1/"):
            return _Response(404, _V2_HTML_404, content_type="text/html; charset=utf-8")
        else:
            routes: dict[str, _Route] = {
                "/api/v1/version": {"GET": (False, self._version_response)},
                "/api/v1/datasets": {"GET": (True, self._v2_list_datasets)},
                "/api/v1/datasets/events": {"POST": (True, self._v2_create_event), "GET": (True, self._v2_list_events)},
            }
            route = routes.get(path) or self._dag_route(path)
            if route is None and path.startswith("/api/v1/datasets/") and len(path) > len("/api/v1/datasets/"):
                route = {"GET": (True, self._v2_get_dataset)}
        not_found = _problem(
            404,
            "Not Found",
            "The requested URL was not found on the server. "
            "If you entered the URL manually please check your spelling and try again.",
            "NotFound",
        )
        return self._dispatch(
            request,
            route,
            self._v2_authorize,
            not_found,
            _problem(405, "Method Not Allowed", "The method is not allowed for the requested URL.", "NotFound"),
        )

    def _listed_events(self, request: _Request, id_key: str, default_limit: int) -> list[dict[str, Any]] | None:
        """Recorded events as the list endpoints show them (newest first with order_by=-timestamp)."""
        page = self._page(request.query, default_limit)
        if page is None:
            return None
        limit, offset = page
        wanted = request.query.get(id_key, [""])[-1]
        with self._cond:
            assets = dict(self._assets)
            if wanted:  # indexed by dataset: the chaos test checks among thousands of events
                uri = next((a.uri for a in assets.values() if str(a.id) == wanted), None)
                numbered = list(self._numbered_by_uri.get(uri, [])) if uri is not None else []
            else:
                numbered = list(enumerate(self._events, start=1))
        if request.query.get("order_by", ["timestamp"])[-1].startswith("-"):
            numbered.reverse()
        listed = []
        for number, event in numbered[offset : offset + limit]:
            asset = assets.get(event.uri)
            listed.append(
                {
                    "id": number,
                    id_key: asset.id if asset else None,
                    "uri": event.uri,
                    "extra": {**event.extra, "from_rest_api": True},
                    "source_dag_id": None,
                    "source_task_id": None,
                    "source_run_id": None,
                    "source_map_index": -1,
                    "created_dagruns": [],
                    "timestamp": _timestamp(event.created_at, zulu=self.version == "3"),
                }
            )
        return listed

    def _v3_list_events(self, request: _Request) -> _Response:
        events = self._listed_events(request, "asset_id", V3_DEFAULT_LIMIT)
        if events is None:
            return _json(422, {"detail": [{"type": "int_parsing", "loc": ["query"], "msg": "bad paging"}]})
        return _json(200, {"asset_events": events, "total_entries": len(events)})

    def _v2_list_events(self, request: _Request) -> _Response:
        events = self._listed_events(request, "dataset_id", V2_DEFAULT_LIMIT)
        if events is None:
            return _problem(400, "Bad Request", "limit and offset must be non-negative integers", "BadRequest")
        return _json(200, {"dataset_events": events, "total_entries": len(events)})

    def _v2_authorize(self, request: _Request) -> _Response | None:
        # Airflow 2's FAB-backed API answers missing *and* wrong credentials with 403, not 401.
        if self.auth == "none" or self._credentials_ok(request.authorization):
            return None
        return _problem(403, "Forbidden", None, "PermissionDenied")

    def _v2_dataset(self, asset: _Asset) -> dict[str, Any]:
        created = _timestamp(asset.created_at, zulu=False)
        return {
            "id": asset.id,
            "uri": asset.uri,
            "extra": {},
            "created_at": created,
            "updated_at": created,
            "consuming_dags": [
                {"dag_id": dag_id, "created_at": created, "updated_at": created} for dag_id in asset.scheduled_dags
            ],
            "producing_tasks": [],
            "aliases": [],
        }

    def _v2_list_datasets(self, request: _Request) -> _Response:
        page = self._page(request.query, V2_DEFAULT_LIMIT)
        if page is None:
            return _problem(400, "Bad Request", "limit and offset must be non-negative integers", "BadRequest")
        limit, offset = page
        assets = self._matching_assets(request.query, ("uri_pattern",))
        return _json(
            200,
            {
                "datasets": [self._v2_dataset(asset) for asset in assets[offset : offset + limit]],
                "total_entries": len(assets),
            },
        )

    def _v2_get_dataset(self, request: _Request) -> _Response:
        uri = unquote(request.path[len("/api/v1/datasets/") :])
        with self._cond:
            asset = self._assets.get(uri)
        if asset is None:
            return _problem(404, "Dataset not found", f"The Dataset with uri: `{uri}` was not found", "NotFound")
        return _json(200, self._v2_dataset(asset))

    def _v2_create_event(self, request: _Request) -> _Response:
        data = _parse_json(request.body)
        if data is _NO_JSON:
            return _problem(400, "Bad Request", "Request body is not valid JSON", "BadRequest")
        problem = self._v2_event_problem(data)
        if problem is not None:
            return _problem(400, "Bad Request", problem, "BadRequest")
        uri: str = data["dataset_uri"]
        extra: dict[str, Any] = data.get("extra", {})
        with self._cond:
            known = uri in self._assets
        if not known:
            return _problem(404, "Dataset not found", f"Dataset with uri: `{uri}` was not found", "NotFound")
        event = ReceivedEvent(
            uri=uri,
            extra=dict(extra),
            asset_id=None,
            received_at=time.monotonic(),
            authorization=request.authorization,
        )
        event_id = self._record_event(event)
        return _json(
            200,
            {
                "dataset_uri": uri,
                "extra": {**extra, "from_rest_api": True},
                "id": event_id,
                "source_dag_id": None,
                "source_task_id": None,
                "source_run_id": None,
                "source_map_index": -1,
                "created_dagruns": [],
                "timestamp": _timestamp(event.created_at, zulu=False),
            },
        )

    @staticmethod
    def _v2_event_problem(data: Any) -> str | None:
        """Marshmallow-style validation of CreateDatasetEvent (unknown fields rejected)."""
        if not isinstance(data, dict):
            return "{'_schema': ['Invalid input type.']}"
        problems: dict[str, str] = {}
        if "dataset_uri" not in data:
            problems["dataset_uri"] = "Missing data for required field."
        elif not isinstance(data["dataset_uri"], str):
            problems["dataset_uri"] = "Not a valid string."
        if "extra" in data and not isinstance(data["extra"], dict):
            problems["extra"] = "Not a valid mapping type."
        for key in data:
            if key not in ("dataset_uri", "extra"):
                problems[key] = "Unknown field."
        if not problems:
            return None
        return str({key: [message] for key, message in problems.items()})
