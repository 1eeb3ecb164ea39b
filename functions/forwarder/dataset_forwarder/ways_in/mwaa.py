"""The MWAA way in: Airflow's REST API through the AWS API `InvokeRestApi`, authorized by IAM.

No secret: calls run as the function's role, or as `role_arn` assumed through STS (cross-account).
Airflow's own answers come back as `RestApiStatusCode` + `RestApiResponse` (on errors inside
`RestApiClientException`/`RestApiServerException`) and are turned into the same `Reply` the HTTPS
way in gives, so everything above classifies them the same way. AWS-side errors map to outcomes
here: throttling is transient, `AccessDeniedException` is `auth`, `ResourceNotFoundException` is
`invalid_target`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from dataset_forwarder.outcomes import (
    AUTH,
    CONNECTION,
    INVALID_TARGET,
    TIMEOUT,
    DeliveryFailed,
    MayHaveLanded,
    excerpt,
    failure_for_status,
)
from dataset_forwarder.single_flight import SingleFlight
from dataset_forwarder.transport import Reply
from dataset_forwarder.ways_in import AirflowMajor

MAX_PATH = 64  # InvokeRestApi's limit on Path
MAX_CALL_S = 10.0  # InvokeRestApi gives up on the webserver after 10 s
GATEWAY_TIMEOUT = 504  # RestApiStatusCode when it does (docs/local-mwaa.md)
CREDENTIALS_MARGIN_S = 300.0  # assumed-role credentials are renewed this long before they expire
ASSUME_ROLE_DURATION_S = 3600
ENVIRONMENT_PATTERN = re.compile(r"^[a-zA-Z][0-9a-zA-Z_-]{0,79}$")
REGION_PATTERN = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
ROLE_ARN_PATTERN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
THROTTLING = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"})


@dataclass(frozen=True)
class MwaaWayIn:
    """`{"mwaa": {"environment", "region", "role_arn"}}`: an Amazon MWAA environment."""

    kind: ClassVar[str] = "mwaa"
    max_path: ClassVar[int | None] = MAX_PATH

    environment: str
    region: str | None = None
    role_arn: str | None = None

    @staticmethod
    def parse(name: str, data: Mapping[str, Any], rules: Any) -> MwaaWayIn:
        from dataset_forwarder.targets import allowed

        raw = data.get("mwaa")
        if not isinstance(raw, Mapping):
            raise ValueError("'mwaa' must be an object with 'environment' (and optionally 'region', 'role_arn')")
        if "url" in data or "auth" in data:
            raise ValueError("an MWAA target has no 'url' or 'auth': IAM authorizes its calls")
        environment, region, role_arn = raw.get("environment"), raw.get("region"), raw.get("role_arn")
        if not isinstance(environment, str) or not ENVIRONMENT_PATTERN.fullmatch(environment):
            raise ValueError("'mwaa.environment' must be an MWAA environment name")
        if region is not None and (not isinstance(region, str) or not REGION_PATTERN.fullmatch(region)):
            raise ValueError("'mwaa.region' must be an AWS region such as eu-west-1")
        if role_arn is not None and (not isinstance(role_arn, str) or not ROLE_ARN_PATTERN.fullmatch(role_arn)):
            raise ValueError("'mwaa.role_arn' must be an IAM role ARN")
        if not allowed(environment, rules.mwaa_environments):
            raise ValueError(
                f"MWAA environment {environment} is not one this stack may invoke (MWAA_ENVIRONMENTS; "
                "template parameter MwaaEnvironments)"
            )
        if role_arn is not None and not allowed(role_arn, rules.role_arns):
            raise ValueError(
                f"role {role_arn} is not one this stack may assume "
                "(TARGET_ROLE_ARNS; template parameter TargetRoleArns)"
            )
        return MwaaWayIn(environment, region, role_arn)

    @property
    def secret(self) -> str | None:
        return None

    def to_json(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"environment": self.environment}
        if self.region is not None:
            spec["region"] = self.region
        if self.role_arn is not None:
            spec["role_arn"] = self.role_arn
        return {"mwaa": spec}

    def describe(self) -> str:
        where = f"MWAA {self.environment}" + (f" in {self.region}" if self.region else "")
        return where + (f" as {self.role_arn}" if self.role_arn else "")

    def connect(self, services: Any, *, airflow: str, timeout_s: float, target: str) -> MwaaApi:
        return MwaaApi(self, services.mwaa, airflow=airflow, timeout_s=timeout_s, target=target)


class MwaaClients:
    """boto3 `mwaa` clients per (region, role, timeout), with assumed-role credentials cached until near expiry.

    The clients never retry: InvokeRestApi is not idempotent (a retried POST could run a DAG twice), and
    the forwarder's own retry policy decides. With an endpoint override (`AWS_ENDPOINT_URL_MWAA`, local
    runs), the `env.` host prefix of the operation is not injected: it would make the host unresolvable.
    """

    def __init__(
        self,
        session: Callable[[], Any],
        *,
        endpoint_override: bool,
        clock: Callable[[], float] = time.time,
        making: threading.Lock | None = None,
    ) -> None:
        """`making`: the lock every client of `session` is made under (a boto3 session is not thread-safe)."""
        self._session = session
        self._endpoint_override = endpoint_override
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[tuple[Any, ...], Any] = {}
        self._credentials: dict[str, tuple[dict[str, str], float]] = {}
        self._flight = SingleFlight()
        self._making = making or threading.Lock()

    def client(self, region: str | None, role_arn: str | None, timeout_s: float) -> Any:
        credentials = self._assumed(role_arn, timeout_s) if role_arn else None
        key = (region, role_arn, timeout_s, credentials and credentials["AccessKeyId"])
        with self._lock:
            client = self._clients.get(key)
        if client is None:
            client = self._build(region, timeout_s, credentials)
            with self._lock:
                if len(self._clients) > 256:
                    self._clients.clear()
                self._clients[key] = client
        return client

    def _build(self, region: str | None, timeout_s: float, credentials: dict[str, str] | None) -> Any:
        from botocore.config import Config

        config = Config(
            connect_timeout=min(3.0, timeout_s),
            read_timeout=min(timeout_s, MAX_CALL_S + 2),
            retries={"mode": "standard", "total_max_attempts": 1},
            inject_host_prefix=not self._endpoint_override,
            user_agent_extra="airflow-dataset-forwarder",
        )
        keys = {}
        if credentials is not None:
            keys = {
                "aws_access_key_id": credentials["AccessKeyId"],
                "aws_secret_access_key": credentials["SecretAccessKey"],
                "aws_session_token": credentials["SessionToken"],
            }
        with self._making:
            return self._session().client("mwaa", region_name=region, config=config, **keys)

    def _assumed(self, role_arn: str, timeout_s: float) -> dict[str, str]:
        now = self._clock()
        with self._lock:
            cached = self._credentials.get(role_arn)
        if cached and cached[1] > now:
            return cached[0]
        return self._flight.run(role_arn, lambda: self._assume(role_arn, timeout_s))

    def _assume(self, role_arn: str, timeout_s: float) -> dict[str, str]:
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        # Inside a delivery: bounded like the target's own calls (botocore's default is 60 s reads, retried).
        config = Config(
            connect_timeout=min(3.0, timeout_s),
            read_timeout=timeout_s,
            retries={"mode": "standard", "total_max_attempts": 1},
            user_agent_extra="airflow-dataset-forwarder",
        )
        with self._making:
            sts = self._session().client("sts", config=config)
        try:
            answer = sts.assume_role(
                RoleArn=role_arn, RoleSessionName="dataset-forwarder", DurationSeconds=ASSUME_ROLE_DURATION_S
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            if code in THROTTLING:
                raise DeliveryFailed("http_429", f"STS throttled AssumeRole of {role_arn}", transient=True) from None
            raise DeliveryFailed(AUTH, f"cannot assume {role_arn}: {code}", transient=False) from None
        except BotoCoreError as exc:
            raise DeliveryFailed(CONNECTION, f"STS AssumeRole: {type(exc).__name__}", transient=True) from None
        credentials = {k: str(answer["Credentials"][k]) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")}
        expiration = answer["Credentials"]["Expiration"]
        expires = expiration.timestamp() if hasattr(expiration, "timestamp") else self._clock() + 900
        with self._lock:
            self._credentials[role_arn] = (credentials, expires - CREDENTIALS_MARGIN_S)
        return credentials


class MwaaApi:
    """Calls through InvokeRestApi; the Airflow major comes from `GET /version` when `auto`."""

    max_path: int | None = MAX_PATH

    def __init__(self, spec: MwaaWayIn, clients: MwaaClients, *, airflow: str, timeout_s: float, target: str) -> None:
        self._spec = spec
        self._clients = clients
        self._timeout_s = timeout_s
        self._target = target
        self._major = AirflowMajor(airflow, self._probe_major)

    def airflow_major(self) -> str:
        return self._major.get()

    def _probe_major(self) -> str:
        reply = self._invoke("GET", "/version", None, None)
        if reply.status_code != 200:
            raise self.failure(reply, "GET /version")
        try:
            version = str(reply.json()["version"])
        except (ValueError, KeyError, TypeError):
            version = ""
        major = version.split(".", 1)[0]
        if major not in ("2", "3"):
            raise DeliveryFailed(
                INVALID_TARGET,
                f"{self._spec.describe()} answered /version without an Airflow 2 or 3 version",
                transient=False,
            )
        return major

    def call(self, method: str, path: str, *, params: Mapping[str, str] | None = None, body: Any = None) -> Reply:
        self.airflow_major()
        return self._invoke(method, path, params, body)

    def failure(self, reply: Reply, what: str) -> DeliveryFailed:
        detail = (
            f"{what} on {self._target} ({self._spec.describe()}) answered {reply.status_code}: {excerpt(reply, ())}"
        )
        return failure_for_status(reply.status_code, reply.headers, detail)

    def identity(self) -> str:
        return f"IAM as {self._spec.role_arn}" if self._spec.role_arn else "IAM as the function's role"

    def _invoke(self, method: str, path: str, params: Mapping[str, str] | None, body: Any) -> Reply:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            ReadTimeoutError,
        )

        what = f"{method} {path} on {self._target}"
        if len(path) > MAX_PATH:
            raise DeliveryFailed(
                INVALID_TARGET, f"{what}: path longer than InvokeRestApi's {MAX_PATH}", transient=False
            )
        request: dict[str, Any] = {"Name": self._spec.environment, "Path": path, "Method": method}
        if params:
            request["QueryParameters"] = dict(params)
        if body is not None:
            request["Body"] = body
        landed = method == "POST"
        try:
            client = self._clients.client(self._spec.region, self._spec.role_arn, self._timeout_s)
            answer = client.invoke_rest_api(**request)
        except ClientError as exc:
            reply = self._error_reply(exc, what, landed)
            if landed and reply.status_code == GATEWAY_TIMEOUT:
                # InvokeRestApi stopped waiting; Airflow was not stopped and may still apply the POST.
                failure = self.failure(reply, f"{method} {path}")
                raise MayHaveLanded(
                    failure.error,
                    f"{failure.detail} (InvokeRestApi stopped waiting: the call may still have been applied)",
                    transient=True,
                ) from None
            return reply
        except ReadTimeoutError:
            detail = f"{what} got no answer within {self._timeout_s:g}s"
            raise (MayHaveLanded if landed else DeliveryFailed)(TIMEOUT, detail, transient=True) from None
        except (ConnectTimeoutError, EndpointConnectionError) as exc:
            raise DeliveryFailed(CONNECTION, f"{what}: {type(exc).__name__}", transient=True) from None
        except NoCredentialsError:
            raise DeliveryFailed(AUTH, f"{what}: the function has no AWS credentials", transient=False) from None
        except BotoCoreError as exc:
            raise (MayHaveLanded if landed else DeliveryFailed)(
                CONNECTION, f"{what}: {type(exc).__name__}", transient=True
            ) from None
        return _reply(int(answer.get("RestApiStatusCode", 200)), answer.get("RestApiResponse"))

    def _error_reply(self, exc: Any, what: str, landed: bool) -> Reply:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "error"))
        message = " ".join(str(error.get("Message", "")).split())[:200]
        if code in ("RestApiClientException", "RestApiServerException"):
            status = exc.response.get("RestApiStatusCode")
            if isinstance(status, int):
                return _reply(status, exc.response.get("RestApiResponse"))
        http = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        where = self._spec.describe()
        if code in THROTTLING or http == 429:
            raise DeliveryFailed("http_429", f"{what}: AWS throttled InvokeRestApi ({where})", transient=True)
        if code == "AccessDeniedException" or http == 403:
            raise DeliveryFailed(
                AUTH, f"{what}: access denied to {where} ({message or code}): check the IAM policy", transient=False
            )
        if code == "ResourceNotFoundException":
            raise DeliveryFailed(INVALID_TARGET, f"{what}: no MWAA environment {where}", transient=False)
        if code == "ValidationException":
            raise DeliveryFailed(
                INVALID_TARGET, f"{what}: InvokeRestApi refused the request: {message}", transient=False
            )
        if http >= 500 or code == "InternalServerException":
            # The webserver may have run the call before the AWS side failed: unconfirmed for a POST.
            raise (MayHaveLanded if landed else DeliveryFailed)(
                f"http_{http or 500}", f"{what}: MWAA {code} ({where})", transient=True
            )
        raise DeliveryFailed(INVALID_TARGET, f"{what}: {code} {message}".strip(), transient=False)


def _reply(status: int, response: Any) -> Reply:
    content = b"" if response is None else json.dumps(response, separators=(",", ":")).encode()
    return Reply(status, {}, content)
