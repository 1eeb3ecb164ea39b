"""`dataset-forwarder status`: the on-call's first look — is the events queue draining, and what failed."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click

from .context import AppContext
from .dead_letter_box import DeadLetterBox, DeadLetterRecord
from .errors import friendly
from .queue_health import QueueHealth, read_health
from .render import duration, emit_json, table

pass_app = click.make_pass_decorator(AppContext)


@dataclass(frozen=True)
class LetterGroup:
    target: str
    error: str
    count: int
    unconfirmed: int
    oldest_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "error": self.error,
            "count": self.count,
            "unconfirmed": self.unconfirmed,
            "oldest_failed_at": _iso(self.oldest_ms),
        }


def group_letters(records: list[DeadLetterRecord]) -> list[LetterGroup]:
    """Dead letters counted by (target, error), the largest group first."""
    groups: dict[tuple[str, str], list[DeadLetterRecord]] = defaultdict(list)
    for record in records:
        groups[(record.target, record.error)].append(record)
    summary = [
        LetterGroup(
            target,
            error,
            len(members),
            sum(r.unconfirmed for r in members),
            min(r.sent_at_ms for r in members),
        )
        for (target, error), members in groups.items()
    ]
    return sorted(summary, key=lambda g: (-g.count, g.target, g.error))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


@click.command("status")
@click.option(
    "--sample",
    type=click.IntRange(1, 1000),
    default=200,
    show_default=True,
    help="Dead letters read to group them (each released at once: none is consumed).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
@friendly
def status(app: AppContext, sample: int, as_json: bool) -> None:
    """The events queue (waiting, in flight or held for a retry, delayed; age of the oldest event) and the dead
    letters grouped by target and error.

    The events queue is never received from (a receive would count towards its redrive to the DLQ); the age of its
    oldest message is CloudWatch's ApproximateAgeOfOldestMessage, shown with its time, or unknown. Dead letters are
    read up to --sample and released at once.

    \b
    Examples:
      dataset-forwarder --stack-name dataset-forwarder status
      dataset-forwarder --local status --json
    """
    sqs, cloudwatch = app.client("sqs"), app.client("cloudwatch")
    events = read_health(sqs, cloudwatch, app.queue_url)
    dead = read_health(sqs, cloudwatch, app.dlq_url)
    letters = DeadLetterBox(sqs, app.dlq_url).sample(sample)
    groups = group_letters(letters)
    complete = len(letters) >= dead.total
    if as_json:
        emit_json(
            {
                "events_queue": events.as_dict(),
                "dead_letter_queue": {
                    **dead.as_dict(),
                    "read": len(letters),
                    "all_read": complete,
                    "by_target_and_error": [g.as_dict() for g in groups],
                },
            }
        )
        return
    table(
        "queues",
        ["queue", "waiting", "in flight / retry wait", "delayed", "oldest message"],
        [_queue_row("events", events), _queue_row("dead letters", dead)],
    )
    if not letters:
        click.echo("no dead letters")
        return
    scope = "all" if complete else f"{len(letters)} read of about {dead.total}: raise --sample for all"
    table(
        f"dead letters by target and error ({scope})",
        ["target", "error", "count", "unconfirmed", "oldest failed at"],
        [[g.target, g.error, g.count, g.unconfirmed or "", _iso(g.oldest_ms)] for g in groups],
    )
    click.echo("details: dataset-forwarder dlq list [--target T] [--error E]; replay: dlq redrive")


def _queue_row(label: str, health: QueueHealth) -> list[Any]:
    age = health.oldest
    shown = age.source if age.seconds is None else f"{duration(age.seconds)} (CloudWatch, {age.measured_at:%H:%M}Z)"
    return [label, health.visible, health.in_flight, health.delayed, shown]
