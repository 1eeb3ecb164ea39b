"""The delivery half of the ledger: at most once per (event, target), and a claim learns whether an earlier try
of its pair may have landed."""

from __future__ import annotations

import time

import pytest

from dataset_forwarder.ledger import Ledger
from dataset_forwarder.outcomes import AlreadyInFlight
from dataset_forwarder_cli.local.bootstrap import LambdaContext
from devkit.idempotency import MemoryTable


def _ledger(table: MemoryTable) -> Ledger:
    ledger = Ledger(ttl_s=3600, store=table.layer)
    ledger.register_lambda_context(LambdaContext(timeout_s=60))
    return ledger


def _expire_in_progress(table: MemoryTable) -> None:
    """The invocation that wrote the in-progress records has passed its deadline."""
    for record in table.records.values():
        record.in_progress_expiry_timestamp = 0


def test_a_first_claim_is_told_of_no_earlier_try() -> None:
    claim = _ledger(MemoryTable()).claim("event-1", "team-b")

    assert (claim.done, claim.earlier_try) == (False, False)


def test_a_completed_pair_is_done_with_its_result_for_every_later_claim() -> None:
    ledger = _ledger(MemoryTable())
    ledger.complete(ledger.claim("event-1", "team-b"), {"status": 200})

    again = ledger.claim("event-1", "team-b")

    assert (again.done, again.result) == (True, {"status": 200})
    assert ledger.claim("event-1", "team-b").done  # still, however often
    assert ledger.delivered("event-1", "team-b") is True
    assert ledger.claim("event-1", "team-c").done is False  # another target's pair is its own


def test_a_claimed_pair_is_in_flight_for_other_copies_and_not_delivered() -> None:
    ledger = _ledger(MemoryTable())
    ledger.claim("event-1", "team-b")

    with pytest.raises(AlreadyInFlight, match="event event-1 is being delivered to team-b"):
        ledger.claim("event-1", "team-b")
    assert ledger.delivered("event-1", "team-b") is False


def test_a_claim_after_a_released_one_is_told_of_no_earlier_try() -> None:
    ledger = _ledger(MemoryTable())
    ledger.release(ledger.claim("event-1", "team-b"))  # a clean failure: nothing reached the target

    again = ledger.claim("event-1", "team-b")

    assert (again.done, again.earlier_try) == (False, False)


def test_a_claim_after_a_held_one_is_in_flight_during_the_hold_and_told_of_the_earlier_try_after_it() -> None:
    table = MemoryTable()
    ledger = _ledger(table)
    ledger.hold(ledger.claim("event-1", "team-b"), 60.0)  # its POST may have landed

    with pytest.raises(AlreadyInFlight):
        ledger.claim("event-1", "team-b")
    _expire_in_progress(table)  # the hold passed
    again = ledger.claim("event-1", "team-b")
    other = ledger.claim("event-1", "team-c")

    assert (again.done, again.earlier_try) == (False, True)
    assert other.earlier_try is False  # another target's pair is its own


def test_a_hold_outlasts_the_invocation_that_claimed() -> None:
    table = MemoryTable()
    ledger = _ledger(table)
    claim = ledger.claim("event-1", "team-b")
    _expire_in_progress(table)  # the claiming invocation ends...
    ledger.hold(claim, 60.0)  # ...but its POST may still land

    with pytest.raises(AlreadyInFlight):
        ledger.claim("event-1", "team-b")


def test_a_claim_after_a_killed_one_is_in_flight_until_the_invocation_deadline_then_told_of_it() -> None:
    table = MemoryTable()
    ledger = _ledger(table)
    ledger.claim("event-1", "team-b")  # then the invocation is killed: never completed nor released
    with pytest.raises(AlreadyInFlight):  # the killed invocation might still be posting
        ledger.claim("event-1", "team-b")

    _expire_in_progress(table)
    again = ledger.claim("event-1", "team-b")

    assert (again.done, again.earlier_try) == (False, True)


def test_a_claim_blocks_only_until_the_invocation_deadline() -> None:
    table = MemoryTable()
    ledger = _ledger(table)
    before_ms = LambdaContext(timeout_s=60).get_remaining_time_in_millis()
    ledger.claim("event-1", "team-b")

    (record,) = table.records.values()
    assert record.in_progress_expiry_timestamp is not None
    left_ms = record.in_progress_expiry_timestamp - time.time() * 1000
    assert before_ms - 5_000 < left_ms <= before_ms


def test_the_ledger_needs_a_store_that_reports_replaced_records() -> None:
    with pytest.raises(TypeError, match="must be a LedgerStore, not object"):
        Ledger(ttl_s=3600, store=object)  # type: ignore[arg-type]
