"""The local MWAA emulator driven by a real boto3 `mwaa` client, in front of the fake Airflow APIs (and moto's STS).

Every answer is checked the way a caller sees it: the exception class boto3 raises and the modeled members
botocore puts in `e.response` (`RestApiStatusCode`, `RestApiResponse`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, ReadTimeoutError

from dataset_forwarder_cli.local.mwaa import MwaaEmulator
from devkit.airflow_api import FakeAirflow, Fault
from devkit.moto_env import aws_session
from tests.integration.conftest import wait_for

BEARS = "s3://lake/bears"
OTHER_ACCOUNT_USER = "arn:aws:iam::999999999999:user/someone-else"


@pytest.fixture
def emulator() -> Iterator[MwaaEmulator]:
    with MwaaEmulator(relay_timeout_s=1.0, max_hang_s=10) as started:
        yield started


@pytest.fixture
def af3(airflow: Callable[..., FakeAirflow], emulator: MwaaEmulator) -> FakeAirflow:
    fake = airflow("3", auth="airflow-token", datasets=[BEARS])
    emulator.add_environment("team-c-prod", fake.url, airflow="3", username="admin", password="admin-pw")
    return fake


@pytest.fixture
def af2(airflow: Callable[..., FakeAirflow], emulator: MwaaEmulator) -> FakeAirflow:
    fake = airflow("2", auth="basic", datasets=[BEARS])
    emulator.add_environment("team-d-prod", fake.url, airflow="2", username="admin", password="admin-pw")
    return fake


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    response = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


# --------------------------------------------------------------------------------------------- relaying


def test_version_get_reaches_each_major_under_its_rest_root(
    emulator: MwaaEmulator, af3: FakeAirflow, af2: FakeAirflow
) -> None:
    mwaa = emulator.client()

    three = mwaa.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
    two = mwaa.invoke_rest_api(Name="team-d-prod", Path="/version", Method="GET")

    assert (three["RestApiStatusCode"], three["RestApiResponse"]["version"]) == (200, "3.3.2")
    assert (two["RestApiStatusCode"], two["RestApiResponse"]["version"]) == (200, "2.11.2")
    assert ("GET", "/api/v2/version", 200) in af3.requests
    assert ("GET", "/api/v1/version", 200) in af2.requests


def test_asset_and_dataset_events_are_posted_with_the_environments_login(
    emulator: MwaaEmulator, af3: FakeAirflow, af2: FakeAirflow
) -> None:
    mwaa = emulator.client()

    three = mwaa.invoke_rest_api(
        Name="team-c-prod",
        Path="/assets/events",
        Method="POST",
        Body={"asset_id": 1, "extra": {"rows": 42}, "partition_key": "2026-12-06"},
    )
    two = mwaa.invoke_rest_api(
        Name="team-d-prod", Path="/datasets/events", Method="POST", Body={"dataset_uri": BEARS, "extra": {"rows": 7}}
    )

    assert three["RestApiStatusCode"] == 200
    assert three["RestApiResponse"]["extra"] == {"rows": 42, "from_rest_api": True}
    assert two["RestApiResponse"]["dataset_uri"] == BEARS
    (event3,) = af3.events
    assert (event3.uri, event3.extra, event3.partition_key) == (BEARS, {"rows": 42}, "2026-12-06")
    assert (event3.authorization or "").startswith("Bearer ")
    (event2,) = af2.events
    assert event2.extra == {"rows": 7}
    assert (event2.authorization or "").startswith("Basic ")


def test_airflow3_token_is_fetched_once_and_reused(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    mwaa = emulator.client()
    for _ in range(3):
        mwaa.invoke_rest_api(Name="team-c-prod", Path="/assets", Method="GET", QueryParameters={"limit": 1})

    assert af3.count("POST", "/auth/token") == 1
    assert af3.count("GET", "/api/v2/assets?limit=1") == 3


class _DagRuns(BaseHTTPRequestHandler):
    """Just enough of Airflow 3's `POST /api/v2/dags/{dag_id}/dagRuns` to see what the emulator relays."""

    received: list[tuple[str, str, Any]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.path, self.headers.get("Authorization", ""), body))
        dag_id = self.path.split("/")[4]
        answer = json.dumps({"dag_id": dag_id, "dag_run_id": body.get("dag_run_id"), "state": "queued"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def dag_runs_airflow() -> Iterator[tuple[str, list[tuple[str, str, Any]]]]:
    received: list[tuple[str, str, Any]] = []
    handler = type("Handler", (_DagRuns,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", received
    server.shutdown()
    server.server_close()


def test_dag_run_post_relays_path_body_and_query(
    emulator: MwaaEmulator, dag_runs_airflow: tuple[str, list[tuple[str, str, Any]]]
) -> None:
    url, received = dag_runs_airflow
    emulator.add_environment("team-e", url, airflow="3")
    body = {"dag_run_id": "dataset_forwarder__e1", "logical_date": None, "conf": {"dataset_forwarder": {"id": "e1"}}}

    answer = emulator.client().invoke_rest_api(
        Name="team-e", Path="/dags/refresh/dagRuns", Method="POST", Body=body, QueryParameters={"tag": ["a", "b"]}
    )

    assert answer["RestApiStatusCode"] == 200
    assert answer["RestApiResponse"] == {"dag_id": "refresh", "dag_run_id": "dataset_forwarder__e1", "state": "queued"}
    assert received == [("/api/v2/dags/refresh/dagRuns?tag=a&tag=b", "", body)]


# --------------------------------------------------------------------------------------------- Airflow's errors


def test_airflow_404_is_a_rest_api_client_exception_with_its_status_and_body(
    emulator: MwaaEmulator, af3: FakeAirflow
) -> None:
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.RestApiClientException) as excinfo:
        mwaa.invoke_rest_api(Name="team-c-prod", Path="/assets/99", Method="GET")

    assert _error(excinfo) == ("RestApiClientException", 400)
    assert excinfo.value.response["RestApiStatusCode"] == 404
    assert excinfo.value.response["RestApiResponse"] == {"detail": "The Asset with ID: `99` was not found"}


def test_airflow_2_html_404_comes_back_as_text(emulator: MwaaEmulator, af2: FakeAirflow) -> None:
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.RestApiClientException) as excinfo:
        mwaa.invoke_rest_api(Name="team-d-prod", Path="/../nowhere", Method="GET")

    assert excinfo.value.response["RestApiStatusCode"] == 404
    assert "Not Found" in excinfo.value.response["RestApiResponse"]


def test_airflow_500_is_a_rest_api_server_exception(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    af3.inject(Fault(status=500, path_prefix="/api/v2/assets/events"))
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.RestApiServerException) as excinfo:
        mwaa.invoke_rest_api(Name="team-c-prod", Path="/assets/events", Method="POST", Body={"asset_id": 1})

    assert _error(excinfo) == ("RestApiServerException", 400)
    assert excinfo.value.response["RestApiStatusCode"] == 500
    assert excinfo.value.response["RestApiResponse"] == {"detail": "injected"}


def test_slow_airflow_times_out_as_a_504_server_exception_yet_may_still_apply_the_post(
    emulator: MwaaEmulator, af3: FakeAirflow
) -> None:
    af3.inject(Fault(delay_s=2.0, path_prefix="/api/v2/assets/events"))  # the emulator's deadline here is 1 s
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.RestApiServerException) as excinfo:
        mwaa.invoke_rest_api(Name="team-c-prod", Path="/assets/events", Method="POST", Body={"asset_id": 1})

    assert excinfo.value.response["RestApiStatusCode"] == 504
    af3.wait_for_events(1, timeout_s=5)  # the answer was lost, the event was not: an ambiguous POST


def test_unreachable_airflow_is_a_502_server_exception(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    af3.stop()
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.RestApiServerException) as excinfo:
        mwaa.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")

    assert excinfo.value.response["RestApiStatusCode"] == 502


# --------------------------------------------------------------------------------------------- MWAA's own errors


def test_unknown_environment_is_resource_not_found(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.ResourceNotFoundException) as excinfo:
        mwaa.invoke_rest_api(Name="team-x", Path="/version", Method="GET")
    assert _error(excinfo) == ("ResourceNotFoundException", 404)

    with pytest.raises(ClientError) as elsewhere:  # an environment lives in one region
        emulator.client(region="eu-west-1").invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
    assert _error(elsewhere) == ("ResourceNotFoundException", 404)
    assert af3.requests == []


@pytest.mark.parametrize(
    ("path", "method", "fragment"),
    [
        ("/dags/" + "d" * 51 + "/dagRuns", "POST", "length less than or equal to 64"),
        ("/version", "HEAD", "enum value set: [GET, PUT, POST, PATCH, DELETE]"),
    ],
)
def test_invalid_input_is_a_validation_exception(
    emulator: MwaaEmulator, af3: FakeAirflow, path: str, method: str, fragment: str
) -> None:
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.ValidationException) as excinfo:
        mwaa.invoke_rest_api(Name="team-c-prod", Path=path, Method=method)

    assert _error(excinfo) == ("ValidationException", 400)
    assert fragment in excinfo.value.response["Error"]["Message"]
    assert af3.requests == []


