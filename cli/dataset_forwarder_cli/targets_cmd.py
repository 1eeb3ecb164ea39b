"""`dataset-forwarder targets …`: register, inspect, test and remove downstream targets."""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

import click

from dataset_forwarder.actions import ACTIONS, DEFAULT_ACTION
from dataset_forwarder.downstream import Downstream
from dataset_forwarder.outcomes import DeliveryFailed
from dataset_forwarder.secrets import SecretNotFound, SecretStore
from dataset_forwarder.targets import InvalidTarget, Target, parse_target
from dataset_forwarder.ways_in.auth import AUTH_TYPES

from .context import AppContext
from .errors import CliError, friendly
from .render import emit_json, shorten, table
from .target_parameters import TargetParameters

pass_app = click.make_pass_decorator(AppContext)


def _store(app: AppContext) -> TargetParameters:
    return TargetParameters(app.client("ssm"), app.targets_path, app.secrets_path)


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


def _way_in(
    url: str | None,
    auth_type: str | None,
    username: str | None,
    secret_name: str,
    mwaa_environment: str | None,
    mwaa_region: str | None,
    role_arn: str | None,
) -> dict[str, Any]:
    """The way-in part of the target JSON, from the options of one way in (exactly one)."""
    if (url is None) == (mwaa_environment is None):
        raise CliError("give exactly one way in: --url (with --auth) or --mwaa-environment")
    if mwaa_environment is not None:
        if auth_type is not None or username is not None:
            raise CliError("an MWAA target takes no --auth or --username: IAM authorizes its calls")
        mwaa: dict[str, Any] = {"environment": mwaa_environment}
        if mwaa_region:
            mwaa["region"] = mwaa_region
        if role_arn:
            mwaa["role_arn"] = role_arn
        return {"mwaa": mwaa}
    if mwaa_region or role_arn:
        raise CliError("--mwaa-region and --role-arn belong to --mwaa-environment")
    if auth_type is None:
        raise CliError("--url needs --auth (bearer, basic, airflow-token or none)")
    auth: dict[str, Any] = {"type": auth_type}
    if auth_type != "none":
        auth["secret"] = secret_name
        if username:
            auth["username"] = username
    return {"url": url, "auth": auth}


