"""Credentials for the HTTPS way in: one authenticator per `auth.type`, registered in `AUTH_TYPES`.

An authenticator turns the target's SecureString into request headers, renews them after a 401/403,
and names every value it has put on the wire so that failures can be redacted of all of them.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from dataset_forwarder.outcomes import AUTH, DeliveryFailed
from dataset_forwarder.single_flight import SingleFlight

if TYPE_CHECKING:
    from dataset_forwarder.targets import ParseRules
    from dataset_forwarder.transport import Reply

TOKEN_REFRESH_MARGIN_S = 60.0
TOKEN_DEFAULT_LIFETIME_S = 300.0


class SecretSource(Protocol):
    def get(self, name: str, *, fresh: bool = False) -> str: ...

    def known_values(self) -> list[str]: ...


# POST a JSON body to a path under the target's url (not under the REST root); no auth headers.
Exchange = Callable[[str, Any], "Reply"]


@dataclass(frozen=True)
class Auth:
    """`auth` of an HTTPS target: its type, the SSM parameter with the credential, and a username."""

    type: str
    secret: str | None = None
    username: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type}
        if self.username is not None:
            data["username"] = self.username
        if self.secret is not None:
            data["secret"] = self.secret
        return data


class Authenticator(Protocol):
    def headers(self, *, fresh: bool) -> dict[str, str]:
        """The headers of one call; `fresh` after a 401/403: read the credential again."""

    def in_play(self) -> list[str]:
        """Every credential value this authenticator has used, in the forms it sent them."""

    @property
    def renewable(self) -> bool:
        """Whether a 401/403 may be cured by reading the credential again."""


class _Secrets:
    def __init__(self, auth: Auth, secrets: SecretSource, target: str) -> None:
        self._auth = auth
        self._secrets = secrets
        self._target = target

    def read(self, *, fresh: bool) -> str:
        if not self._auth.secret:
            raise DeliveryFailed(AUTH, f"target {self._target} names no secret", transient=False)
        return self._secrets.get(self._auth.secret, fresh=fresh)

    def known(self) -> list[str]:
        return self._secrets.known_values()


class NoAuth:
    renewable: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, auth: Auth, secrets: SecretSource, exchange: Exchange, target: str, **_: Any) -> None:
        pass

    def headers(self, *, fresh: bool) -> dict[str, str]:
        return {}

    def in_play(self) -> list[str]:
        return []


class BearerAuth:
    """A static token (Astro deployment/workspace/organization API token, or any bearer token)."""

    renewable: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("secret",)

    def __init__(self, auth: Auth, secrets: SecretSource, exchange: Exchange, target: str, **_: Any) -> None:
        self._secret = _Secrets(auth, secrets, target)

    def headers(self, *, fresh: bool) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._secret.read(fresh=fresh)}"}

    def in_play(self) -> list[str]:
        return self._secret.known()


class BasicAuth:
    """Username and password (Airflow 2's basic_auth backend)."""

    renewable: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("secret", "username")

    def __init__(self, auth: Auth, secrets: SecretSource, exchange: Exchange, target: str, **_: Any) -> None:
        self._username = auth.username or ""
        self._secret = _Secrets(auth, secrets, target)

    def _pair(self, password: str) -> str:
        return base64.b64encode(f"{self._username}:{password}".encode()).decode()

    def headers(self, *, fresh: bool) -> dict[str, str]:
        return {"Authorization": f"Basic {self._pair(self._secret.read(fresh=fresh))}"}

    def in_play(self) -> list[str]:
        known = self._secret.known()
        return known + [self._pair(value) for value in known]  # an echoed header carries the pair in base64


def _jwt_expiry(token: str) -> float | None:
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) else None
    except (IndexError, ValueError, AttributeError, RecursionError):
        return None


