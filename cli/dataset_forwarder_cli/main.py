"""The `dataset-forwarder` command: global options, then `status`, `targets`, `dlq`, `send-test-event`, `local`."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime

import click

from dataset_forwarder.envelope import parse_envelope

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
@click.version_option(package_name="airflow-dataset-forwarder")
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
@click.argument("uri")
@click.option("--extra", default="{}", help="The event's extra, a JSON object.")
@click.option(
    "--deployment",
    default=lambda: os.environ.get("DATASET_FORWARDER_DEPLOYMENT", "dataset-forwarder-cli"),
    help="The upstream deployment name recorded in the envelope.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def send_test_event(app: AppContext, uri: str, extra: str, deployment: str, as_json: bool) -> None:
    """Put one valid envelope for URI on the events queue, as the listener would.

    \b
    Example:
      dataset-forwarder send-test-event s3://bucket/bears --extra '{"rows": 42}'
    """
    try:
        extra_value = json.loads(extra)
    except ValueError as exc:
        raise CliError(f"--extra is not JSON: {exc}") from None
    if not isinstance(extra_value, dict):
        raise CliError("--extra must be a JSON object")
    envelope = {
        "version": 1,
        "id": uuid.uuid4().hex,
        "uri": uri,
        "name": uri,
        "extra": extra_value,
        "source": {
            "deployment": deployment,
            "airflow_version": None,
            "dag_id": None,
            "task_id": None,
            "run_id": None,
            "map_index": None,
        },
        "emitted_at": datetime.now(UTC).isoformat(),
        "trail": [deployment],
        "only_targets": None,
    }
    body = json.dumps(envelope, separators=(",", ":"))
    parse_envelope(body)  # the forwarder's own reader accepts it
    attributes = {
        "uri": {"DataType": "String", "StringValue": uri},
        "event_id": {"DataType": "String", "StringValue": envelope["id"]},
        "source_deployment": {"DataType": "String", "StringValue": deployment},
    }
    sent = app.client("sqs").send_message(QueueUrl=app.queue_url, MessageBody=body, MessageAttributes=attributes)
    if as_json:
        click.echo(json.dumps({"message_id": sent["MessageId"], "envelope": envelope}, indent=2))
    else:
        click.echo(f"sent event {envelope['id']} for {uri} (message {sent['MessageId']})")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
