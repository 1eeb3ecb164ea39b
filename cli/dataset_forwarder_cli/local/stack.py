"""The local stack: moto server, the resources of template.yaml created in moto's CloudFormation, the poller.

`LocalStack` starts a moto server on 127.0.0.1, deploys the SAM-transformed template into it (queues with their
redrive policy, the idempotency table, the function with its environment and its SQS event source mapping) and
reads back what was created. The settings of the event source mapping (batch size, batching window, maximum
concurrency, partial batch responses) and of the function (handler, timeout, memory, environment) are those the
template produced: nothing here repeats a name or a number from the template. moto cannot run the function
(it would need Docker), so its own event source mapping is switched off and `Poller` takes its place, invoking
the real handler in local execution environments.
"""

from __future__ import annotations

import logging
import shlex
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import sam
from .poller import EventSourceConfig, FunctionConfig, Poller, ProcessInvoker

log = logging.getLogger(__name__)

DEFAULT_STACK_NAME = "dataset-forwarder-local"
DEFAULT_REGION = "us-east-1"
HOST = "127.0.0.1"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# Airflow's fixed defaults (api/webserver, worker and triggerer log servers): the local stack shares the machine with
# Airflow deployments, so `free_port` never hands these out.
RESERVED_PORTS = frozenset({8080, 8793, 8794})
# Variables of the forwarder's own contract (docs/operate.md) that the local stack reads back from the function.
DLQ_VARIABLE = "DEAD_LETTER_QUEUE_URL"
TABLE_VARIABLE = "IDEMPOTENCY_TABLE"
TARGETS_VARIABLE = "TARGETS_PATH"
DEFAULT_SECRETS_PATH = "/dataset-forwarder/secrets"
INSTALL_HINT = "pip install 'airflow-dataset-forwarder[local]'"


class LocalStackError(RuntimeError):
    """The local stack could not be started or is not what the template should have made."""


_PORTS_HANDED_OUT: set[int] = set()


