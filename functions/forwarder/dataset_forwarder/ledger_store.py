"""Where the ledger keeps its records: a Powertools idempotency persistence layer ("bring your own store").

The records have Powertools' shape and keys (`<prefix>#<md5 of the key's JSON>`), so Powertools' own
`idempotent_function` and the ledger read each other's records. What the ledger adds to a layer: an in-progress
put that returns the record it replaced, and a hold that keeps an in-progress record past its invocation.
"""

from __future__ import annotations

import datetime as dt
import time
from abc import abstractmethod
from typing import Any

from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyItemAlreadyExistsError
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord
from botocore.exceptions import ClientError

IN_PROGRESS = STATUS_CONSTANTS["INPROGRESS"]
COMPLETED = STATUS_CONSTANTS["COMPLETED"]


class LedgerStore(BasePersistenceLayer):
    """A persistence layer the ledger can claim with. Records are addressed by their key (a dict of strings),
    hashed as Powertools does; `get_record` and `save_success` are Powertools' own.

    A subclass implements Powertools' `_get_record`, `_update_record`, `_delete_record`, and `_put_replacing`
    (the conditional put, returning the record it replaced) and `_hold_record`.
    """

    def put_in_progress(self, key: dict[str, str], remaining_ms: int | None) -> DataRecord | None:
        """Write `key`'s in-progress record, as Powertools' `save_inprogress` does; returns the record it replaced.

        Raises IdempotencyItemAlreadyExistsError (with the record, when known) if a live one exists.
        `remaining_ms`: the invocation's time left; the record stops blocking others then (None: at its expiry).
        """
        record = DataRecord(
            idempotency_key=self.record_key(key),
            status=IN_PROGRESS,
            expiry_timestamp=self._get_expiry_timestamp(),
            payload_hash=self._get_hashed_payload(data=key),
        )
        if remaining_ms is not None:
            record.in_progress_expiry_timestamp = int(time.time() * 1000) + remaining_ms
        return self._put_replacing(record)

    def hold(self, key: dict[str, str], until_ms: int) -> None:
        """Keep `key`'s in-progress record blocking others until `until_ms` (epoch milliseconds)."""
        self._hold_record(self.record_key(key), until_ms)

    def release(self, key: dict[str, str]) -> None:
        """Delete `key`'s record: a later claim starts afresh."""
        self._delete_record(DataRecord(idempotency_key=self.record_key(key)))

    def record_key(self, key: dict[str, str]) -> str:
        hashed = self._get_hashed_idempotency_key(data=key)
        if hashed is None:
            raise ValueError("a ledger key needs values")
        return hashed

    def _put_record(self, data_record: DataRecord) -> None:
        self._put_replacing(data_record)

    @abstractmethod
    def _put_replacing(self, data_record: DataRecord) -> DataRecord | None:
        """Put `data_record` unless its key holds a live record (Powertools' condition); return the one replaced."""

    @abstractmethod
    def _hold_record(self, idempotency_key: str, until_ms: int) -> None:
        """Set the in-progress expiry of `idempotency_key`'s record, if it is still in progress."""


def replaceable(record: DataRecord, now_s: float) -> bool:
    """Powertools' put condition for a key that holds `record`: expired, or in progress past its invocation."""
    if record.expiry_timestamp is not None and record.expiry_timestamp < int(now_s):
        return True
    in_progress_until = record.in_progress_expiry_timestamp
    return record.status == IN_PROGRESS and in_progress_until is not None and in_progress_until < int(now_s * 1000)


class DynamoDBLedgerStore(LedgerStore, DynamoDBPersistenceLayer):
    """The idempotency table: Powertools' DynamoDB layer, whose put also asks for the item it replaces."""

    def __init__(self, *, table_name: str, boto3_client: Any) -> None:
        super().__init__(table_name=table_name, boto3_client=boto3_client)

    def _put_replacing(self, data_record: DataRecord) -> DataRecord | None:
        item: dict[str, Any] = {
            **self._get_key(data_record.idempotency_key),
            self.expiry_attr: {"N": str(data_record.expiry_timestamp)},
            self.status_attr: {"S": data_record.status},
        }
        if data_record.in_progress_expiry_timestamp is not None:
            item[self.in_progress_expiry_attr] = {"N": str(data_record.in_progress_expiry_timestamp)}
        if self.payload_validation_enabled and data_record.payload_hash:
            item[self.validation_key_attr] = {"S": data_record.payload_hash}
        now = dt.datetime.now().timestamp()
        try:
            response = self.client.put_item(
                TableName=self.table_name,
                Item=item,
                # no record; or an expired one; or one in progress whose invocation is over
                ConditionExpression=(
                    "attribute_not_exists(#id) OR #expiry < :now OR "
                    "(#status = :in_progress AND attribute_exists(#in_progress_expiry) "
                    "AND #in_progress_expiry < :now_ms)"
                ),
                ExpressionAttributeNames={
                    "#id": self.key_attr,
                    "#expiry": self.expiry_attr,
                    "#status": self.status_attr,
                    "#in_progress_expiry": self.in_progress_expiry_attr,
                },
                ExpressionAttributeValues={
                    ":now": {"N": str(int(now))},
                    ":now_ms": {"N": str(int(now * 1000))},
                    ":in_progress": {"S": IN_PROGRESS},
                },
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            existing = exc.response.get("Item")
            old = self._item_to_data_record(existing) if existing else None
            raise IdempotencyItemAlreadyExistsError(old_data_record=old) from exc
        replaced = response.get("Attributes")
        return self._item_to_data_record(replaced) if replaced else None

    def _hold_record(self, idempotency_key: str, until_ms: int) -> None:
        self.client.update_item(
            TableName=self.table_name,
            Key=self._get_key(idempotency_key),
            UpdateExpression="SET #in_progress_expiry = :until",
            ConditionExpression="#status = :in_progress",
            ExpressionAttributeNames={"#in_progress_expiry": self.in_progress_expiry_attr, "#status": self.status_attr},
            ExpressionAttributeValues={":until": {"N": str(until_ms)}, ":in_progress": {"S": IN_PROGRESS}},
        )
