"""The delivery half of the ledger: a try learns whether an earlier try of its (event, target) may have landed."""

from __future__ import annotations

from typing import Any

import pytest

from dataset_forwarder.ledger import Ledger
from dataset_forwarder.outcomes import AlreadyInFlight, DeliveryFailed
from dataset_forwarder_cli.local.bootstrap import LambdaContext
from tests.fakes.idempotency import Killed, MemoryTable


class Recorder:
    """An action that records the `earlier_try` it was given, then does what it is told."""

    def __init__(self, outcome: BaseException | None = None) -> None:
        self.outcome = outcome
        self.calls: list[bool] = []

    def __call__(self, earlier_try: bool) -> dict[str, Any]:
        self.calls.append(earlier_try)
        if self.outcome is not None:
            raise self.outcome
        return {"status": 200}


def _ledger(table: MemoryTable, hold_s: float = 0.0) -> Ledger:
    ledger = Ledger(ttl_s=3600, store=table.layer, hold_s=hold_s)
    ledger.register_lambda_context(LambdaContext(timeout_s=60))
    return ledger


def _expire_in_progress(table: MemoryTable) -> None:
    """The invocation that wrote the in-progress records has passed its deadline."""
    for record in table.records.values():
        record.in_progress_expiry_timestamp = 0


def _lost_answer() -> DeliveryFailed:
    return DeliveryFailed("timeout", "no answer within 0.5s", transient=True, may_have_landed=True)


def test_a_first_try_is_told_of_no_earlier_try() -> None:
    action = Recorder()

    assert _ledger(MemoryTable()).deliver_once("event-1", "team-b", action) == ({"status": 200}, False)
    assert action.calls == [False]


def test_a_try_after_a_clean_failure_is_told_of_no_earlier_try() -> None:
    ledger = _ledger(MemoryTable())
    refused = DeliveryFailed("server_error", "answered 503", transient=True)
    with pytest.raises(DeliveryFailed):
        ledger.deliver_once("event-1", "team-b", Recorder(refused))

    again = Recorder()
    ledger.deliver_once("event-1", "team-b", again)

    assert again.calls == [False]  # the failed try's record was deleted: nothing may have landed


def test_a_try_after_one_whose_post_may_have_landed_is_told_once_the_hold_passed() -> None:
    table = MemoryTable()
    ledger = _ledger(table, hold_s=60.0)
    with pytest.raises(DeliveryFailed):
        ledger.deliver_once("event-1", "team-b", Recorder(_lost_answer()))
    _expire_in_progress(table)  # the hold passed

    again = Recorder()
    ledger.deliver_once("event-1", "team-b", again)
    other = Recorder()
    ledger.deliver_once("event-1", "team-c", other)

    assert again.calls == [True]
    assert other.calls == [False]  # another target's pair is its own


def test_during_the_hold_another_copy_is_told_the_pair_is_in_flight() -> None:
    ledger = _ledger(MemoryTable(), hold_s=60.0)
    with pytest.raises(DeliveryFailed):
        ledger.deliver_once("event-1", "team-b", Recorder(_lost_answer()))

    blocked = Recorder()
    with pytest.raises(AlreadyInFlight):
        ledger.deliver_once("event-1", "team-b", blocked)
    assert blocked.calls == []


def test_a_try_after_a_killed_one_is_told_once_the_invocation_deadline_passed() -> None:
    table = MemoryTable()
    ledger = _ledger(table)
    with pytest.raises(Killed):
        ledger.deliver_once("event-1", "team-b", Recorder(Killed()))
    with pytest.raises(AlreadyInFlight):  # the killed invocation might still be posting
        ledger.deliver_once("event-1", "team-b", Recorder())

    _expire_in_progress(table)
    again = Recorder()
    ledger.deliver_once("event-1", "team-b", again)

    assert again.calls == [True]


def test_a_delivered_pair_is_replayed_without_running_the_action() -> None:
    ledger = _ledger(MemoryTable())
    ledger.deliver_once("event-1", "team-b", Recorder())

    again = Recorder()
    assert ledger.deliver_once("event-1", "team-b", again) == ({"status": 200}, True)
    assert again.calls == []


def test_the_ledger_needs_a_store_that_reports_replaced_records() -> None:
    with pytest.raises(TypeError, match="must be DeliveryRecords, not object"):
        Ledger(ttl_s=3600, store=object)  # type: ignore[arg-type]
