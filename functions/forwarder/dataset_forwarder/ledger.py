"""At-most-once bookkeeping in the idempotency table (partition key `id`, TTL attribute `expiration`).

Two kinds of record:
- delivery, keyed by (event id, target): a target gets an event at most once, whatever the number of SQS
  copies, retries or redrives;
- dead letter, keyed by (SQS message id, target): one dead letter per failure, however often the record is tried.

The flow for one pair: `claim` it (an in-progress record, blocking other copies until the invocation's
deadline), do the work, then `complete` it with the result, `release` it after a failure that left nothing
downstream, or `hold` it for a while after one that may have (a POST whose answer was lost). A claim that
replaced an earlier try's record says so (`earlier_try`): that try may have landed, so check the target first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyInconsistentStateError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord

from .ledger_store import COMPLETED, IN_PROGRESS, DynamoDBLedgerStore, LedgerStore, replaceable
from .outcomes import AlreadyInFlight

StoreFactory = Callable[[], LedgerStore]

log = logging.getLogger(__name__)

# Key prefixes; records of deployed tables carry them: never change them.
DELIVERY_PREFIX = "dataset-forwarder#delivery"
DEAD_LETTER_PREFIX = "dataset-forwarder#dead-letter"
CLAIM_TRIES = 3  # a record may change between a failed put and its read (Powertools retries as often)


@dataclass(frozen=True)
class Claim:
    """The ledger's answer to a claim on one pair."""

    key: dict[str, str]
    store: LedgerStore = field(repr=False, compare=False)
    done: bool = False  # the pair was completed before: do nothing; `result` is what was recorded
    earlier_try: bool = False  # this claim replaced a record an earlier try left: that try may have landed
    result: dict[str, Any] = field(default_factory=dict)


class Ledger:
    def __init__(self, *, ttl_s: int, store: StoreFactory) -> None:
        """`store` makes a persistence layer on the table; called once per key prefix.

        `ttl_s`: how long a record lives (a completed pair stays at most once that long).
        """
        config = IdempotencyConfig(expires_after_seconds=ttl_s)
        self._deliveries = _configured(store(), config, DELIVERY_PREFIX)
        self._dead_letters = _configured(store(), config, DEAD_LETTER_PREFIX)
        self._lambda_context: Any = None

    @classmethod
    def on_dynamodb(cls, *, table: str, ttl_s: int, dynamodb: Any) -> Ledger:
        """The production ledger: the idempotency table, through the given DynamoDB client."""
        return cls(ttl_s=ttl_s, store=lambda: DynamoDBLedgerStore(table_name=table, boto3_client=dynamodb))

    def register_lambda_context(self, context: Any) -> None:
        """Claims expire with this invocation, so a killed Lambda never blocks a retry for longer."""
        self._lambda_context = context

    def claim(self, event_id: str, target: str) -> Claim:
        """Claim the delivery of (event, target); AlreadyInFlight while another copy holds it."""
        key = {"event_id": event_id, "target": target}
        return self._claim(self._deliveries, key, f"event {event_id} is being delivered to {target} by another copy")

    def claim_dead_letter(self, message_id: str, target: str) -> Claim:
        """Claim the dead letter of (SQS message, target); AlreadyInFlight while another try holds it."""
        key = {"message_id": message_id, "target": target}
        return self._claim(self._dead_letters, key, f"message {message_id} is being dead-lettered for {target}")

    def complete(self, claim: Claim, result: dict[str, Any]) -> None:
        """The claimed work is done: later claims of the pair are `done`, with `result`."""
        claim.store.save_success(data=claim.key, result=result)

    def release(self, claim: Claim) -> None:
        """The claimed work failed and left nothing behind: the next claim starts afresh."""
        claim.store.release(claim.key)

    def hold(self, claim: Claim, seconds: float) -> None:
        """The claimed work failed but may have had its effect: other claims wait `seconds`, then see `earlier_try`."""
        try:
            claim.store.hold(claim.key, until_ms=int((time.time() + seconds) * 1000))
        except Exception as exc:  # left as it is, the record holds until the invocation's deadline: still safe
            log.warning("cannot shorten the hold of an ambiguous delivery: %s", type(exc).__name__)

    def delivered(self, event_id: str, target: str) -> bool:
        """Whether (event, target) was delivered and recorded as such (an in-progress record does not count)."""
        return _completed(self._deliveries, {"event_id": event_id, "target": target})

    def dead_lettered(self, message_id: str, target: str) -> bool:
        """Whether this SQS message already produced a dead letter for this target.

        Only a completed record counts: an in-progress one may be left by a try killed before its letter was sent.
        """
        return _completed(self._dead_letters, {"message_id": message_id, "target": target})

    def _claim(self, store: LedgerStore, key: dict[str, str], in_flight: str) -> Claim:
        for _ in range(CLAIM_TRIES):
            try:
                replaced = store.put_in_progress(key, self._remaining_ms())
            except IdempotencyItemAlreadyExistsError as exc:
                existing = exc.old_data_record or _record(store, key)
            else:
                return Claim(key, store, earlier_try=replaced is not None)
            if existing is None or replaceable(existing, time.time()):
                continue  # deleted or ended since the put failed: put again
            if existing.status == IN_PROGRESS:
                raise AlreadyInFlight(in_flight)
            return Claim(key, store, done=True, result=existing.response_json_as_dict() or {})
        raise IdempotencyInconsistentStateError(f"the record of {store.record_key(key)} kept changing")

    def _remaining_ms(self) -> int | None:
        context = self._lambda_context
        return None if context is None else int(context.get_remaining_time_in_millis())


def _configured(store: LedgerStore, config: IdempotencyConfig, prefix: str) -> LedgerStore:
    if not isinstance(store, LedgerStore):
        raise TypeError(f"the ledger's store must be a LedgerStore, not {type(store).__name__}")
    store.configure(config, key_prefix=prefix)
    return store


def _record(store: LedgerStore, key: dict[str, str]) -> DataRecord | None:
    try:
        return store.get_record(data=key)
    except IdempotencyItemNotFoundError:
        return None


def _completed(store: LedgerStore, key: dict[str, str]) -> bool:
    record = _record(store, key)
    return record is not None and record.status == COMPLETED
