"""Reading and replaying the dead-letter queue with plain SQS calls (works on any SQS, moto included).

Listing holds messages invisible for a moment and then releases them; a redrive sends each
selected message to the events queue *before* deleting it from the DLQ, so a crash midway
loses nothing (a duplicate is harmless: delivery is idempotent per event and target).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dataset_forwarder.dead_letters import DeadLetter

HOLD_S = 300  # a scan of a long DLQ must end before its first holds run out; `peek` releases them at once
SAMPLE_HOLD_S = 30  # a bounded sample is read in seconds; released at once anyway
MAX_ROUNDS_WITHOUT_NEW = 20  # holds shorter than a scan of the queue: stop rather than cycle
BATCH = 10


class RedriveIncomplete(Exception):
    """Some selected letters did not move: refused by the events queue (they stay in the DLQ only), or sent but not
    deleted from the DLQ (they are in both queues now: a later redrive would send them again)."""

    def __init__(
        self, moved: list[DeadLetterRecord], refused: list[str], not_deleted: list[tuple[DeadLetterRecord, str]]
    ) -> None:
        problems = []
        if refused:
            problems.append(
                f"{len(refused)} message(s) were refused by the events queue and stay in the DLQ: "
                f"{'; '.join(sorted(set(refused)))[:500]}"
            )
        if not_deleted:
            problems.append(
                f"{len(not_deleted)} message(s) were sent to the events queue but NOT deleted from the DLQ "
                f"({'; '.join(sorted({reason for _, reason in not_deleted}))[:500]}): they are in both queues now, "
                "and a later redrive sends them again"
            )
        super().__init__(f"{len(moved)} moved; " + "; ".join(problems))
        self.moved = moved
        self.refused = refused
        self.not_deleted = not_deleted


@dataclass(frozen=True)
class DeadLetterRecord:
    """A dead letter as received from the DLQ: the forwarder's `DeadLetter` plus the SQS message's handles."""

    message_id: str
    receipt_handle: str
    body: str
    attributes: dict[str, str]
    sent_at_ms: int

    @cached_property
    def letter(self) -> DeadLetter:
        return DeadLetter.from_message(self.body, self.attributes)

    @property
    def target(self) -> str:
        return self.letter.target

    @property
    def error(self) -> str:
        return self.letter.error

    @property
    def unconfirmed(self) -> bool:
        """The target may already hold this event (its last try lost its answer): a redrive checks first."""
        return self.letter.unconfirmed

    @cached_property
    def envelope(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.body)
        except (ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def uri(self) -> str:
        envelope = self.envelope or {}
        return str(envelope.get("uri", "-"))

    @property
    def event_id(self) -> str:
        envelope = self.envelope or {}
        return str(envelope.get("id", "-"))

    def as_dict(self) -> dict[str, Any]:
        letter = self.letter
        return {
            "message_id": self.message_id,
            "target": letter.target,
            "error": letter.error,
            "detail": letter.detail,
            "attempts": str(letter.attempts) if letter.attempts else self.attributes.get("attempts", ""),
            "failed_at": letter.failed_at,
            "unconfirmed": letter.unconfirmed,
            "uri": self.uri,
            "event_id": self.event_id,
            "body": self.envelope if self.envelope is not None else self.body,
        }

    def matches(self, target: str | None, error: str | None, *, unconfirmed_only: bool = False) -> bool:
        return (
            (target is None or self.target == target)
            and (error is None or self.error == error)
            and (self.unconfirmed or not unconfirmed_only)
        )


class DeadLetterBox:
    def __init__(self, sqs: Any, dlq_url: str) -> None:
        self._sqs = sqs
        self._dlq_url = dlq_url

    def _receive(self, hold_s: int) -> list[DeadLetterRecord]:
        messages = self._sqs.receive_message(
            QueueUrl=self._dlq_url,
            MaxNumberOfMessages=BATCH,
            VisibilityTimeout=hold_s,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["SentTimestamp"],
        ).get("Messages", [])
        return [
            DeadLetterRecord(
                message_id=m["MessageId"],
                receipt_handle=m["ReceiptHandle"],
                body=m["Body"],
                attributes={k: v.get("StringValue", "") for k, v in m.get("MessageAttributes", {}).items()},
                sent_at_ms=int(m.get("Attributes", {}).get("SentTimestamp", "0")),
            )
            for m in messages
        ]

    def scan(self, *, hold_s: int = HOLD_S, limit: int | None = None) -> list[DeadLetterRecord]:
        """Every message once, each held invisible for `hold_s`, until the queue gives no more (or `limit`).

        A message comes back before the scan ends only when its hold ran out (a slow scan of a long queue): it is
        held again and its newest receipt handle kept, so the scan still sees every message, each once.
        """
        held: dict[str, DeadLetterRecord] = {}
        rounds_without_new = 0
        while (limit is None or len(held) < limit) and rounds_without_new < MAX_ROUNDS_WITHOUT_NEW:
            batch = self._receive(hold_s)
            if not batch:
                break
            new = [r for r in batch if r.message_id not in held]
            rounds_without_new = 0 if new else rounds_without_new + 1
            for record in batch:
                if record.message_id in held or limit is None or len(held) < limit:
                    held[record.message_id] = record
                else:
                    self.release([record])
        return list(held.values())

    def release(self, records: list[DeadLetterRecord]) -> None:
        """Make held messages visible again at once."""
        for start in range(0, len(records), BATCH):
            chunk = records[start : start + BATCH]
            self._sqs.change_message_visibility_batch(
                QueueUrl=self._dlq_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": r.receipt_handle, "VisibilityTimeout": 0}
                    for i, r in enumerate(chunk)
                ],
            )

    def peek(
        self,
        *,
        target: str | None = None,
        error: str | None = None,
        limit: int | None = None,
        unconfirmed_only: bool = False,
    ) -> list[DeadLetterRecord]:
        """The matching dead letters, oldest first; the queue is left as it was."""
        held = list(self.scan())
        self.release(held)
        matching = (r for r in held if r.matches(target, error, unconfirmed_only=unconfirmed_only))
        selected = sorted(matching, key=lambda r: r.sent_at_ms)
        return selected[:limit] if limit is not None else selected

    def sample(self, limit: int, *, hold_s: int = SAMPLE_HOLD_S) -> list[DeadLetterRecord]:
        """Up to `limit` dead letters, oldest first, each held for a moment and released: none is consumed."""
        held = self.scan(hold_s=hold_s, limit=limit)
        self.release(held)
        return sorted(held, key=lambda r: r.sent_at_ms)

    def redrive(
        self,
        queue_url: str,
        *,
        target: str | None = None,
        error: str | None = None,
        limit: int | None = None,
        dry_run: bool = False,
        on_moved: Callable[[DeadLetterRecord], None] | None = None,
        on_selected: Callable[[int], None] | None = None,
    ) -> list[DeadLetterRecord]:
        """Move the matching dead letters to the events queue (send, then delete); returns them."""
        held = list(self.scan())
        selected = [r for r in held if r.matches(target, error)]
        if limit is not None:
            selected = sorted(selected, key=lambda r: r.sent_at_ms)[:limit]
        chosen = {r.message_id for r in selected}
        self.release([r for r in held if r.message_id not in chosen] + (selected if dry_run else []))
        if on_selected is not None:
            on_selected(len(selected))
        if dry_run:
            return selected
        moved: list[DeadLetterRecord] = []
        refused: list[str] = []
        not_deleted: list[tuple[DeadLetterRecord, str]] = []
        for start in range(0, len(selected), BATCH):
            chunk = selected[start : start + BATCH]
            response = self._sqs.send_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "MessageBody": record.body, **_replay_attributes(record)}
                    for i, record in enumerate(chunk)
                ],
            )
            sent = [chunk[int(entry["Id"])] for entry in response.get("Successful", [])]
            refused += [f"{entry.get('Code', '?')}: {entry.get('Message', '')}" for entry in response.get("Failed", [])]
            failed_deletes = self._delete(sent)  # only what the events queue accepted leaves the DLQ
            for i, record in enumerate(sent):
                if i in failed_deletes:
                    not_deleted.append((record, failed_deletes[i]))
                    continue
                moved.append(record)
                if on_moved is not None:
                    on_moved(record)
        if not_deleted:
            self._release_quietly([record for record, _ in not_deleted])  # still in the DLQ: let `dlq list` show it
        if refused or not_deleted:
            raise RedriveIncomplete(moved, refused, not_deleted)
        return moved

    def _release_quietly(self, records: list[DeadLetterRecord]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        with contextlib.suppress(BotoCoreError, ClientError):  # the hold runs out by itself; the report matters more
            self.release(records)

    def _delete(self, records: list[DeadLetterRecord]) -> dict[int, str]:
        """Delete `records` (at most one batch) from the DLQ; the reason for each index SQS did not delete."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not records:
            return {}
        try:
            response = self._sqs.delete_message_batch(
                QueueUrl=self._dlq_url,
                Entries=[{"Id": str(i), "ReceiptHandle": r.receipt_handle} for i, r in enumerate(records)],
            )
        except ClientError as exc:  # the whole batch: every letter in it is still in the DLQ
            error = exc.response.get("Error", {})
            return dict.fromkeys(range(len(records)), f"{error.get('Code', 'error')}: {error.get('Message', '')}")
        except BotoCoreError as exc:
            return dict.fromkeys(range(len(records)), f"{type(exc).__name__}: {exc}")
        return {int(entry["Id"]): f"{entry.get('Code', '?')}" for entry in response.get("Failed", [])}

    def purge(self) -> None:
        self._sqs.purge_queue(QueueUrl=self._dlq_url)


def _replay_attributes(record: DeadLetterRecord) -> dict[str, Any]:
    envelope = record.envelope or {}
    source = envelope.get("source") if isinstance(envelope.get("source"), dict) else {}
    values = {
        "uri": envelope.get("uri"),
        "event_id": envelope.get("id"),
        "source_deployment": (source or {}).get("deployment"),
        "redriven_from": record.error,
    }
    attributes = {
        key: {"DataType": "String", "StringValue": str(value)}
        for key, value in values.items()
        if isinstance(value, str | int) and str(value)
    }
    return {"MessageAttributes": attributes} if attributes else {}