def test_a_64_character_path_is_still_valid(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    path = "/assets/" + "9" * 56
    mwaa = emulator.client()
    with pytest.raises(mwaa.exceptions.RestApiClientException):
        mwaa.invoke_rest_api(Name="team-c-prod", Path=path, Method="GET")
    assert len(path) == 64


def _signed(
    emulator: MwaaEmulator, *, service: str = "airflow", secret: str = "testing", key: str = "testing"
) -> requests.Response:
    """InvokeRestApi signed by botocore's SigV4 signer with any service name and credentials, sent as is."""
    body = json.dumps({"Path": "/version", "Method": "GET"})
    request = AWSRequest(
        method="POST",
        url=f"{emulator.endpoint}/restapi/team-c-prod",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    SigV4Auth(Credentials(key, secret), service, emulator.region).add_auth(request)
    prepared = request.prepare()
    return requests.post(prepared.url, data=body, headers=dict(prepared.headers), timeout=10)


def test_signature_for_another_service_is_refused(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    assert _signed(emulator).status_code == 200  # the same request, signed for airflow, passes

    refused = _signed(emulator, service="execute-api")

    assert refused.status_code == 403
    assert refused.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    assert refused.json() == {"message": "Credential should be scoped to correct service: 'airflow'."}


def test_unsigned_bad_and_unknown_credentials_are_refused_as_aws_does(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    unsigned = requests.post(f"{emulator.endpoint}/restapi/team-c-prod", json={"Path": "/version", "Method": "GET"})
    assert (unsigned.status_code, unsigned.headers["x-amzn-ErrorType"]) == (403, "MissingAuthenticationTokenException")

    with pytest.raises(ClientError) as wrong_secret:
        emulator.client(secret="not-the-secret").invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
    assert _error(wrong_secret) == ("InvalidSignatureException", 403)

    with pytest.raises(ClientError) as unknown_key:
        emulator.client(access_key="AKIAUNKNOWN").invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
    assert _error(unknown_key) == ("UnrecognizedClientException", 403)
    assert af3.requests == []


def test_caller_not_on_the_allow_list_is_denied_then_allowed(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    emulator.add_key("AKIAOTHERACCOUNT", "other-secret", arn=OTHER_ACCOUNT_USER)
    other = emulator.client(access_key="AKIAOTHERACCOUNT", secret="other-secret")

    with pytest.raises(other.exceptions.AccessDeniedException) as excinfo:
        other.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
    assert _error(excinfo) == ("AccessDeniedException", 403)
    assert excinfo.value.response["Error"]["Message"] == (
        f"User: {OTHER_ACCOUNT_USER} is not authorized to perform: airflow:InvokeRestApi on resource: "
        "arn:aws:airflow:us-east-1:123456789012:role/team-c-prod/Admin"
    )
    assert af3.requests == []

    emulator.allow("team-c-prod", "999999999999")
    assert other.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")["RestApiStatusCode"] == 200


# --------------------------------------------------------------------------------------------- moto STS


@pytest.fixture
def sts(moto_endpoint: str) -> Any:
    return aws_session().client("sts", endpoint_url=moto_endpoint)


def _assume(sts: Any, role: str, session: str = "forwarder") -> dict[str, str]:
    credentials: dict[str, str] = sts.assume_role(RoleArn=role, RoleSessionName=session)["Credentials"]
    return credentials


def test_moto_assumed_role_is_verified_and_allowed_by_its_role_or_denied(
    moto_endpoint: str, sts: Any, airflow: Callable[..., FakeAirflow]
) -> None:
    fake = airflow("3", datasets=[BEARS])
    invoke_role = "arn:aws:iam::210987654321:role/dataset-forwarder-invoke"
    with MwaaEmulator(keys={}, moto_endpoint=moto_endpoint) as emulator:
        emulator.add_environment("team-c-prod", fake.url, account="210987654321", allow=[invoke_role])
        allowed = _assume(sts, invoke_role)
        denied = _assume(sts, "arn:aws:iam::210987654321:role/someone-else")

        def client(credentials: dict[str, str], **overrides: str) -> Any:
            settings = {
                "access_key": credentials["AccessKeyId"],
                "secret": credentials["SecretAccessKey"],
                "session_token": credentials["SessionToken"],
                **overrides,
            }
            return emulator.client(**settings)

        answer = client(allowed).invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
        assert answer["RestApiStatusCode"] == 200
        assert emulator.calls[-1].caller == "arn:aws:sts::210987654321:assumed-role/dataset-forwarder-invoke/forwarder"

        with pytest.raises(ClientError) as excinfo:
            client(denied).invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
        assert _error(excinfo) == ("AccessDeniedException", 403)
        assert "assumed-role/someone-else/forwarder" in excinfo.value.response["Error"]["Message"]

        with pytest.raises(ClientError) as forged:  # the key id alone is not enough: the secret is checked
            client(allowed, secret="guessed").invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
        assert _error(forged) == ("InvalidSignatureException", 403)

        with pytest.raises(ClientError) as wrong_token:
            client(allowed, session_token="other").invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
        assert _error(wrong_token) == ("UnrecognizedClientException", 403)

        assert fake.count("GET", "/api/v2/version") == 1


# --------------------------------------------------------------------------------------------- faults and calls


def test_throttling_fault_for_a_number_of_calls(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    emulator.set_fault("team-c-prod", "throttle", times=2)
    mwaa = emulator.client()
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            mwaa.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
        assert _error(excinfo) == ("ThrottlingException", 429)

    assert mwaa.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")["RestApiStatusCode"] == 200
    retrying = emulator.client(max_attempts=3)  # boto3's standard retries treat it as throttling
    emulator.set_fault("team-c-prod", "throttle", times=2)
    assert retrying.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")["RestApiStatusCode"] == 200
    assert [call.error for call in emulator.calls_to("team-c-prod")] == [
        "ThrottlingException",
        "ThrottlingException",
        None,
        "ThrottlingException",
        "ThrottlingException",
        None,
    ]
    assert af3.count("GET", "/api/v2/version") == 2


@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [("deny", "AccessDeniedException", 403), ("internal", "InternalServerException", 500)],
)
def test_deny_and_internal_faults_until_cleared(
    emulator: MwaaEmulator, af3: FakeAirflow, kind: Any, code: str, status: int
) -> None:
    emulator.set_fault("team-c-prod", kind)
    mwaa = emulator.client()
    for _ in range(2):
        with pytest.raises(ClientError) as excinfo:
            mwaa.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")
        assert _error(excinfo) == (code, status)

    emulator.clear_fault("team-c-prod")
    assert mwaa.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")["RestApiStatusCode"] == 200
    assert af3.count("GET", "/api/v2/version") == 1


def test_hang_fault_holds_the_call_until_the_client_gives_up(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    emulator.set_fault("team-c-prod", "hang")
    impatient = emulator.client(read_timeout_s=0.5)
    with pytest.raises(ReadTimeoutError):
        impatient.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")

    emulator.clear_fault("team-c-prod")  # releases the held request too
    wait_for(lambda: len(emulator.calls) == 1, timeout_s=5, what="the hung call to be recorded")
    assert (emulator.calls[0].status, emulator.calls[0].error) == (0, "hang")
    assert impatient.invoke_rest_api(Name="team-c-prod", Path="/version", Method="GET")["RestApiStatusCode"] == 200
    assert af3.count("GET", "/api/v2/version") == 1


def test_calls_are_recorded_with_what_was_asked_and_answered(emulator: MwaaEmulator, af3: FakeAirflow) -> None:
    mwaa = emulator.client()
    mwaa.invoke_rest_api(Name="team-c-prod", Path="/assets", Method="GET", QueryParameters={"uri_pattern": "lake"})
    with pytest.raises(mwaa.exceptions.RestApiClientException):
        mwaa.invoke_rest_api(Name="team-c-prod", Path="/assets/events", Method="POST", Body={"asset_id": 5})

    first, second = emulator.calls_to("team-c-prod")
    assert (first.method, first.path, first.query, first.status, first.rest_api_status) == (
        "GET",
        "/assets",
        {"uri_pattern": "lake"},
        200,
        200,
    )
    assert (second.body, second.error, second.rest_api_status) == ({"asset_id": 5}, "RestApiClientException", 404)
    assert first.caller == "arn:aws:iam::123456789012:root"
    emulator.clear_calls()
    assert emulator.calls == []


# --------------------------------------------------------------------------------------------- `local up`


def test_local_up_runs_the_emulator_for_the_handler_and_the_cli(
    tmp_path: Path, airflow: Callable[..., FakeAirflow]
) -> None:
    """`local up --mwaa-environment` serves InvokeRestApi, tells the handler and `local env`, knows moto's keys."""
    fake = airflow("3", auth="airflow-token", username="forwarder", password="pw-from-the-environment")
    state_dir = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | {"TEAM_C_PW": "pw-from-the-environment"}
    role = "arn:aws:iam::123456789012:role/dataset-forwarder-invoke"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dataset_forwarder_cli.main", "local", *args, "--state-dir", str(state_dir)],
            capture_output=True,
            text=True,
            env=env,
            timeout=200,
            check=False,
        )

    spec = f"team-c={fake.url},airflow=3,user=forwarder,password-env=TEAM_C_PW"
    up = run("up", "--json", "--warm", "0", "--mwaa-environment", spec, "--mwaa-allow", f"team-c={role}")
    assert up.returncode == 0, up.stderr + up.stdout
    try:
        state = json.loads(up.stdout)
        endpoint = state["mwaa"]["endpoint"]
        assert state["mwaa"]["environments"] == ["team-c"]
        assert json.loads(run("env", "--json").stdout)["AWS_ENDPOINT_URL_MWAA"] == endpoint
        assert json.loads(run("env", "--for", "handler", "--json").stdout)["AWS_ENDPOINT_URL_MWAA"] == endpoint
        assert f"mwaa         {endpoint}" in run("status").stdout

        config = Config(inject_host_prefix=False, retries={"total_max_attempts": 1})
        moto = state["stack"]["endpoint"]
        credentials = boto3.client(
            "sts", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        ).assume_role(RoleArn=role, RoleSessionName="forwarder")["Credentials"]
        mwaa = boto3.client(
            "mwaa",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id=credentials["AccessKeyId"],
            aws_secret_access_key=credentials["SecretAccessKey"],
            aws_session_token=credentials["SessionToken"],
            config=config,
        )
        assert mwaa.invoke_rest_api(Name="team-c", Path="/version", Method="GET")["RestApiStatusCode"] == 200
        assert fake.count("POST", "/auth/token") == 1  # it logged in with the password from the environment

        def refusal(key: str) -> str:
            other = boto3.client(
                "mwaa",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id=key,
                aws_secret_access_key="testing",
                config=config,
            )
            with pytest.raises(ClientError) as excinfo:
                other.invoke_rest_api(Name="team-c", Path="/version", Method="GET")
            return str(excinfo.value.response["Error"]["Code"])

        assert refusal("testing") == "AccessDeniedException"  # --mwaa-allow replaced the default (the account)
        assert refusal("AKIANEVERISSUED") == "UnrecognizedClientException"
    finally:
        down = run("down")
    assert down.returncode == 0, down.stderr
    for text in (up.stdout, up.stderr, (state_dir / "local.log").read_text()):
        assert "pw-from-the-environment" not in text
