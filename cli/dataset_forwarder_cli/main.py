"""The `dataset-forwarder` command: global options, then `status`, `targets`, `dlq`, `send-test-event`, `local`."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import click

from dataset_forwarder.envelope import (
    ASSET_EVENT,
    DAG_RUN,
    DAG_RUN_STATES,
    dag_run_uri,
    message_attributes,
    new_envelope,
    parse_envelope,
)
from dataset_forwarder.version import __version__

from .context import DEFAULT_SECRETS_PATH, DEFAULT_TARGETS_PATH, AppContext
from .dlq_cmd import dlq
from .errors import CliError, friendly
from .local.commands import local
from .status_cmd import status
from .targets_cmd import targets

pass_app = click.make_pass_decorator(AppContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--region", envvar="AWS_REGION", help="AWS region (default: the usual AWS configuration).")
@click.option("--stack-name", envvar="DATASET_FORWARDER_STACK", help="Read queue URLs from this stack's outputs.")
@click.option("--queue-url", envvar="DATASET_FORWARDER_QUEUE_URL", help="The events queue URL.")
@click.option("--dlq-url", envvar="DEAD_LETTER_QUEUE_URL", help="The dead-letter queue URL.")
@click.option("--targets-path", envvar="TARGETS_PATH", default=DEFAULT_TARGETS_PATH, show_default=True)
@click.option("--secrets-path", envvar="SECRETS_PATH", default=DEFAULT_SECRETS_PATH, show_default=True)
@click.option(
    "--local",
    "use_local",
    is_flag=True,
    help="Work on the running local stack (`local up`): its endpoint, queues and paths, over the options above.",
)
@click.version_option(__version__, package_name="airflow-dataset-forwarder")
@click.pass_context
def cli(
    ctx: click.Context,
    region: str | None,
    stack_name: str | None,
    queue_url: str | None,
    dlq_url: str | None,
    targets_path: str,
    secrets_path: str,
    use_local: bool,
) -> None:
    """Operate airflow-dataset-forwarder: register downstream targets, inspect and replay dead letters.

    \b
    Examples:
      dataset-forwarder --stack-name dataset-forwarder status
      dataset-forwarder --stack-name dataset-forwarder targets list
      dataset-forwarder --stack-name dataset-forwarder dlq list --error auth
      dataset-forwarder --stack-name dataset-forwarder dlq redrive --target team-b
      dataset-forwarder --local status
    """
    if use_local:
        if ctx.invoked_subcommand == "local":
            raise CliError("--local is for the commands that use a stack, not for `local` itself")
        ctx.obj = AppContext.for_local_stack()
        return
    ctx.obj = AppContext(
        region=region,
        stack_name=stack_name,
        queue_url_option=queue_url,
        dlq_url_option=dlq_url,
        targets_path=targets_path.rstrip("/") or "/",
        secrets_path=secrets_path.rstrip("/") or "/",
    )


cli.add_command(status)
cli.add_command(targets)
cli.add_command(dlq)
cli.add_command(local)


@cli.command("send-test-event")
@click.argument("uri", required=False)
@click.option("--extra", default="{}", help="The event's extra, a JSON object.")
@click.option(
    "--deployment",
    default=lambda: os.environ.get("DATASET_FORWARDER_DEPLOYMENT", "dataset-forwarder-cli"),
    help="The upstream deployment name recorded in the envelope.",
)
@click.option("--dag-run", "dag_run", metavar="DAG_ID", help="Send a DAG-run outcome of DAG_ID instead of URI.")
@click.option("--state", type=click.Choice(DAG_RUN_STATES), default="success", show_default=True)
@click.option("--partition-key", help="The asset event's partition key (Airflow 3.2+).")
@click.option("--target", "targets", multiple=True, metavar="NAME", help="Only to this target (repeat); default all.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def send_test_event(
    app: AppContext,
    uri: str | None,
    extra: str,
    deployment: str,
    dag_run: str | None,
    state: str,
    partition_key: str | None,
    targets: tuple[str, ...],
    as_json: bool,
) -> None:
    """Put one valid envelope for URI (or a DAG run's outcome) on the events queue, as the listener would.

    \b
    Examples:
      dataset-forwarder send-test-event s3://bucket/bears --extra '{"rows": 42}'
      dataset-forwarder send-test-event --dag-run etl_daily --state failed --deployment team-a
      dataset-forwarder send-test-event s3://lake/orders --partition-key 2026-12-06 --target team-b
    """
    try:
        extra_value = json.loads(extra)
    except ValueError as exc:
        raise CliError(f"--extra is not JSON: {exc}") from None
    if not isinstance(extra_value, dict):
        raise CliError("--extra must be a JSON object")
    if (uri is None) == (dag_run is None):
        raise CliError("give a URI or --dag-run DAG_ID (one of them)")
    event_id = uuid.uuid4().hex
    kind, source = ASSET_EVENT, None
    if dag_run is None:
        event_uri = str(uri)
    else:
        event_uri = dag_run_uri(deployment, dag_run, state)
        run_id = f"manual__{datetime.now(UTC).isoformat()}"
        now = datetime.now(UTC).isoformat()
        kind, source = DAG_RUN, {"dag_id": dag_run, "run_id": run_id}
        extra_value = {
            "dag_id": dag_run,
            "run_id": run_id,
            "state": state,
            "run_type": "manual",
            "logical_date": None,
            "start_date": now,
            "end_date": now,
            **extra_value,
        }
    envelope = new_envelope(
        event_uri,
        event_id=event_id,
        deployment=deployment,
        extra=extra_value,
        source=source,
        kind=kind,
        partition_key=partition_key,
        only_targets=list(targets) or None,
    )
    body = json.dumps(envelope, separators=(",", ":"))
    parse_envelope(body)  # the forwarder's own reader accepts it
    sent = app.client("sqs").send_message(
        QueueUrl=app.queue_url, MessageBody=body, MessageAttributes=message_attributes(envelope)
    )
    if as_json:
        click.echo(json.dumps({"message_id": sent["MessageId"], "envelope": envelope}, indent=2))
    else:
        click.echo(f"sent event {envelope['id']} for {event_uri} (message {sent['MessageId']})")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
