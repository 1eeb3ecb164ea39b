"""A local Amazon MWAA `InvokeRestApi`: an HTTP server on 127.0.0.1 in front of real (or fake) Airflow deployments.

moto has no MWAA. `MwaaEmulator` answers `POST /restapi/{Name}` as boto3's `mwaa` client sends it (build the client
with `endpoint_url=emulator.endpoint` and `Config(inject_host_prefix=False)`, or set `AWS_ENDPOINT_URL_MWAA`):
it authenticates the SigV4 signature (service `airflow`), authorizes the caller against the environment's
allow-list (emulated IAM), relays `Path` under the environment's REST root with MWAA's 10 s deadline, and answers
with the shapes botocore parses: `{"RestApiStatusCode", "RestApiResponse"}` for Airflow's 2xx, the modeled errors
`RestApiClientException` / `RestApiServerException` (HTTP 400, same two members) for its 4xx / 5xx, and
`AccessDeniedException`, `ResourceNotFoundException`, `ValidationException`, `InternalServerException`,
`ThrottlingException` and the SigV4 errors as AWS sends them. Faults can be switched on per environment at run
time, and every call is recorded for tests. docs/local-mwaa.md says what is and is not emulated.
"""

from __future__ import annotations

import json
import logging
import re
import socketserver
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self, get_args
from urllib.parse import unquote, urlsplit

import urllib3

from .mwaa_identity import DEFAULT_ACCOUNT, Caller, Identities
from .mwaa_relay import REST_ROOTS, Login, LoginFailed, Relay, RelayTimeout, RelayUnreachable
from .mwaa_sigv4 import SignatureError, check_scope, parse_authorization, verify

__all__ = [
    "ENDPOINT_VARIABLE",
    "Call",
    "EnvironmentSpec",
    "FaultKind",
    "MwaaEmulator",
    "parse_environment_spec",
    "with_allowed",
]

log = logging.getLogger(__name__)

ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_MWAA"  # what boto3 reads for the mwaa client's endpoint
SERVICE = "airflow"  # the signing name of MWAA
RELAY_TIMEOUT_S = 10.0  # InvokeRestApi's limit on the Airflow call
MAX_PATH = 64
METHODS = ("GET", "PUT", "POST", "PATCH", "DELETE")
DEFAULT_REGION = "us-east-1"
DEFAULT_KEYS = {"testing": "testing"}  # the local stack's fake credentials
_NAME = re.compile(r"^[a-zA-Z][0-9a-zA-Z_-]{0,79}$")
_PREFIX = "/restapi/"
# the Airflow status MWAA is taken to report when Airflow cannot be reached, or does not answer within 10 s
UNREACHABLE_STATUS = 502
TIMEOUT_STATUS = 504

_INVALID_TOKEN = "The security token included in the request is invalid."  # noqa: S105 - a message

FaultKind = Literal["throttle", "deny", "hang", "internal"]


class _AwsError(Exception):
    """An error answer: HTTP status, error code (x-amzn-ErrorType) and JSON body."""

    def __init__(self, status: int, code: str, body: Mapping[str, Any]) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.body = dict(body)


def _error(status: int, code: str, message: str, member: str = "message") -> _AwsError:
    return _AwsError(status, code, {member: message})


@dataclass(frozen=True)
class Call:
    """One InvokeRestApi request as the emulator saw and answered it."""

    environment: str
    method: str | None  # the REST call's Method, Path, QueryParameters and Body (None when not given)
    path: str | None
    query: Any
    body: Any
    caller: str | None  # the caller's ARN once authenticated
    status: int  # the emulator's HTTP status (0: hung, no answer)
    error: str | None  # the error code answered, None on success
    rest_api_status: int | None  # Airflow's status, when Airflow answered
    at: float = field(default_factory=time.time)


@dataclass
class _Fault:
    kind: FaultKind
    remaining: int | None  # calls it still affects; None = until cleared
    released: threading.Event = field(default_factory=threading.Event)  # ends a hang


