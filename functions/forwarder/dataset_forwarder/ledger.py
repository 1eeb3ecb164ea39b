"""At-most-once bookkeeping on DynamoDB with Powertools Idempotency.

Two kinds of record share the table (partition key `id`, TTL attribute `expiration`):
- `delivery#…` keyed by (event id, target): a target gets an event at most once, whatever
  the number of SQS copies, retries or redrives;
- `dead-letter#…` keyed by (SQS message id, target): one dead letter per failure even when
  the record is retried, and a retried record skips the targets it already dead-lettered.
A failed delivery deletes its in-progress record, so a later try may deliver; unless its POST may have
landed (the answer was lost): then the record stays, locked for `hold_s`, so that any copy that takes it over
afterwards learns that an earlier try of the pair may have landed and checks the target before posting. A try
killed mid-delivery leaves its in-progress record too, until the invocation's deadline. A put that replaces a
record is how a try learns of an earlier one: `DeliveryRecords.took_over()`, at no extra call to the table.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.idempotency import idempotent_function
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord

from .outcomes import AlreadyInFlight, DeliveryFailed

if TYPE_CHECKING:
    StoreFactory = Callable[[], BasePersistenceLayer]

log = logging.getLogger(__name__)

DELIVERY_PREFIX = "dataset-forwarder#delivery"
DEAD_LETTER_PREFIX = "dataset-forwarder#dead-letter"
REPLAYED = "replayed"


def _mark_replayed(response: Any, idempotent_data: DataRecord) -> Any:
    return {**(response or {}), REPLAYED: True}


def _run(*, key: dict[str, str], action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return action()


class DeliveryRecords(BasePersistenceLayer):
    """What the ledger adds to a Powertools persistence layer for delivery records (a mixin: put it first).

    - `took_over()`: whether this thread's last in-progress put replaced an earlier record of its key (an
      expired in-progress one, left by a killed or ambiguous try, or a completed one past its expiry);
      the layer calls `_replaced(bool)` from its put.
    - A function that fails with `may_have_landed` keeps its in-progress record for `hold_s` more
      (`_hold`) instead of deleting it.
    """

    hold_s: float = 0.0

    def _replaced(self, replaced: bool) -> None:
        self._this_thread().took_over = replaced

    def took_over(self) -> bool:
        return bool(getattr(self._this_thread(), "took_over", False))

    def forget_take_over(self) -> None:
        self._this_thread().took_over = False

    def _this_thread(self) -> threading.local:
        state = self.__dict__.get("_delivery_records_state")
        if state is None:
            state = self.__dict__.setdefault("_delivery_records_state", threading.local())
        return state  # type: ignore[no-any-return]

    def delete_record(self, data: dict[str, Any], exception: Exception) -> None:
        if not (isinstance(exception, DeliveryFailed) and exception.may_have_landed):
            super().delete_record(data, exception)
            return
        idempotency_key = self._get_hashed_idempotency_key(data=data)
        if idempotency_key is None:
            return
        hold_s = exception.hold_s if exception.hold_s is not None else self.hold_s
        try:
            self._hold(idempotency_key, until_ms=int((time.time() + hold_s) * 1000))
        except Exception as exc:  # left as it is, the record holds until the invocation's deadline: still safe
            log.warning("cannot shorten the hold of an ambiguous delivery: %s", type(exc).__name__)

    def _hold(self, idempotency_key: str, until_ms: int) -> None:
        """Keep the in-progress record of `idempotency_key` until `until_ms` (epoch milliseconds)."""
        raise NotImplementedError


class DynamoDBDeliveryRecords(DeliveryRecords, DynamoDBPersistenceLayer):
    """Powertools' DynamoDB layer whose puts return the item they replace (PutItem ReturnValues=ALL_OLD)."""

    def __init__(self, *, table_name: str, boto3_client: Any) -> None:
        super().__init__(table_name=table_name, boto3_client=_ReportsReplacedItems(boto3_client, self._replaced))

    def _hold(self, idempotency_key: str, until_ms: int) -> None:
        self.client.update_item(
            TableName=self.table_name,
            Key=self._get_key(idempotency_key),
            UpdateExpression="SET #in_progress_expiry = :until",
            ConditionExpression="#status = :in_progress",
            ExpressionAttributeNames={"#in_progress_expiry": self.in_progress_expiry_attr, "#status": self.status_attr},
            ExpressionAttributeValues={
                ":until": {"N": str(until_ms)},
                ":in_progress": {"S": STATUS_CONSTANTS["INPROGRESS"]},
            },
        )


class _ReportsReplacedItems:
    """A DynamoDB client whose put_item asks for the item it replaces and reports whether there was one."""

    def __init__(self, client: Any, report: Callable[[bool], None]) -> None:
        self._client = client
        self._report = report

    def put_item(self, **kwargs: Any) -> Any:
        response = self._client.put_item(**kwargs, ReturnValues="ALL_OLD")
        self._report(bool(response.get("Attributes")))
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class Ledger:
    def __init__(self, *, ttl_s: int, store: StoreFactory, hold_s: float = 0.0) -> None:
        """`store` makes a Powertools persistence layer that is also `DeliveryRecords`; called once per key prefix.

        `hold_s`: how long a delivery whose POST may have landed keeps other copies of the pair waiting (they
        are told it is in flight); after it, the next copy checks the target before posting.
        """
        self._config = IdempotencyConfig(expires_after_seconds=ttl_s, response_hook=_mark_replayed)
        # One persistence layer per key prefix: Powertools stores the prefix on the layer itself.
        delivery_store = store()
        if not isinstance(delivery_store, DeliveryRecords):
            raise TypeError(f"the ledger's store must be DeliveryRecords, not {type(delivery_store).__name__}")
        delivery_store.hold_s = hold_s
        self._delivery_store = delivery_store
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
    def on_dynamodb(cls, *, table: str, ttl_s: int, dynamodb: Any, hold_s: float = 0.0) -> Ledger:
        """The production ledger: the idempotency table, through the given DynamoDB client."""
        return cls(
            ttl_s=ttl_s,
            store=lambda: DynamoDBDeliveryRecords(table_name=table, boto3_client=dynamodb),
            hold_s=hold_s,
        )

    def register_lambda_context(self, context: Any) -> None:
        """In-progress records expire with the invocation, so a killed Lambda never blocks a retry."""
        self._config.register_lambda_context(context)

    def deliver_once(
        self, event_id: str, target: str, action: Callable[[bool], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """Run `action` unless (event, target) was delivered before; returns (result, replayed).

        `action(earlier_try)`: `earlier_try` is true when the record it runs under replaced one left by an
        earlier try of the pair (killed, or whose POST may have landed): check the target before posting.
        """
        store = self._delivery_store
        store.forget_take_over()
        try:
            result = self._deliver(
                key={"event_id": event_id, "target": target}, action=lambda: action(store.took_over())
            )
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
