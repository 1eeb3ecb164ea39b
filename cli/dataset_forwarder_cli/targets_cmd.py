"""`dataset-forwarder targets …`: register, inspect, test and remove downstream targets."""

from __future__ import annotations

import os
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any

import click

from dataset_forwarder.envelope import LINEAGE_KEY
from dataset_forwarder.outcomes import DeliveryFailed
from dataset_forwarder.targets import AUTH_TYPES, InvalidTarget, Target, parse_target

from .context import AppContext
from .errors import CliError, friendly
from .render import emit_json, shorten, table
from .target_store import TargetStore

pass_app = click.make_pass_decorator(AppContext)


def _store(app: AppContext) -> TargetStore:
    return TargetStore(app.client("ssm"), app.targets_path, app.secrets_path)


@click.group()
def targets() -> None:
    """Downstream Airflow deployments the forwarder delivers to (SSM parameters)."""


def _secret_value(token_stdin: bool, token_env: str | None) -> str | None:
    if token_stdin and token_env:
        raise CliError("use either --token-stdin or --token-env, not both")
    if token_stdin:
        value = _read_stdin_secret()
        if not value:
            raise CliError("--token-stdin: nothing was read from standard input")
        if "\n" in value or "\r" in value:
            raise CliError("--token-stdin: the value has a line break inside; pipe the token alone")
        return value
    if token_env:
        value = os.environ.get(token_env, "").strip()
        if not value:
            raise CliError(f"--token-env: environment variable {token_env} is not set or empty")
        return value
    return None


def _read_stdin_secret() -> str:
    """Typed at a terminal: a hidden prompt. Piped: all of it, less the one line ending `echo` adds (spaces kept)."""
    if sys.stdin.isatty():
        return str(click.prompt("Token or password (hidden)", hide_input=True, default="", show_default=False))
    value = sys.stdin.read()
    for ending in ("\r\n", "\n"):
        if value.endswith(ending):
            return value[: -len(ending)]
    return value


@targets.command("put")
@click.argument("name")
@click.option("--url", required=True, help="Base URL of the downstream Airflow (Astro: the deployment URL).")
@click.option("--airflow", type=click.Choice(["auto", "2", "3"]), default="auto", show_default=True)
@click.option("--dataset", "datasets", multiple=True, required=True, help="Exact URI or fnmatch glob; repeat.")
@click.option("--auth", "auth_type", type=click.Choice(AUTH_TYPES), required=True)
@click.option("--username", help="For basic and airflow-token.")
@click.option(
    "--token-stdin",
    is_flag=True,
    help="Read the token or password from standard input (a hidden prompt on a terminal).",
)
@click.option("--token-env", metavar="VAR", help="Read the token or password from this environment variable.")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
@click.option("--disabled", is_flag=True, help="Register it switched off.")
@click.option("--allow-http", is_flag=True, help="Accept http:// (local stacks only).")
@pass_app
@friendly
def put_target(
    app: AppContext,
    name: str,
    url: str,
    airflow: str,
    datasets: tuple[str, ...],
    auth_type: str,
    username: str | None,
    token_stdin: bool,
    token_env: str | None,
    timeout_s: float,
    disabled: bool,
    allow_http: bool,
) -> None:
    """Create or replace target NAME; the credential goes to a SecureString, never on the command line.

    \b
    Examples:
      echo "$ASTRO_TOKEN" | dataset-forwarder targets put team-b \\
          --url https://clxyz.astronomer.run/d8x2k1 --dataset 's3://lake/raw/*' --auth bearer --token-stdin
      dataset-forwarder targets put team-c --url https://airflow.c.example.com --airflow 3 \\
          --dataset s3://bucket/bears --auth airflow-token --username forwarder --token-env TEAM_C_PASSWORD
    """
    store = _store(app)
    secret = _secret_value(token_stdin, token_env)
    auth: dict[str, Any] = {"type": auth_type}
    if auth_type == "none":
        if secret is not None:
            raise CliError("--auth none takes no token")
    else:
        try:
            auth["secret"] = store.secret_name(name)
        except InvalidTarget as exc:
            raise CliError(str(exc)) from None
        if username:
            auth["username"] = username
    value = {
        "url": url,
        "airflow": airflow,
        "datasets": list(datasets),
        "auth": auth,
        "timeout_s": timeout_s,
        "enabled": not disabled,
    }
    try:
        target = parse_target(name, value, allow_http=allow_http)
    except InvalidTarget as exc:
        raise CliError(f"target not saved: {exc}") from None
    if target.auth.secret and secret is None and not store.secret_exists(target.auth.secret):
        raise CliError(f"{auth_type} needs a credential: pass --token-stdin or --token-env")
    store.put(target, secret=secret)
    click.echo(f"saved target {name} -> {target.url} ({', '.join(target.datasets)})")
    if target.auth.secret:
        click.echo(f"credential in SecureString {target.auth.secret}" + ("" if secret else " (kept)"))


@targets.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@friendly
def list_targets(app: AppContext, as_json: bool) -> None:
    """All targets under the targets path, and the broken parameters with the reason."""
    catalog = _store(app).catalog()
    if as_json:
        emit_json(
            {
                "targets": [{"name": t.name, **t.to_json()} for t in catalog.targets.values()],
                "broken": [{"name": n, "reason": r} for n, r in catalog.broken.items()],
            }
        )
        return
    rows = [
        [t.name, t.url, t.airflow, "\n".join(t.datasets), t.auth.type, "yes" if t.enabled else "no"]
        for t in catalog.targets.values()
    ]
    rows += [[name, f"BROKEN: {shorten(reason, 80)}", "", "", "", ""] for name, reason in catalog.broken.items()]
    table(f"targets under {app.targets_path}", ["name", "url", "airflow", "datasets", "auth", "enabled"], rows)