@dataclass
class _Environment:
    name: str
    region: str
    account: str
    airflow_role: str
    relay: Relay
    allowed: list[str]
    fault: _Fault | None = None

    def resource_arn(self) -> str:
        """The IAM resource InvokeRestApi is granted on: the Airflow role the call runs as in this environment."""
        return f"arn:aws:airflow:{self.region}:{self.account}:role/{self.name}/{self.airflow_role}"


@dataclass(frozen=True)
class EnvironmentSpec:
    """An environment as `dataset-forwarder local up --mwaa-environment` describes it."""

    name: str
    url: str
    airflow: str = "3"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    region: str | None = None
    allow: tuple[str, ...] = ()


def parse_environment_spec(text: str, environ: Mapping[str, str]) -> EnvironmentSpec:
    """`NAME=URL[,airflow=2|3][,user=U][,password-env=VAR][,region=R]`; the password is read from `environ[VAR]`."""
    head, *options = text.split(",")
    name, sep, url = head.partition("=")
    if not sep or not _NAME.match(name) or not url.startswith(("http://", "https://")):
        raise ValueError(f"expected NAME=URL[,option=value...], got {head!r}")
    settings: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("airflow", "user", "password-env", "region"):
            raise ValueError(f"unknown option {option!r}: airflow=2|3, user=, password-env=, region=")
        settings[key] = value
    airflow = settings.get("airflow", "3")
    if airflow not in REST_ROOTS:
        raise ValueError(f"airflow= takes 2 or 3, not {airflow!r}")
    password = None
    if "password-env" in settings:
        if settings["password-env"] not in environ:
            raise ValueError(f"password-env={settings['password-env']}: that variable is not set")
        password = environ[settings["password-env"]]
    return EnvironmentSpec(
        name=name,
        url=url,
        airflow=airflow,
        username=settings.get("user"),
        password=password,
        region=settings.get("region"),
    )


def with_allowed(specs: Iterable[EnvironmentSpec], allow: Iterable[str]) -> list[EnvironmentSpec]:
    """The specs with `NAME=IDENTITY` entries (`--mwaa-allow`) added to their allow-lists."""
    by_name = {spec.name: spec for spec in specs}
    for entry in allow:
        name, sep, identity = entry.partition("=")
        if not sep or not identity:
            raise ValueError(f"expected NAME=IDENTITY, got {entry!r}")
        if name not in by_name:
            raise ValueError(f"no MWAA environment {name!r} to allow {identity!r} on")
        by_name[name] = replace(by_name[name], allow=(*by_name[name].allow, identity))
    return list(by_name.values())