@targets.command("put")
@click.argument("name")
@click.option("--url", help="HTTPS way in: base URL of the downstream Airflow (Astro: the deployment URL).")
@click.option("--auth", "auth_type", type=click.Choice(list(AUTH_TYPES)), help="Credential type of --url.")
@click.option("--username", help="For basic and airflow-token.")
@click.option(
    "--token-stdin",
    is_flag=True,
    help="Read the token or password from standard input (a hidden prompt on a terminal).",
)
@click.option("--token-env", metavar="VAR", help="Read the token or password from this environment variable.")
@click.option("--mwaa-environment", metavar="NAME", help="MWAA way in: the environment's name (IAM, no secret).")
@click.option("--mwaa-region", metavar="REGION", help="The MWAA environment's region (default: the function's).")
@click.option("--role-arn", metavar="ARN", help="Role to assume for a cross-account MWAA environment.")
@click.option("--airflow", type=click.Choice(["auto", "2", "3"]), default="auto", show_default=True)
@click.option(
    "--action", type=click.Choice(list(ACTIONS)), default=DEFAULT_ACTION, show_default=True, help="What to do there."
)
@click.option("--dag-id", help="The DAG a trigger_dag target starts.")
@click.option("--dataset", "datasets", multiple=True, required=True, help="Exact URI or fnmatch glob; repeat.")
@click.option("--timeout", "timeout_s", type=float, default=10.0, show_default=True)
@click.option("--disabled", is_flag=True, help="Register it switched off.")
@click.option("--allow-http", is_flag=True, help="Accept http:// (local stacks only).")
@pass_app
@friendly
def put_target(
    app: AppContext,
    name: str,
    url: str | None,
    auth_type: str | None,
    username: str | None,
    token_stdin: bool,
    token_env: str | None,
    mwaa_environment: str | None,
    mwaa_region: str | None,
    role_arn: str | None,
    airflow: str,
    action: str,
    dag_id: str | None,
    datasets: tuple[str, ...],
    timeout_s: float,
    disabled: bool,
    allow_http: bool,
) -> None:
    """Create or replace target NAME; a credential goes to a SecureString, never on the command line.

    \b
    Examples:
      echo "$ASTRO_TOKEN" | dataset-forwarder targets put team-b \\
          --url https://clxyz.astronomer.run/d8x2k1 --dataset 's3://lake/raw/*' --auth bearer --token-stdin
      dataset-forwarder targets put team-c --url https://airflow.c.example.com --airflow 3 \\
          --dataset s3://bucket/bears --auth airflow-token --username forwarder --token-env TEAM_C_PASSWORD
      dataset-forwarder targets put team-d --mwaa-environment team-d-prod --mwaa-region eu-west-1 \\
          --role-arn arn:aws:iam::210987654321:role/dataset-forwarder-invoke \\
          --action trigger_dag --dag-id refresh_dashboards --dataset 'dagrun://team-a/etl_daily/success'
    """
    store = _store(app)
    secret = _secret_value(token_stdin, token_env)
    try:
        secret_name = store.secret_name(name)
    except InvalidTarget as exc:
        raise CliError(str(exc)) from None
    value = _way_in(url, auth_type, username, secret_name, mwaa_environment, mwaa_region, role_arn)
    if secret is not None and value.get("auth", {}).get("type", "none") == "none":
        raise CliError("this target takes no token (--auth none, or an MWAA target)")
    if dag_id is not None and action != "trigger_dag":
        raise CliError("--dag-id goes with --action trigger_dag")
    value.update({"airflow": airflow, "datasets": list(datasets), "timeout_s": timeout_s, "enabled": not disabled})
    if action != DEFAULT_ACTION:
        value.update({"action": action, "dag_id": dag_id})
    try:
        target = parse_target(name, value, rules=store.rules(allow_http=allow_http))
    except InvalidTarget as exc:
        raise CliError(f"target not saved: {exc}") from None
    if target.secret and secret is None and not store.secret_exists(target.secret):
        raise CliError(f"{auth_type} needs a credential: pass --token-stdin or --token-env")
    store.put(target, secret=secret)
    click.echo(
        f"saved target {name} -> {target.way_in.describe()}, {target.action.describe()} ({', '.join(target.datasets)})"
    )
    if target.secret:
        click.echo(f"credential in SecureString {target.secret}" + ("" if secret else " (kept)"))


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


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
        [
            t.name,
            t.way_in.describe(),
            t.action.describe(),
            t.airflow,
            "\n".join(t.datasets),
            "yes" if t.enabled else "no",
        ]
        for t in catalog.targets.values()
    ]
    rows += [[name, f"BROKEN: {shorten(reason, 80)}", "", "", "", ""] for name, reason in catalog.broken.items()]
    table(f"targets under {app.targets_path}", ["name", "way in", "action", "airflow", "datasets", "enabled"], rows)


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
    if target.secret:
        data["secret_parameter_exists"] = store.secret_exists(target.secret)
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
    store.put(target.replace(enabled=enabled), secret=None)
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


def _secret_store(store: TargetParameters) -> SecretStore:
    """The forwarder's own secret reader, over the CLI's SSM client: the same errors, never the value."""
    from botocore.exceptions import ClientError

    def fetch(name: str) -> str:
        try:
            return store.read_secret(name)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "error"))
            if code in ("ParameterNotFound", "AccessDeniedException"):
                raise SecretNotFound(code) from None
            raise

    return SecretStore(fetch, ttl_s=0)


def _auth_hint(failure: DeliveryFailed) -> str:
    if failure.error == "auth":
        return f"credentials refused (expired, revoked or wrong token/password, or IAM?): {failure.detail}"
    return f"{failure.error}: {failure.detail}"


