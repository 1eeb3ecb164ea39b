"""At-most-once bookkeeping on DynamoDB with Powertools Idempotency.

Two kinds of record share the table (partition key `id`, TTL attribute `expiration`):
- `delivery#…` keyed by (event id, target): a target gets an event at most once, whatever
  the number of SQS copies, retries or redrives;
- `dead-letter#…` keyed by (SQS message id, target): one dead letter per failure even when
  the record is retried, and a retried record skips the targets it already dead-lettered.
A failed delivery deletes its in-progress record, so a later try may deliver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.idempotency import idempotent_function
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord

from .outcomes import AlreadyInFlight

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer

    StoreFactory = Callable[[], BasePersistenceLayer]

DELIVERY_PREFIX = "dataset-forwarder#delivery"
DEAD_LETTER_PREFIX = "dataset-forwarder#dead-letter"
REPLAYED = "replayed"


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    return {**(response or {}), REPLAYED: True}


def _run(*, key: dict[str, str], action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return action()


class Ledger:
    def __init__(self, *, ttl_s: int, store: StoreFactory) -> None:
        """`store` makes a Powertools persistence layer; it is called once per key prefix."""
        self._config = IdempotencyConfig(expires_after_seconds=ttl_s, response_hook=_mark_replayed)
        # One persistence layer per key prefix: Powertools stores the prefix on the layer itself.
        self._delivery_store = store()
        self._dead_letter_store = store()
        self._dead_letter_store.configure(self._config, key_prefix=DEAD_LETTER_PREFIX)
        self._deliver = idempotent_function(
            _run,
            data_keyword_argument="key",
            persistence_store=self._delivery_store,
            config=self._config,
            key_prefix=DELIVERY_PREFIX,
        )
        self._dead_letter = idempotent_function(
            _run,
            data_keyword_argument="key",
            persistence_store=self._dead_letter_store,
            config=self._config,
            key_prefix=DEAD_LETTER_PREFIX,
        )

    @classmethod
    def on_dynamodb(cls, *, table: str, ttl_s: int, dynamodb: Any) -> Ledger:
        """The production ledger: the idempotency table, through the given DynamoDB client."""
        return cls(ttl_s=ttl_s, store=lambda: DynamoDBPersistenceLayer(table_name=table, boto3_client=dynamodb))

    def register_lambda_context(self, context: Any) -> None:
        """In-progress records expire with the invocation, so a killed Lambda never blocks a retry."""
        self._config.register_lambda_context(context)

    def deliver_once(
        self, event_id: str, target: str, action: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Run `action` unless (event, target) was delivered before; returns (result, replayed)."""
        try:
            result = self._deliver(key={"event_id": event_id, "target": target}, action=action)
        except IdempotencyAlreadyInProgressError:
            raise AlreadyInFlight(f"event {event_id} is being delivered to {target} by another copy") from None
        return _split(result)

    def dead_letter_once(
        self, message_id: str, target: str, action: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        try:
            result = self._dead_letter(key={"message_id": message_id, "target": target}, action=action)
        except IdempotencyAlreadyInProgressError:
            raise AlreadyInFlight(f"message {message_id} is being dead-lettered for {target}") from None
        return _split(result)

    def delivered(self, event_id: str, target: str) -> bool:
        """Whether (event, target) was delivered and recorded as such (an in-progress record does not count)."""
        return _completed(self._delivery_store, {"event_id": event_id, "target": target})

    def dead_lettered(self, message_id: str, target: str) -> bool:
        """Whether this SQS message already produced a dead letter for this target.

        Only a completed record counts: an in-progress one may be left by a try killed before its letter was sent.
        """
        return _completed(self._dead_letter_store, {"message_id": message_id, "target": target})


def _completed(store: BasePersistenceLayer, key: dict[str, str]) -> bool:
    try:
        record = store.get_record(data=key)
    except IdempotencyItemNotFoundError:
        return False
    return record is not None and record.status == STATUS_CONSTANTS["COMPLETED"]


def _split(result: Any) -> tuple[dict[str, Any], bool]:
    result = dict(result or {})
    replayed = bool(result.pop(REPLAYED, False))
    return result, replayed