class AirflowTokenAuth:
    """Airflow 3: username/password exchanged at `POST /auth/token` for a JWT, cached until shortly before exp."""

    renewable: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ("secret", "username")

    def __init__(
        self,
        auth: Auth,
        secrets: SecretSource,
        exchange: Exchange,
        target: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._username = auth.username or ""
        self._secret = _Secrets(auth, secrets, target)
        self._exchange = exchange
        self._target = target
        self._clock = clock
        self._lock = threading.Lock()
        self._token: tuple[str, float] | None = None
        self._tokens_seen: list[str] = []
        self._flight = SingleFlight()

    def headers(self, *, fresh: bool) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._jwt(fresh=fresh)}"}

    def in_play(self) -> list[str]:
        with self._lock:
            return self._secret.known() + list(self._tokens_seen)

    def _jwt(self, *, fresh: bool) -> str:
        now = self._clock()
        with self._lock:
            cached = self._token
        if cached and not fresh and cached[1] > now:
            return cached[0]
        if fresh:  # after a 401/403: this caller's own new token, with the secret read again
            return self._fetch(now, fresh=True)
        return self._flight.run("token", lambda: self._fetch(now, fresh=False))

    def _fetch(self, now: float, *, fresh: bool) -> str:
        body = {"username": self._username, "password": self._secret.read(fresh=fresh)}
        response = self._exchange("/auth/token", body)
        if response.status_code in (401, 403) and not fresh:
            body["password"] = self._secret.read(fresh=True)
            response = self._exchange("/auth/token", body)
        if response.status_code not in (200, 201):
            # No excerpt of this answer: it is the one place a downstream may echo the password.
            detail = f"POST /auth/token on {self._target} answered {response.status_code}"
            if response.status_code in (400, 401, 403, 422):
                raise DeliveryFailed(AUTH, f"{self._target} refused the credentials at /auth/token", transient=False)
            from dataset_forwarder.outcomes import failure_for_status

            raise failure_for_status(response.status_code, response.headers, detail, self.in_play())
        try:
            token = str(response.json()["access_token"])
        except (ValueError, KeyError, TypeError):
            raise DeliveryFailed(AUTH, "/auth/token answered without an access_token", transient=False) from None
        expiry = _jwt_expiry(token) or now + TOKEN_DEFAULT_LIFETIME_S
        with self._lock:
            self._token = (token, expiry - TOKEN_REFRESH_MARGIN_S)
            self._tokens_seen = [*self._tokens_seen[-3:], token]
        return token


# `auth.type` → its authenticator. A new type: a class here (or in its own module), one line.
AUTH_TYPES: dict[str, type[NoAuth] | type[BearerAuth] | type[BasicAuth] | type[AirflowTokenAuth]] = {
    "bearer": BearerAuth,
    "basic": BasicAuth,
    "airflow-token": AirflowTokenAuth,
    "none": NoAuth,
}


def parse_auth(target: str, raw: Any, rules: ParseRules) -> Auth:
    if raw is None:
        return Auth("none")
    if not isinstance(raw, Mapping):
        raise ValueError("'auth' must be an object")
    auth_type = raw.get("type")
    if auth_type not in AUTH_TYPES:
        raise ValueError(f"'auth.type' must be one of {', '.join(AUTH_TYPES)}, got {auth_type!r}")
    needs = AUTH_TYPES[auth_type].needs
    secret = raw.get("secret")
    username = raw.get("username")
    if "secret" not in needs:
        return Auth(auth_type)
    if not isinstance(secret, str) or not secret:
        raise ValueError(f"'auth.secret' (the SSM parameter holding the credential) is required for {auth_type}")
    if not rules.secret_allowed(target, secret):
        # Never echo the value: it may be a token pasted where the parameter's name belongs.
        raise ValueError(
            f"'auth.secret' must be the parameter {rules.secrets_path.rstrip('/')}/{target} or one below it"
        )
    if "username" in needs and (not isinstance(username, str) or not username):
        raise ValueError(f"'auth.username' is required for {auth_type}")
    return Auth(auth_type, secret=secret, username=username if "username" in needs else None)


def authenticator(
    auth: Auth, secrets: SecretSource, exchange: Exchange, target: str, *, clock: Callable[[], float] = time.time
) -> Authenticator:
    return AUTH_TYPES[auth.type](auth, secrets, exchange, target, clock=clock)