def _downstream(app: AppContext, store: TargetParameters, target: Target) -> Downstream:
    import boto3

    from dataset_forwarder.services import Services
    from dataset_forwarder.transport import for_targets
    from dataset_forwarder.ways_in.mwaa import MwaaClients

    session = boto3.session.Session(region_name=app.region)
    override = bool(os.environ.get("AWS_ENDPOINT_URL_MWAA") or os.environ.get("AWS_ENDPOINT_URL"))
    services = Services(
        transport=for_targets(4, user_agent="airflow-dataset-forwarder-cli"),
        secrets=_secret_store(store),
        mwaa=MwaaClients(lambda: session, endpoint_override=override),
    )
    return Downstream(target, services)


def _refuse_plain_http(target: Target, allow_http: bool) -> None:
    """A check sends the target's credential: never unencrypted unless asked for (a local stack)."""
    url = str(getattr(target.way_in, "url", ""))  # an MWAA target has no url
    if allow_http or not url.lower().startswith("http://"):
        return
    sent = "its credential and events" if target.secret else "its requests"
    raise CliError(
        f"target {target.name} is plain http:// ({url}): checking it would send {sent} unencrypted; "
        "pass --allow-http only for a local stack"
    )


@targets.command("test")
@click.argument("name")
@click.option("--dataset", "datasets", multiple=True, help="URI to check (default: the target's exact URIs).")
@click.option("--send", is_flag=True, help="Also deliver one real test event for each dataset checked.")
@click.option("--allow-http", is_flag=True, help="Check an http:// target (local stacks only: sent unencrypted).")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def test_target(
    app: AppContext, name: str, datasets: tuple[str, ...], send: bool, allow_http: bool, as_json: bool
) -> None:
    """Check target NAME from here: way in, Airflow version, credentials, then what its action needs
    (the datasets and the DAGs scheduled on them, or the DAG a trigger_dag target starts); exit 1 on any failure.

    \b
    Example:
      dataset-forwarder targets test team-b --dataset s3://bucket/bears --send
    """
    from dataset_forwarder.actions import Check
    from dataset_forwarder.actions.asset_event import exact_uris
    from dataset_forwarder.envelope import parse_envelope

    store = _store(app)
    target = store.get(name)
    _refuse_plain_http(target, allow_http)
    downstream = _downstream(app, store, target)
    checks: list[Check] = []
    try:
        access = downstream.access()
        checks.append(Check("api", True, f"Airflow {access.airflow_major} REST API via {target.way_in.describe()}"))
        checks.append(Check("credentials", True, f"{access.identity} accepted"))
        uris = list(datasets) or exact_uris(target.datasets)
        checks += downstream.checks(uris)
        if send:
            for uri in uris:
                envelope = parse_envelope(test_envelope(uri))
                posted = downstream.deliver(envelope)
                checks.append(Check(f"send {uri}", True, f"accepted ({posted.status}) by {target.action.describe()}"))
    except DeliveryFailed as failure:
        label = "credentials" if failure.error == "auth" else ("api" if not checks else "request")
        checks.append(Check(label, False, _auth_hint(failure)))
    ok = all(check.ok for check in checks)
    if as_json:
        emit_json({"target": name, "ok": ok, "checks": [vars(check) for check in checks]})
    else:
        for check in checks:
            click.echo(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        click.echo("all checks passed" if ok else "some checks failed")
    if not ok:
        raise SystemExit(1)


def test_envelope(uri: str) -> str:
    """A test event's envelope: marked as coming from the CLI, with an empty trail."""
    import json

    from dataset_forwarder.envelope import VERSION

    event_id = f"test-{uuid.uuid4().hex}"
    return json.dumps(
        {"version": VERSION, "id": event_id, "uri": uri, "extra": {}, "source": {"cli": True}, "trail": []}
    )
