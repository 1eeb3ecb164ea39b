"""An in-process stand-in for the idempotency table: a ledger persistence layer (`LedgerStore`) over a dict.

It keeps the DynamoDB layer's semantics that the ledger relies on (a conditional put that fails while an
unexpired record exists, unless that record is an in-progress one whose in-progress expiry has passed; the
existing record handed back with the failure; the replaced record returned by a put that succeeds; a hold
that moves an in-progress record's expiry), and can simulate the round trip of each operation (`latency_s`)
so that a benchmark sees a table that is neither free nor moto's.
One `MemoryTable` is shared by every layer a ledger makes, like one DynamoDB table.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field

from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import STATUS_CONSTANTS, DataRecord

from dataset_forwarder.ledger_store import LedgerStore, replaceable


@dataclass
class MemoryTable:
    """The records by idempotency key, and how many operations reached them."""

    latency_s: float = 0.0
    records: dict[str, DataRecord] = field(default_factory=dict)
    operations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def layer(self) -> MemoryPersistenceLayer:
        return MemoryPersistenceLayer(self)


class MemoryPersistenceLayer(LedgerStore):
    def __init__(self, table: MemoryTable) -> None:
        super().__init__()
        self.table = table

    def _round_trip(self) -> None:
        with self.table.lock:
            self.table.operations += 1
        if self.table.latency_s > 0:
            time.sleep(self.table.latency_s)  # the simulated network wait of one DynamoDB call

    def _get_record(self, idempotency_key: str) -> DataRecord:
        self._round_trip()
        with self.table.lock:
            record = self.table.records.get(idempotency_key)
        if record is None:
            raise IdempotencyItemNotFoundError
        return copy.copy(record)

    def _put_replacing(self, data_record: DataRecord) -> DataRecord | None:
        self._round_trip()
        now = time.time()
        with self.table.lock:
            existing = self.table.records.get(data_record.idempotency_key)
            if existing is not None and not replaceable(existing, now):
                raise IdempotencyItemAlreadyExistsError(old_data_record=copy.copy(existing))
            self.table.records[data_record.idempotency_key] = copy.copy(data_record)
        return existing

    def _update_record(self, data_record: DataRecord) -> None:
        self._round_trip()
        with self.table.lock:
            self.table.records[data_record.idempotency_key] = copy.copy(data_record)

    def _hold_record(self, idempotency_key: str, until_ms: int) -> None:
        self._round_trip()
        with self.table.lock:
            record = self.table.records.get(idempotency_key)
            if record is not None and record.status == STATUS_CONSTANTS["INPROGRESS"]:
                record.in_progress_expiry_timestamp = until_ms

    def _delete_record(self, data_record: DataRecord) -> None:
        self._round_trip()
        with self.table.lock:
            self.table.records.pop(data_record.idempotency_key, None)
