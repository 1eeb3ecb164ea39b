"""Who signed a request to the local MWAA emulator: the secret of an access key, and the caller behind it.

Keys come from a static map (key -> secret, optionally with the caller's ARN) and, given a moto server, from moto
itself: moto keeps the secret of every key it issued (STS AssumeRole/GetSessionToken credentials, IAM access keys)
and shows it in its state dump `/moto-api/data.json`, and its STS `GetCallerIdentity` names the caller of any key
(assumed-role ARN for temporary credentials, the IAM user for an IAM key, its default user for other keys). So
signatures are verified in full for moto-issued credentials too. Results are cached per access key.

moto 5.2's state dump fails (500) once moto holds a Lambda function and Docker is absent (the local stack's case):
a Lambda model's Docker client raises while the dump reads it. Then a key moto issued is still told apart from an
unknown one (moto's GetCallerIdentity names its default user for keys it never issued), but its secret is out of
reach: its signature's scope and date are checked, its signature and session token are not (logged once).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "123456789012"  # moto's default account, and the emulator's without moto
MOTO_UNKNOWN_CALLER = f"arn:aws:sts::{DEFAULT_ACCOUNT}:user/moto"  # moto's answer for a key it never issued
_ACCOUNT = re.compile(r"^\d{12}$")
_ARN = re.compile(r"^arn:aws[\w-]*:(?P<service>iam|sts)::(?P<account>\d{12}):(?P<resource>.+)$")


@dataclass(frozen=True)
class Caller:
    """The principal behind an access key, as STS GetCallerIdentity names it."""

    arn: str
    account: str

    def matches(self, identity: str) -> bool:
        """Whether an allow-list entry names this caller.

        An entry is `*`, an account id (any principal of that account), an exact ARN, or an IAM role ARN
        `arn:aws:iam::ACCOUNT:role/ROLE`, which admits every session of that role
        (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`), as a role's own policy would.
        """
        if identity in ("*", self.arn):
            return True
        if _ACCOUNT.match(identity):
            return identity == self.account
        wanted, mine = _ARN.match(identity), _ARN.match(self.arn)
        if wanted is None or mine is None or wanted["account"] != mine["account"]:
            return False
        if wanted["service"] != "iam" or not wanted["resource"].startswith("role/"):
            return False
        role_name = wanted["resource"].rsplit("/", 1)[-1]  # a session's ARN drops the role's path
        return mine["resource"].startswith(f"assumed-role/{role_name}/")


@dataclass(frozen=True)
class Key:
    """What the emulator knows of one access key."""

    secret: str | None  # None: moto issued it, but its state dump is out of reach (signature not verifiable)
    session_token: str | None = None  # moto's token for temporary credentials: the request must carry it
    caller: Caller | None = None


class Identities:
    """Access key -> secret and caller, from the static map first, then from moto (if an endpoint is given)."""

    def __init__(
        self,
        keys: Mapping[str, str] | None = None,
        *,
        moto_endpoint: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.moto_endpoint = moto_endpoint.rstrip("/") if moto_endpoint else None
        self.region = region
        self._lock = threading.Lock()
        self._keys: dict[str, Key] = {}
        self._warned = False
        for access_key, secret in (keys or {}).items():
            self.add_key(access_key, secret)

    def add_key(self, access_key: str, secret: str, arn: str | None = None) -> None:
        """A key the emulator accepts; without an ARN, the caller is asked of moto (or is the default account's)."""
        caller = Caller(arn, _account_of(arn)) if arn else None
        with self._lock:
            self._keys[access_key] = Key(secret, caller=caller)

    def key(self, access_key: str) -> Key | None:
        """The key's secret (and token), or None when neither the map nor moto knows it."""
        with self._lock:
            known = self._keys.get(access_key)
        if known is not None or self.moto_endpoint is None:
            return known
        try:
            issued = self._moto_key(access_key)
        except (urllib.error.URLError, OSError, ValueError):
            issued = self._moto_key_unverified(access_key)
        if issued is not None:
            with self._lock:
                issued = self._keys.setdefault(access_key, issued)
        return issued

    def caller(self, access_key: str, key: Key, session_token: str | None) -> Caller:
        """Who holds the key: its configured ARN, else moto's GetCallerIdentity, else the default account's root."""
        if key.caller is not None:
            return key.caller
        if self.moto_endpoint is None:
            caller = Caller(f"arn:aws:iam::{DEFAULT_ACCOUNT}:root", DEFAULT_ACCOUNT)
        else:
            caller = self._moto_caller(access_key, key.secret or "not-verified", session_token)
        with self._lock:
            self._keys[access_key] = Key(key.secret, key.session_token, caller)
        return caller

    # -- moto

    def _moto_key(self, access_key: str) -> Key | None:
        with urllib.request.urlopen(f"{self.moto_endpoint}/moto-api/data.json", timeout=10) as answer:  # noqa: S310 - our own moto URL
            state = json.load(answer)
        for record in _issued_keys(state):
            if record.get("access_key_id") == access_key and isinstance(record.get("secret_access_key"), str):
                token = record.get("session_token")
                return Key(record["secret_access_key"], token if isinstance(token, str) else None)
        return None

    def _moto_key_unverified(self, access_key: str) -> Key | None:
        if not self._warned:
            self._warned = True
            log.warning(
                "moto's /moto-api/data.json failed: signatures of keys moto issued are not verified (scope only)"
            )
        caller = self._moto_caller(access_key, "not-verified", None)
        return None if caller.arn == MOTO_UNKNOWN_CALLER else Key(None, caller=caller)

    def _moto_caller(self, access_key: str, secret: str, session_token: str | None) -> Caller:
        import boto3

        sts = boto3.client(
            "sts",
            endpoint_url=self.moto_endpoint,
            region_name=self.region,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret,
            aws_session_token=session_token,
        )
        answer = sts.get_caller_identity()
        return Caller(str(answer["Arn"]), str(answer["Account"]))


def _issued_keys(state: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every credential record in moto's state dump: STS-issued temporary keys and IAM access keys."""
    for service, models in (("sts", ("AssumedRole", "Token")), ("iam", ("AccessKey",))):
        for model in models:
            for record in (state.get(service) or {}).get(model) or []:
                if isinstance(record, Mapping):
                    yield record


def _account_of(arn: str) -> str:
    match = _ARN.match(arn)
    if match is None:
        raise ValueError(f"not an IAM or STS ARN: {arn!r}")
    return match["account"]
