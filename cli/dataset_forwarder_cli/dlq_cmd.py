"""`dataset-forwarder dlq …`: see why deliveries failed, replay them, or clear the queue."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.progress import Progress

from .context import AppContext
from .dead_letter_box import DeadLetterBox, RedriveIncomplete
from .errors import CliError, friendly
from .render import console, emit_json, shorten, table

pass_app = click.make_pass_decorator(AppContext)

F = TypeVar("F", bound=Callable[..., Any])


def with_filters(func: F) -> F:
    """The --target / --error / --limit options shared by list and redrive."""
    func = click.option("--limit", type=click.IntRange(min=1), help="At most this many (oldest first).")(func)
    func = click.option("--error", help="Only this error (auth, timeout, http_503, unknown_dataset, …).")(func)
    return click.option("--target", help="Only dead letters for this target.")(func)


def _box(app: AppContext) -> DeadLetterBox:
    dlq_url = app.dlq_url  # a missing URL is the clearer error, before any AWS call
    return DeadLetterBox(app.client("sqs"), dlq_url)


@click.group()
def dlq() -> None:
    """The dead-letter queue: one message per failed (event, target), with the reason."""


@dlq.command("list")
@with_filters
@click.option(
    "--unconfirmed", "unconfirmed_only", is_flag=True, help="Only letters whose target may already hold the event."
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def list_dead_letters(
    app: AppContext, target: str | None, error: str | None, limit: int | None, unconfirmed_only: bool, as_json: bool
) -> None:
    """Dead letters, oldest first, with counts by target and error.

    A letter marked unconfirmed lost the answer of its last try: its target may already have the event
    (a redrive checks the target before posting it again).

    \b
    Examples:
      dataset-forwarder dlq list
      dataset-forwarder dlq list --target team-b --error auth --json
      dataset-forwarder dlq list --unconfirmed
    """
    records = _box(app).peek(target=target, error=error, limit=limit, unconfirmed_only=unconfirmed_only)
    by_target = Counter(r.target for r in records)
    by_error = Counter(r.error for r in records)
    if as_json:
        emit_json(
            {
                "dead_letters": [r.as_dict() for r in records],
                "counts": {
                    "by_target": dict(by_target),
                    "by_error": dict(by_error),
                    "unconfirmed": sum(r.unconfirmed for r in records),
                    "total": len(records),
                },
            }
        )
        return
    rows = [
        [
            r.attributes.get("failed_at", ""),
            r.target,
            r.error,
            r.attributes.get("attempts", ""),
            "yes" if r.unconfirmed else "",
            shorten(r.uri, 40),
            r.event_id,
            shorten(r.attributes.get("detail", ""), 60),
            r.message_id,
        ]
        for r in records
    ]
    table(
        f"{len(records)} dead letter(s)",
        ["failed at", "target", "error", "attempts", "unconfirmed", "uri", "event id", "detail", "message id"],
        rows,
    )
    if records:
        table("by target", ["target", "count"], sorted(by_target.items()))
        table("by error", ["error", "count"], sorted(by_error.items()))


@dlq.command("show")
@click.argument("message_id")
@pass_app
@friendly
def show_dead_letter(app: AppContext, message_id: str) -> None:
    """One dead letter in full: its attributes and the envelope to replay (MESSAGE_ID or event id)."""
    match = [r for r in _box(app).peek() if message_id in (r.message_id, r.event_id)]
    if not match:
        raise CliError(f"no dead letter with message id or event id {message_id}")
    for record in match:
        click.echo(json.dumps(record.as_dict(), indent=2, ensure_ascii=False))


@dlq.command("redrive")
@with_filters
@click.option("--dry-run", is_flag=True, help="Only show what would move.")
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def redrive(
    app: AppContext, target: str | None, error: str | None, limit: int | None, dry_run: bool, as_json: bool
) -> None:
    """Move dead letters back to the events queue; each replay reaches only its failed target.

    Messages are sent to the events queue before they are deleted from the DLQ, so an
    interruption loses nothing; a message sent twice is delivered once (idempotency).

    \b
    Examples:
      dataset-forwarder dlq redrive --target team-b --error auth --dry-run
      dataset-forwarder dlq redrive --target team-b
    """
    box = _box(app)
    queue_url = app.queue_url
    with Progress(console=console(), transient=True, disable=as_json) as progress:
        task = progress.add_task("redriving", total=None)
        incomplete: RedriveIncomplete | None = None
        try:
            records = box.redrive(
                queue_url,
                target=target,
                error=error,
                limit=limit,
                dry_run=dry_run,
                on_selected=lambda n: progress.update(task, total=n),
                on_moved=lambda _record: progress.advance(task),
            )
        except RedriveIncomplete as exc:
            records, incomplete = exc.moved, exc
    not_deleted = incomplete.not_deleted if incomplete else []
    if as_json:
        emit_json(
            {
                "dry_run": dry_run,
                "moved": [r.as_dict() for r in records] if not dry_run else [],
                "selected": [r.as_dict() for r in records],
                "sent_not_deleted": [{**r.as_dict(), "reason": reason} for r, reason in not_deleted],
                **({"error": str(incomplete)} if incomplete else {}),
            }
        )
    else:
        verb = "would move" if dry_run else "moved"
        for record in records:
            click.echo(f"{verb} {record.message_id}  target={record.target} error={record.error} uri={record.uri}")
        for record, reason in not_deleted:
            click.echo(
                f"SENT BUT STILL IN THE DLQ {record.message_id}  target={record.target} error={record.error} "
                f"uri={record.uri} ({reason})"
            )
        click.echo(f"{len(records)} dead letter(s) {verb} to the events queue")
        if not_deleted:
            click.echo(
                f"{len(not_deleted)} dead letter(s) were sent to the events queue but are still in the DLQ: "
                "a later redrive would send them a second time"
            )
    if incomplete:
        raise CliError(str(incomplete))


@dlq.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
@friendly
def purge(app: AppContext, yes: bool) -> None:
    """Delete every message in the dead-letter queue (asks first)."""
    box = _box(app)
    if not yes:
        if not click.get_text_stream("stdin").isatty():
            raise CliError("refusing to purge without confirmation: pass --yes")
        click.confirm(f"Delete ALL messages in {app.dlq_url}?", abort=True)
    box.purge()
    click.echo("dead-letter queue purged")