def free_port(host: str = HOST) -> int:
    """A port free now on `host`, never one of Airflow's fixed defaults nor one handed out before in this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in RESERVED_PORTS and port not in _PORTS_HANDED_OUT:
            _PORTS_HANDED_OUT.add(port)
            return port


def fake_aws_env(endpoint: str | None = None, region: str = DEFAULT_REGION) -> dict[str, str]:
    """AWS SDK settings for a client of the local stack: the endpoint (when given), fake credentials, the region."""
    return {
        **({"AWS_ENDPOINT_URL": endpoint} if endpoint else {}),
        **FAKE_CREDENTIALS,
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
    }


def quiet_moto() -> None:
    """moto logs every request and every resource type it skips; the operator needs none of it."""
    for name in ("werkzeug", "moto", "docker", "urllib3.connectionpool"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"moto(\..*)?$")


def aws_session(region: str = DEFAULT_REGION) -> Any:
    """A boto3 session for the local endpoint that ignores any profile or credentials of the caller."""
    import boto3

    return boto3.session.Session(
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=region,
    )


def client(session: Any, service: str, endpoint: str) -> Any:
    from botocore.config import Config

    # long polls take up to 20 s: the read timeout must outlast them
    config = Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=5, read_timeout=40)
    return session.client(service, endpoint_url=endpoint, config=config)


class MotoServer:
    """moto server with our fixes (`moto_fixes`) on 127.0.0.1: the one way this project starts it.

    In a thread of this process (the local stack), or with `log_path` in a process of its own writing that log
    (tests and benchmarks under load: it then does not compete with them for the GIL).
    """

    def __init__(
        self, port: int | None = None, host: str = HOST, *, log_path: Path | None = None, start_timeout_s: float = 60
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._server: Any = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> MotoServer:
        try:
            from moto.server import ThreadedMotoServer
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise LocalStackError(f"moto server is not installed ({exc}): {INSTALL_HINT}") from exc

        if self._listening():
            raise LocalStackError(f"port {self.port} on {self.host} is already in use")
        if self.log_path is not None:
            return self._start_process(self.log_path)
        from .moto_fixes import apply as fix_moto

        fix_moto()
        quiet_moto()
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()
        return self

    def _start_process(self, log_path: Path) -> MotoServer:
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - moto server of this interpreter's installation
                [sys.executable, "-m", f"{__package__}.moto_fixes", "-H", self.host, "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while not self._listening():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise LocalStackError(f"moto server did not start on {self.endpoint}; see {log_path}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # moto waits for request threads a client's open connection holds
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


@dataclass(frozen=True)
class DeployedStack:
    """What the template created, read back from moto: everything the poller, handler and operators need."""

    stack_name: str
    region: str
    endpoint: str
    template: str
    outputs: dict[str, str]
    parameters: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id
    queue_url: str  # the events queue, as moto addresses it
    queue_arn: str
    dlq_url: str
    table: str
    targets_path: str
    secrets_path: str
    function_logical_id: str
    function_name: str
    function_arn: str
    handler: str
    code_dir: str
    timeout_s: float
    memory_mb: int
    function_environment: dict[str, str]
    batch_size: int
    batching_window_s: float
    maximum_concurrency: int
    function_response_types: list[str] = field(default_factory=list)

    # -- environments

    def aws_env(self) -> dict[str, str]:
        """AWS SDK settings for anything that talks to this stack (fake credentials, the moto endpoint)."""
        return fake_aws_env(self.endpoint, self.region)

    def handler_env(self, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
        """The function's environment as the template sets it, plus the AWS endpoint; plain HTTP targets allowed."""
        return {**self.function_environment, **self.aws_env(), "ALLOW_HTTP_TARGETS": "true", **(overrides or {})}

    def upstream_env(self) -> dict[str, str]:
        """What an upstream Airflow's listener needs (add DATASET_FORWARDER_DEPLOYMENT=<its name>)."""
        return {"DATASET_FORWARDER_QUEUE_URL": self.queue_url, **self.aws_env()}

    def cli_env(self) -> dict[str, str]:
        """What `dataset-forwarder targets|dlq|send-test-event` need to work on this stack."""
        return {
            **self.upstream_env(),
            "DEAD_LETTER_QUEUE_URL": self.dlq_url,
            "TARGETS_PATH": self.targets_path,
            "SECRETS_PATH": self.secrets_path,
        }

    # -- poller settings

    def event_source(self, wait_time_s: int | None = None) -> EventSourceConfig:
        settings: dict[str, Any] = {}
        if wait_time_s is not None:
            settings["wait_time_s"] = wait_time_s
        return EventSourceConfig(
            queue_url=self.queue_url,
            queue_arn=self.queue_arn,
            region=self.region,
            batch_size=self.batch_size,
            batching_window_s=self.batching_window_s,
            maximum_concurrency=self.maximum_concurrency,
            report_batch_item_failures="ReportBatchItemFailures" in self.function_response_types,
            **settings,
        )

    def function(self, env_overrides: Mapping[str, str] | None = None) -> FunctionConfig:
        return FunctionConfig(
            name=self.function_name,
            handler=self.handler,
            code_dir=Path(self.code_dir),
            timeout_s=self.timeout_s,
            memory_mb=self.memory_mb,
            arn=self.function_arn,
            environment=self.handler_env(env_overrides),
        )

    # -- persistence

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeployedStack:
        return cls(**dict(data))


def _queue_name(url_or_arn: str) -> str:
    return url_or_arn.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]