class MwaaEmulator:
    """Amazon MWAA's InvokeRestApi on 127.0.0.1. Use as a context manager, or start() / stop().

    `keys` maps access key ids to secrets (default: the local stack's `testing`/`testing`); with `moto_endpoint`
    the emulator also knows every key moto issued and asks moto's STS who the caller is.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        region: str = DEFAULT_REGION,
        keys: Mapping[str, str] | None = None,
        moto_endpoint: str | None = None,
        relay_timeout_s: float = RELAY_TIMEOUT_S,
        max_hang_s: float = 300.0,
    ) -> None:
        self.host = host
        self.region = region
        self.relay_timeout_s = relay_timeout_s
        self.max_hang_s = max_hang_s
        self.identities = Identities(DEFAULT_KEYS if keys is None else keys, moto_endpoint=moto_endpoint, region=region)
        self._port = port
        self._lock = threading.Lock()
        self._environments: dict[str, _Environment] = {}
        self._calls: list[Call] = []
        self._pool = urllib3.PoolManager(maxsize=16)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("the MWAA emulator is already running")
        self._server = _Server(self, self.host, self._port)
        self._port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="mwaa-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        with self._lock:
            for environment in self._environments.values():
                if environment.fault is not None:
                    environment.fault.released.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("the MWAA emulator has no port yet: start() it")
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment_variables(self) -> dict[str, str]:
        """What a process needs for its boto3 `mwaa` client to reach this emulator."""
        return {ENDPOINT_VARIABLE: self.endpoint}

    # -- set-up

    def add_environment(
        self,
        name: str,
        url: str,
        *,
        airflow: str = "3",
        username: str | None = None,
        password: str | None = None,
        region: str | None = None,
        account: str = DEFAULT_ACCOUNT,
        allow: Iterable[str] | None = None,
        airflow_role: str = "Admin",
    ) -> None:
        """Map environment `name` (in `region`, default the emulator's) to the Airflow at `url`.

        `allow`: the identities IAM lets call it (account ids, ARNs, IAM role ARNs admitting their sessions, `*`);
        default: any principal of the environment's own account.
        """
        if not _NAME.match(name):
            raise ValueError(f"not an MWAA environment name: {name!r}")
        login = Login(username, password or "") if username else None
        relay = Relay(url, airflow, login, self._pool)
        environment = _Environment(
            name=name,
            region=region or self.region,
            account=account,
            airflow_role=airflow_role,
            relay=relay,
            allowed=list(allow) if allow is not None else [account],
        )
        with self._lock:
            self._environments[name] = environment

    def add_spec(self, spec: EnvironmentSpec) -> None:
        self.add_environment(
            spec.name,
            spec.url,
            airflow=spec.airflow,
            username=spec.username,
            password=spec.password,
            region=spec.region,
            allow=spec.allow or None,
        )

    def add_key(self, access_key: str, secret: str, arn: str | None = None) -> None:
        """Accept this access key (and say whose it is, else moto or the default account tells)."""
        self.identities.add_key(access_key, secret, arn)

    def allow(self, name: str, *identities: str) -> None:
        """Let these identities call the environment too."""
        with self._lock:
            self._environment(name).allowed.extend(identities)

    def set_allowed(self, name: str, identities: Iterable[str]) -> None:
        """Replace the environment's allow-list (empty: nobody may call it)."""
        with self._lock:
            self._environment(name).allowed = list(identities)

    def set_fault(self, name: str, kind: FaultKind, times: int | None = None) -> None:
        """Misbehave on the environment's next `times` calls (None: until cleared).

        throttle: 429 ThrottlingException; deny: 403 AccessDeniedException; internal: 500 InternalServerException;
        hang: hold the request unanswered until cleared (or `max_hang_s`), then close the connection.
        """
        if kind not in get_args(FaultKind):
            raise ValueError(f"fault must be one of {get_args(FaultKind)}, not {kind!r}")
        with self._lock:
            environment = self._environment(name)
            if environment.fault is not None:
                environment.fault.released.set()
            environment.fault = _Fault(kind, times)

    def clear_fault(self, name: str) -> None:
        with self._lock:
            environment = self._environment(name)
            if environment.fault is not None:
                environment.fault.released.set()
            environment.fault = None

    # -- observation

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def calls_to(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.environment == name]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def client(
        self,
        *,
        access_key: str = "testing",
        secret: str = "testing",  # noqa: S107 - the local stack's fake credentials
        session_token: str | None = None,
        region: str | None = None,
        max_attempts: int = 1,
        read_timeout_s: float = 30,
    ) -> Any:
        """A boto3 `mwaa` client for this emulator (no retries by default, so tests see every answer)."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            aws_session_token=session_token,
            region_name=region or self.region,
        )
        config = Config(
            inject_host_prefix=False,
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            read_timeout=read_timeout_s,
            connect_timeout=5,
        )
        return session.client("mwaa", endpoint_url=self.endpoint, config=config)

    # -- serving (called by the request handler)

    def _environment(self, name: str) -> _Environment:
        environment = self._environments.get(name)
        if environment is None:
            raise KeyError(f"no MWAA environment {name!r} in the emulator")
        return environment

    def _record(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)
        log.debug("InvokeRestApi", extra={"environment": call.environment, "error": call.error})

    def _take_fault(self, environment: _Environment) -> _Fault | None:
        with self._lock:
            fault = environment.fault
            if fault is None:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    environment.fault = None
            return fault

    def _authenticate(self, request: _Request) -> tuple[Caller, str]:
        """The caller and the region of the credential scope, or the SigV4 error AWS would answer."""
        auth = parse_authorization(request.header("authorization"))
        amz_date = check_scope(auth, request.headers, service=SERVICE, now=datetime.now(UTC))
        key = self.identities.key(auth.access_key)
        token = request.header("x-amz-security-token")
        if key is None or (key.session_token is not None and key.session_token != token):
            raise SignatureError(
                "UnrecognizedClientException", "The security token included in the request is invalid."
            )
        if key.secret is not None:  # None: a moto-issued key whose secret moto could not show (mwaa_identity)
            verify(
                auth,
                key.secret,
                method=request.method,
                target=request.target,
                headers=request.headers,
                body=request.body,
                amz_date=amz_date,
            )
        return self.identities.caller(auth.access_key, key, token), auth.region

    def _invoke(self, request: _Request) -> tuple[int, Mapping[str, Any], str | None]:
        """Answer one InvokeRestApi: (HTTP status, JSON body, error code or None)."""
        name = unquote(urlsplit(request.target).path[len(_PREFIX) :])
        details: dict[str, Any] = {"method": None, "path": None, "query": None, "body": None}
        caller: Caller | None = None
        rest_api_status: int | None = None
        try:
            try:
                caller, region = self._authenticate(request)
            except SignatureError as exc:
                raise _error(exc.status, exc.code, exc.message) from None
            data = _request_document(request.body)
            details = {
                "method": data.get("Method"),
                "path": data.get("Path"),
                "query": data.get("QueryParameters"),
                "body": data.get("Body"),
            }
            _validate(name, details)
            with self._lock:
                environment = self._environments.get(name)
            if environment is None or environment.region != region:
                raise _error(404, "ResourceNotFoundException", f"Environment {name} not found.")
            self._apply_fault(environment, caller)
            if not any(caller.matches(identity) for identity in environment.allowed):
                raise _error(
                    403,
                    "AccessDeniedException",
                    f"User: {caller.arn} is not authorized to perform: airflow:InvokeRestApi on resource: "
                    f"{environment.resource_arn()}",
                    member="Message",
                )
            answer = self._relay(environment, details)
            rest_api_status = answer[0]
            status, body, code = _shape(*answer)
        except _AwsError as exc:
            status, body, code = exc.status, exc.body, exc.code
            if isinstance(exc.body.get("RestApiStatusCode"), int):
                rest_api_status = exc.body["RestApiStatusCode"]
        except _Hung:
            status, body, code = 0, {}, "hang"
        self._record(
            Call(
                environment=name,
                caller=caller.arn if caller else None,
                status=status,
                error=code,
                rest_api_status=rest_api_status,
                **details,
            )
        )
        if status == 0:
            raise _Hung
        return status, body, code

    def _apply_fault(self, environment: _Environment, caller: Caller) -> None:
        fault = self._take_fault(environment)
        if fault is None:
            return
        if fault.kind == "throttle":
            raise _error(429, "ThrottlingException", "Rate exceeded")
        if fault.kind == "internal":
            raise _error(500, "InternalServerException", "An internal error has occurred.")
        if fault.kind == "deny":
            raise _error(
                403,
                "AccessDeniedException",
                f"User: {caller.arn} is not authorized to perform: airflow:InvokeRestApi on resource: "
                f"{environment.resource_arn()} (injected)",
                member="Message",
            )
        fault.released.wait(self.max_hang_s)
        raise _Hung

    def _relay(self, environment: _Environment, details: Mapping[str, Any]) -> tuple[int, Any]:
        try:
            answer = environment.relay.call(
                details["method"],
                details["path"],
                details["query"] or {},
                details["body"],
                self.relay_timeout_s,
            )
        except RelayTimeout:
            detail = f"Airflow did not answer within {self.relay_timeout_s:g} s"
            return TIMEOUT_STATUS, {"detail": detail}
        except RelayUnreachable:
            return UNREACHABLE_STATUS, {"detail": "Airflow could not be reached"}
        except LoginFailed as exc:
            log.warning("the MWAA emulator could not log in to Airflow", extra={"environment": environment.name})
            raise _error(500, "InternalServerException", f"An internal error has occurred. ({exc})") from None
        return answer.status, answer.payload


class _Hung(Exception):
    """A hang fault ended: close the connection without an answer."""


def _request_document(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _error(400, "SerializationException", "Could not parse the request body as JSON.") from None
    if not isinstance(data, dict):
        raise _error(400, "SerializationException", "The request body must be a JSON object.")
    return data


def _validate(name: str, details: Mapping[str, Any]) -> None:
    """InvokeRestApi's input constraints (botocore does not check the maximum length or the enum)."""
    problems = []
    if not _NAME.match(name):
        problems.append(
            f"Value '{name}' at 'name' failed to satisfy constraint: "
            "Member must satisfy regular expression pattern: [a-zA-Z][0-9a-zA-Z-_]*"
        )
    path, method, query = details["path"], details["method"], details["query"]
    if not isinstance(path, str) or not path:
        problems.append("Value null at 'path' failed to satisfy constraint: Member must not be null")
    elif len(path) > MAX_PATH:
        problems.append(
            f"Value '{path}' at 'path' failed to satisfy constraint: "
            f"Member must have length less than or equal to {MAX_PATH}"
        )
    if method not in METHODS:
        problems.append(
            f"Value '{method}' at 'method' failed to satisfy constraint: "
            f"Member must satisfy enum value set: [{', '.join(METHODS)}]"
        )
    if query is not None and not isinstance(query, dict):
        problems.append("Value at 'queryParameters' failed to satisfy constraint: Member must be a JSON object")
    if problems:
        count = f"{len(problems)} validation error{'s' if len(problems) > 1 else ''} detected: "
        raise _error(400, "ValidationException", count + "; ".join(problems))


def _shape(rest_api_status: int, payload: Any) -> tuple[int, Mapping[str, Any], str | None]:
    """Airflow's answer as InvokeRestApi returns it: 2xx (and 3xx) a result, 4xx and 5xx a modeled error."""
    body = {"RestApiStatusCode": rest_api_status, "RestApiResponse": payload}
    if rest_api_status >= 500:
        return 400, body, "RestApiServerException"
    if rest_api_status >= 400:
        return 400, body, "RestApiClientException"
    return 200, body, None


# --------------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key.lower() == name), None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = _Request(self.command, self.path, list(self.headers.items()), self.rfile.read(length))
        if not urlsplit(self.path).path.startswith(_PREFIX):
            self._answer(404, {"message": "Not Found"}, "UnknownOperationException")
            return
        try:
            status, body, code = self.server.emulator._invoke(request)
        except _Hung:
            self.close_connection = True
            return
        except Exception:  # the boundary: a bug here is a 500, and its traceback is logged
            log.exception("the MWAA emulator failed on a request")
            status, body, code = 500, {"message": "An internal error has occurred."}, "InternalServerException"
        self._answer(status, body, code)

    def do_GET(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._answer(404, {"message": "Not Found"}, "UnknownOperationException")

    do_PUT = do_PATCH = do_DELETE = do_GET

    def _answer(self, status: int, body: Mapping[str, Any], code: str | None) -> None:
        payload = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
            if code is not None:
                self.send_header("x-amzn-ErrorType", code)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the client gave up (its read timeout)
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, emulator: MwaaEmulator, host: str, port: int) -> None:
        self.emulator = emulator
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would do a slow reverse DNS look-up
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])