@targets.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def show_target(app: AppContext, name: str, as_json: bool) -> None:
    """One target's settings (credentials are never shown, only where they are kept)."""
    store = _store(app)
    target = store.get(name)
    data = {"name": target.name, **target.to_json()}
    if target.auth.secret:
        data["secret_parameter_exists"] = store.secret_exists(target.auth.secret)
    if as_json:
        emit_json(data)
        return
    table(f"target {name}", ["setting", "value"], [[key, value] for key, value in data.items()])


@targets.command("delete")
@click.argument("name")
@click.option("--keep-secret", is_flag=True, help="Leave the credential parameter in place.")
@pass_app
@friendly
def delete_target(app: AppContext, name: str, keep_secret: bool) -> None:
    """Remove target NAME (and its credential under the secrets path)."""
    store = _store(app)
    for parameter in store.delete(store.get(name), keep_secret=keep_secret):
        click.echo(f"deleted {parameter}")


def _set_enabled(app: AppContext, name: str, enabled: bool) -> None:
    store = _store(app)
    target = store.get(name)
    store.put(
        Target(target.name, target.url, target.airflow, target.datasets, target.auth, target.timeout_s, enabled),
        secret=None,
    )
    click.echo(f"target {name} {'enabled' if enabled else 'disabled'}")


@targets.command("enable")
@click.argument("name")
@pass_app
@friendly
def enable_target(app: AppContext, name: str) -> None:
    """Switch target NAME on."""
    _set_enabled(app, name, True)


@targets.command("disable")
@click.argument("name")
@pass_app
@friendly
def disable_target(app: AppContext, name: str) -> None:
    """Switch target NAME off (events for it are then not delivered; replays dead-letter as invalid_target)."""
    _set_enabled(app, name, False)


@dataclass
class _SsmSecrets:
    store: TargetStore
    seen: list[str] = field(default_factory=list)

    def get(self, name: str, *, fresh: bool = False) -> str:
        from botocore.exceptions import ClientError

        try:
            value = self.store.read_secret(name)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise DeliveryFailed("auth", f"cannot read secret parameter {name}: {code}", transient=False) from None
        self.seen.append(value)
        return value

    def known_values(self) -> list[str]:
        return list(self.seen)


@dataclass
class _Report:
    checks: list[dict[str, Any]] = field(default_factory=list)

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.checks.append({"check": check, "ok": ok, "detail": detail})
        return ok

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks)


def _auth_hint(failure: DeliveryFailed) -> str:
    if failure.error == "auth":
        return f"credentials refused (expired, revoked or wrong token/password?): {failure.detail}"
    return f"{failure.error}: {failure.detail}"


def _refuse_plain_http(target: Target, allow_http: bool) -> None:
    """A check sends the target's credential: never unencrypted unless asked for (a local stack)."""
    if allow_http or not (target.url or "").lower().startswith("http://"):  # an MWAA target has no url
        return
    sent = "its credential and events" if target.auth.secret else "its requests"
    raise CliError(
        f"target {target.name} is plain http:// ({target.url}): checking it would send {sent} unencrypted; "
        "pass --allow-http only for a local stack"
    )


@targets.command("test")
@click.argument("name")
@click.option("--dataset", "datasets", multiple=True, help="URI to check (default: the target's exact URIs).")
@click.option("--send", is_flag=True, help="Also post one real event for each dataset checked.")
@click.option("--allow-http", is_flag=True, help="Check an http:// target (local stacks only: sent unencrypted).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def test_target(
    app: AppContext, name: str, datasets: tuple[str, ...], send: bool, allow_http: bool, as_json: bool
) -> None:
    """Check target NAME from here: API version, credentials, datasets and their DAGs; exit 1 on any failure.

    \b
    Example:
      dataset-forwarder targets test team-b --dataset s3://bucket/bears --send
    """
    from dataset_forwarder.airflow_api import AirflowClient
    from dataset_forwarder.runtime import http_transport

    store = _store(app)
    target = store.get(name)
    _refuse_plain_http(target, allow_http)
    client = AirflowClient(http_transport(4), _SsmSecrets(store))
    report = _Report()
    try:
        version = client.check_access(target)
        report.add("api", True, f"Airflow {version} REST API at {target.url}")
        report.add("credentials", True, f"{target.auth.type} accepted")
        uris = list(datasets) or [d for d in target.datasets if not any(c in d for c in "*?[")]
        if not uris:
            report.add("datasets", False, "only globs configured: pass --dataset URI to check one")
        for uri in uris:
            dags = client.consumers(target, uri)
            if dags is None:
                report.add(f"dataset {uri}", False, "not known downstream (no DAG there references it)")
                continue
            report.add(f"dataset {uri}", True, "scheduled DAGs: " + (", ".join(dags) or "none"))
            if send:
                extra = {LINEAGE_KEY: {"id": f"test-{uuid.uuid4().hex}", "source": {"cli": True}, "trail": []}}
                posted = client.deliver(target, uri, extra)
                report.add(f"send {uri}", True, f"event accepted ({posted.status})")
    except DeliveryFailed as failure:
        label = "credentials" if failure.error == "auth" else ("api" if not report.checks else "request")
        report.add(label, False, _auth_hint(failure))
    if as_json:
        emit_json({"target": name, "ok": report.ok, "checks": report.checks})
    else:
        for check in report.checks:
            click.echo(f"{'PASS' if check['ok'] else 'FAIL'}  {check['check']}: {check['detail']}")
        click.echo("all checks passed" if report.ok else "some checks failed")
    if not report.ok:
        raise SystemExit(1)