def _sqs_function(template: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The template's function fed by an SQS event (the forwarder)."""
    found = [
        (name, resource.get("Properties", {}))
        for name, resource in template.get("Resources", {}).items()
        if resource.get("Type") == "AWS::Serverless::Function"
        and any(event.get("Type") == "SQS" for event in resource.get("Properties", {}).get("Events", {}).values())
    ]
    if len(found) != 1:
        raise LocalStackError(f"expected one function with an SQS event in the template, found {len(found)}")
    return found[0]


def deploy(
    endpoint: str,
    *,
    stack_name: str = DEFAULT_STACK_NAME,
    parameters: Mapping[str, str] | None = None,
    template_path: Path | None = None,
    region: str = DEFAULT_REGION,
) -> DeployedStack:
    """Create the stack from the template in the CloudFormation at `endpoint` and read back what it made."""
    path = sam.find_template(template_path)
    session = aws_session(region)

    class _Session:  # sam.deploy creates clients by service name: point them at the endpoint
        def client(self, service: str) -> Any:
            return client(session, service, endpoint)

    description = sam.deploy(_Session(), stack_name, dict(parameters or {}), path, region=region)
    if description["StackStatus"] != "CREATE_COMPLETE":
        cloudformation = client(session, "cloudformation", endpoint)
        events = cloudformation.describe_stack_events(StackName=stack_name)["StackEvents"]
        reasons = [
            f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
            for e in events
            if e["ResourceStatus"].endswith("FAILED")
        ]
        raise LocalStackError(f"stack {stack_name} is {description['StackStatus']}: {'; '.join(reasons)}")
    return read_stack(endpoint, stack_name=stack_name, template_path=path, region=region, take_over=True)


def read_stack(
    endpoint: str,
    *,
    stack_name: str = DEFAULT_STACK_NAME,
    template_path: Path | None = None,
    region: str = DEFAULT_REGION,
    take_over: bool = False,
) -> DeployedStack:
    """Read a deployed stack back; `take_over` switches moto's own (Docker-based) event source mapping off."""
    path = sam.find_template(template_path)
    template = sam.load_template(path)
    function_id, function_properties = _sqs_function(template)
    session = aws_session(region)
    cloudformation = client(session, "cloudformation", endpoint)
    lambda_ = client(session, "lambda", endpoint)
    sqs = client(session, "sqs", endpoint)

    description = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    outputs = {o["OutputKey"]: str(o["OutputValue"]) for o in description.get("Outputs", [])}
    parameters = {p["ParameterKey"]: str(p["ParameterValue"]) for p in description.get("Parameters", [])}
    summaries = cloudformation.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    resources = {s["LogicalResourceId"]: s["PhysicalResourceId"] for s in summaries}
    if function_id not in resources:
        raise LocalStackError(f"stack {stack_name} has no {function_id}")

    function = lambda_.get_function_configuration(FunctionName=resources[function_id])
    environment = {k: str(v) for k, v in function.get("Environment", {}).get("Variables", {}).items()}
    mappings = lambda_.list_event_source_mappings(FunctionName=function["FunctionName"])["EventSourceMappings"]
    sqs_mappings = [m for m in mappings if m.get("EventSourceArn", "").startswith("arn:aws:sqs:")]
    if len(sqs_mappings) != 1:
        raise LocalStackError(f"expected one SQS event source mapping on {function['FunctionName']}")
    mapping = sqs_mappings[0]
    if take_over and mapping.get("State") != "Disabled":
        lambda_.update_event_source_mapping(UUID=mapping["UUID"], Enabled=False)

    queue_arn = mapping["EventSourceArn"]
    queue_url = sqs.get_queue_url(QueueName=_queue_name(queue_arn))["QueueUrl"]
    dlq_reference = environment.get(DLQ_VARIABLE) or outputs.get("DeadLetterQueueUrl", "")
    if not dlq_reference:
        raise LocalStackError(f"the function has no {DLQ_VARIABLE}")
    dlq_url = sqs.get_queue_url(QueueName=_queue_name(dlq_reference))["QueueUrl"]
    code_uri = function_properties.get("CodeUri")
    if not isinstance(code_uri, str):
        raise LocalStackError(f"{function_id} has no local CodeUri")
    scaling = mapping.get("ScalingConfig") or {}
    return DeployedStack(
        stack_name=stack_name,
        region=region,
        endpoint=endpoint,
        template=str(path),
        outputs=outputs,
        parameters=parameters,
        resources=resources,
        queue_url=queue_url,
        queue_arn=queue_arn,
        dlq_url=dlq_url,
        table=environment.get(TABLE_VARIABLE, ""),
        targets_path=environment.get(TARGETS_VARIABLE, ""),
        secrets_path=parameters.get("SecretsPath", DEFAULT_SECRETS_PATH),
        function_logical_id=function_id,
        function_name=function["FunctionName"],
        function_arn=function["FunctionArn"],
        handler=function["Handler"],
        code_dir=str((path.parent / code_uri).resolve()),
        timeout_s=float(function.get("Timeout", 3)),
        memory_mb=int(function.get("MemorySize", 128)),
        function_environment=environment,
        batch_size=int(mapping.get("BatchSize", 10)),
        batching_window_s=float(mapping.get("MaximumBatchingWindowInSeconds", 0) or 0),
        # Lambda's SQS pollers scale out without MaximumConcurrency; 5 is where they start
        maximum_concurrency=int(scaling.get("MaximumConcurrency", 5)),
        function_response_types=list(mapping.get("FunctionResponseTypes", [])),
    )


class LocalStack:
    """moto server + the stack from the template + the poller feeding the real handler, in this process.

    The handler runs in execution-environment processes (`ProcessInvoker`) with the function's environment, so
    this process's own environment is never changed.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        stack_name: str = DEFAULT_STACK_NAME,
        parameters: Mapping[str, str] | None = None,
        template_path: Path | None = None,
        region: str = DEFAULT_REGION,
        handler_env: Mapping[str, str] | None = None,
        warm: int = 1,
        wait_time_s: int | None = None,
    ) -> None:
        self.moto = MotoServer(port)
        self.stack_name = stack_name
        self.parameters = dict(parameters or {})
        self.template_path = template_path
        self.region = region
        self.handler_overrides = dict(handler_env or {})
        self.warm = warm
        self.wait_time_s = wait_time_s
        self.deployed: DeployedStack | None = None
        self.poller: Poller | None = None
        self.timings: dict[str, float] = {}

    @property
    def endpoint(self) -> str:
        return self.moto.endpoint

    @property
    def stack(self) -> DeployedStack:
        if self.deployed is None:
            raise LocalStackError("the stack is not deployed: start() first")
        return self.deployed

    def sqs(self) -> Any:
        return client(aws_session(self.region), "sqs", self.endpoint)

    def start(self, *, poll: bool = True) -> LocalStack:
        started = time.monotonic()
        self.moto.start()
        try:
            self.deployed = deploy(
                self.endpoint,
                stack_name=self.stack_name,
                parameters=self.parameters,
                template_path=self.template_path,
                region=self.region,
            )
            self.timings["deploy_s"] = time.monotonic() - started
            if poll:
                self.start_poller()
        except BaseException:
            self.stop()
            raise
        self.timings["start_s"] = time.monotonic() - started
        return self

    def start_poller(self) -> Poller:
        stack = self.stack
        invoker = ProcessInvoker(stack.function(self.handler_overrides), size=stack.maximum_concurrency)
        if self.warm:
            invoker.warm(self.warm)
        self.poller = Poller(self.sqs(), stack.event_source(self.wait_time_s), invoker).start()
        return self.poller

    def stop(self) -> None:
        if self.poller is not None:
            self.poller.stop()
            self.poller = None
        self.moto.stop()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def describe(self) -> dict[str, Any]:
        stack = self.stack
        return {
            "endpoint": self.endpoint,
            "stack": stack.stack_name,
            "queue_url": stack.queue_url,
            "dlq_url": stack.dlq_url,
            "table": stack.table,
            "function": stack.function_name,
            "batch_size": stack.batch_size,
            "batching_window_s": stack.batching_window_s,
            "maximum_concurrency": stack.maximum_concurrency,
        }


def format_env(env: Mapping[str, str], *, export: bool = True) -> str:
    """Shell lines (`export K=V`, quoted) that `eval` accepts."""
    prefix = "export " if export else ""
    return "\n".join(f"{prefix}{key}={shlex.quote(value)}" for key, value in env.items())
