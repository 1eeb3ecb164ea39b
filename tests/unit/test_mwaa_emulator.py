"""The local MWAA emulator's pure parts: SigV4 checks against botocore's signer, allow-lists, --mwaa-environment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from dataset_forwarder_cli.local.mwaa import EnvironmentSpec, parse_environment_spec
from dataset_forwarder_cli.local.mwaa_identity import Caller
from dataset_forwarder_cli.local.mwaa_sigv4 import (
    Authorization,
    SignatureError,
    check_scope,
    parse_authorization,
    verify,
)

BODY = b'{"Path": "/dags/x/dagRuns", "Method": "POST", "Body": {"logical_date": null}}'


def _signed(
    service: str = "airflow", url: str = "http://127.0.0.1:5000/restapi/team-c", token: str | None = "tok"
) -> tuple[list[tuple[str, str]], datetime]:
    """Headers botocore's SigV4 signer puts on an InvokeRestApi request (with the Host it signs), and when."""
    request = AWSRequest(method="POST", url=url, data=BODY, headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials("AKIDEXAMPLE", "s3cr3t", token), service, "eu-west-1").add_auth(request)
    headers = [(name, str(value)) for name, value in request.headers.items()]
    headers.append(("Host", "127.0.0.1:5000"))
    signed_at = datetime.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return headers, signed_at


def _check(
    headers: list[tuple[str, str]],
    now: datetime,
    *,
    secret: str = "s3cr3t",
    target: str = "/restapi/team-c",
    body: bytes = BODY,
) -> Authorization:
    auth = parse_authorization(next(value for name, value in headers if name == "Authorization"))
    amz_date = check_scope(auth, headers, service="airflow", now=now)
    verify(auth, secret, method="POST", target=target, headers=headers, body=body, amz_date=amz_date)
    return auth


def test_a_botocore_signature_verifies() -> None:
    headers, signed_at = _signed()

    auth = _check(headers, signed_at + timedelta(minutes=14))

    assert (auth.access_key, auth.region, auth.service) == ("AKIDEXAMPLE", "eu-west-1", "airflow")
    assert {"host", "x-amz-date", "x-amz-security-token"} <= set(auth.signed_headers)


def test_a_query_string_is_part_of_what_is_signed() -> None:
    headers, signed_at = _signed(url="http://127.0.0.1:5000/restapi/team-c?b=2&a=x%20y")

    _check(headers, signed_at, target="/restapi/team-c?b=2&a=x%20y")
    with pytest.raises(SignatureError):
        _check(headers, signed_at, target="/restapi/team-c?b=3&a=x%20y")


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"secret": "other"}, "InvalidSignatureException"),
        ({"body": BODY.replace(b"POST", b"GET")}, "InvalidSignatureException"),
        ({"target": "/restapi/team-d"}, "InvalidSignatureException"),
    ],
)
def test_a_changed_request_or_secret_does_not_verify(change: dict[str, object], code: str) -> None:
    headers, signed_at = _signed()
    with pytest.raises(SignatureError) as excinfo:
        _check(headers, signed_at, **change)  # type: ignore[arg-type]
    assert (excinfo.value.code, excinfo.value.status) == (code, 403)


def test_a_signature_for_another_service_is_refused_before_anything_else() -> None:
    headers, signed_at = _signed(service="execute-api")
    with pytest.raises(SignatureError) as excinfo:
        _check(headers, signed_at)
    assert excinfo.value.code == "InvalidSignatureException"
    assert excinfo.value.message == "Credential should be scoped to correct service: 'airflow'."


@pytest.mark.parametrize("skew", [timedelta(minutes=16), -timedelta(minutes=16)])
def test_a_signature_more_than_15_minutes_off_is_expired(skew: timedelta) -> None:
    headers, signed_at = _signed()
    with pytest.raises(SignatureError) as excinfo:
        _check(headers, signed_at + skew)
    assert excinfo.value.code == "InvalidSignatureException"
    assert excinfo.value.message.startswith("Signature expired")


def test_host_and_date_must_be_signed() -> None:
    headers, signed_at = _signed()
    unsigned_host = [
        (name, value.replace("content-type;host;", "content-type;") if name == "Authorization" else value)
        for name, value in headers
    ]
    with pytest.raises(SignatureError, match="'host' must be a signed header"):
        _check(unsigned_host, signed_at)


@pytest.mark.parametrize(
    ("header", "code", "status"),
    [
        (None, "MissingAuthenticationTokenException", 403),
        ("", "MissingAuthenticationTokenException", 403),
        ("Bearer abc", "IncompleteSignatureException", 400),
        ("AWS4-HMAC-SHA256 Credential=AKID/20261206/us-east-1/airflow", "IncompleteSignatureException", 400),
        (
            "AWS4-HMAC-SHA256 Credential=AKID/20261206/airflow/aws4_request, SignedHeaders=host, Signature=ab",
            "IncompleteSignatureException",
            400,
        ),
    ],
)
def test_a_missing_or_malformed_authorization_header(header: str | None, code: str, status: int) -> None:
    with pytest.raises(SignatureError) as excinfo:
        parse_authorization(header)
    assert (excinfo.value.code, excinfo.value.status) == (code, status)


@pytest.mark.parametrize(
    ("identity", "allowed"),
    [
        ("*", True),
        ("210987654321", True),
        ("123456789012", False),
        ("arn:aws:sts::210987654321:assumed-role/invoke/forwarder", True),
        ("arn:aws:sts::210987654321:assumed-role/invoke/other-session", False),
        ("arn:aws:iam::210987654321:role/invoke", True),
        ("arn:aws:iam::210987654321:role/service-role/invoke", True),  # a role's path is not in its sessions' ARN
        ("arn:aws:iam::210987654321:role/invoke-not", False),
        ("arn:aws:iam::123456789012:role/invoke", False),
        ("arn:aws:iam::210987654321:user/invoke", False),
    ],
)
def test_allow_list_entries_name_an_assumed_role_session(identity: str, allowed: bool) -> None:
    caller = Caller("arn:aws:sts::210987654321:assumed-role/invoke/forwarder", "210987654321")
    assert caller.matches(identity) is allowed


def test_environment_spec_with_every_option() -> None:
    spec = parse_environment_spec(
        "team-c=http://127.0.0.1:8080,airflow=2,user=admin,password-env=TEAM_C_PW,region=eu-west-1",
        {"TEAM_C_PW": "pw"},
    )
    assert spec == EnvironmentSpec("team-c", "http://127.0.0.1:8080", "2", "admin", "pw", "eu-west-1")
    assert "pw" not in repr(spec)


def test_environment_spec_defaults_to_airflow_3_without_login() -> None:
    assert parse_environment_spec("team-c=https://airflow.example", {}) == EnvironmentSpec(
        "team-c", "https://airflow.example"
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("team-c", "expected NAME=URL"),
        ("9team=http://x", "expected NAME=URL"),
        ("team-c=ftp://x", "expected NAME=URL"),
        ("team-c=http://x,airflow=4", "airflow= takes 2 or 3"),
        ("team-c=http://x,password=pw", "unknown option"),
        ("team-c=http://x,password-env=UNSET_VARIABLE", "that variable is not set"),
    ],
)
def test_environment_spec_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_environment_spec(text, {})
