"""AWS Signature Version 4 checked on the receiving side, for the local MWAA emulator.

Written from the SigV4 specification rather than by calling botocore's signer: the emulator then checks what
botocore sends against the specification, instead of botocore against itself. Pure functions; every failure is a
`SignatureError` carrying the error code and HTTP status AWS answers with.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = timedelta(minutes=15)  # how far x-amz-date may be from the server's clock, either way
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_REQUIRED_SIGNED = ("host", "x-amz-date")
_SPACES = re.compile(r"\s+")

Headers = Sequence[tuple[str, str]]  # (name, value) as received, repeated names kept


class SignatureError(Exception):
    """The request is not authenticated; `code` and `status` are what AWS answers."""

    def __init__(self, code: str, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Authorization:
    """The parts of an `Authorization: AWS4-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...` header."""

    access_key: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def parse_authorization(header: str | None) -> Authorization:
    if not header:
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    algorithm, _, rest = header.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError("IncompleteSignatureException", f"Unsupported signature algorithm {algorithm!r}", 400)
    parts: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts[key] = value
    missing = [name for name in ("Credential", "SignedHeaders", "Signature") if not parts.get(name)]
    if missing:
        raise SignatureError(
            "IncompleteSignatureException", f"Authorization header requires {', '.join(missing)} parameter(s)", 400
        )
    credential = parts["Credential"].split("/")
    if len(credential) != 5 or credential[4] != "aws4_request" or not all(credential):
        raise SignatureError(
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/aws4_request",
            400,
        )
    return Authorization(
        access_key=credential[0],
        date=credential[1],
        region=credential[2],
        service=credential[3],
        signed_headers=tuple(parts["SignedHeaders"].split(";")),
        signature=parts["Signature"],
    )


def check_scope(auth: Authorization, headers: Headers, *, service: str, now: datetime) -> str:
    """The request's x-amz-date once scope, signed headers and clock agree; SignatureError otherwise."""
    if auth.service != service:
        raise SignatureError(
            "InvalidSignatureException", f"Credential should be scoped to correct service: '{service}'."
        )
    for name in _REQUIRED_SIGNED:
        if name not in auth.signed_headers:
            raise SignatureError("InvalidSignatureException", f"'{name}' must be a signed header.")
    amz_date = _header(headers, "x-amz-date")
    if amz_date is None:
        raise SignatureError("IncompleteSignatureException", "Authorization requires an X-Amz-Date header.", 400)
    try:
        when = datetime.strptime(amz_date, AMZ_DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise SignatureError(
            "IncompleteSignatureException", f"X-Amz-Date {amz_date!r} is not ISO 8601 basic", 400
        ) from None
    if auth.date != amz_date[:8]:
        raise SignatureError(
            "InvalidSignatureException",
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
            f"'{auth.date}' != '{amz_date[:8]}', from '{amz_date}'.",
        )
    if abs(now - when) > MAX_SKEW:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {amz_date} is not within 15 min of {now.strftime(AMZ_DATE_FORMAT)}.",
        )
    return amz_date


def signature(
    auth: Authorization,
    secret: str,
    *,
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    amz_date: str,
) -> str:
    """The signature a client holding `secret` computes for this request (`target`: path and query, as sent)."""
    path, _, query = target.partition("?")
    canonical = "\n".join(
        [
            method,
            # services other than S3 sign the path URI-encoded once more
            quote(path or "/", safe="/~"),
            _canonical_query(query),
            "".join(f"{name}:{_canonical_value(headers, name)}\n" for name in auth.signed_headers),
            ";".join(auth.signed_headers),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    string_to_sign = "\n".join([ALGORITHM, amz_date, auth.scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (auth.date, auth.region, auth.service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def verify(
    auth: Authorization,
    secret: str,
    *,
    method: str,
    target: str,
    headers: Headers,
    body: bytes,
    amz_date: str,
) -> None:
    expected = signature(auth, secret, method=method, target=target, headers=headers, body=body, amz_date=amz_date)
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        )


def _header(headers: Headers, name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _canonical_value(headers: Headers, name: str) -> str:
    values = [value for key, value in headers if key.lower() == name]
    return ",".join(_SPACES.sub(" ", value.strip()) for value in values)


def _canonical_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    encoded = sorted((quote(key, safe="-_.~"), quote(value, safe="-_.~")) for key, value in pairs)
    return "&".join(f"{key}={value}" for key, value in encoded)
