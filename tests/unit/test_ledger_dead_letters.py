"""The dead-letter half of the ledger: only a letter that was really sent settles a target."""

from __future__ import annotations

import pytest

from dataset_forwarder.ledger import Ledger
from dataset_forwarder.outcomes import AlreadyInFlight
from dataset_forwarder_cli.local.bootstrap import LambdaContext
from devkit.idempotency import MemoryTable


def _ledger() -> Ledger:
    ledger = Ledger(ttl_s=3600, store=MemoryTable().layer)
    ledger.register_lambda_context(LambdaContext(timeout_s=60))
    return ledger


def test_a_try_killed_before_its_dead_letter_was_sent_does_not_count_as_dead_lettered() -> None:
    ledger = _ledger()
    ledger.claim_dead_letter("message-1", "team-b")  # then killed: never completed

    assert ledger.dead_lettered("message-1", "team-b") is False
    with pytest.raises(AlreadyInFlight, match="message message-1 is being dead-lettered for team-b"):
        ledger.claim_dead_letter("message-1", "team-b")


def test_a_sent_dead_letter_settles_the_target_for_later_tries_of_the_message() -> None:
    ledger = _ledger()
    ledger.complete(ledger.claim_dead_letter("message-1", "team-b"), {"dead_letter_id": "dl-1"})

    assert ledger.dead_lettered("message-1", "team-b") is True
    assert ledger.dead_lettered("message-1", "team-c") is False
    again = ledger.claim_dead_letter("message-1", "team-b")
    assert (again.done, again.result) == (True, {"dead_letter_id": "dl-1"})


def test_a_letter_that_could_not_be_sent_leaves_the_pair_to_the_next_try() -> None:
    ledger = _ledger()
    ledger.release(ledger.claim_dead_letter("message-1", "team-b"))

    assert ledger.dead_lettered("message-1", "team-b") is False
    assert ledger.claim_dead_letter("message-1", "team-b").done is False


def test_dead_letters_and_deliveries_are_separate_records() -> None:
    ledger = _ledger()
    ledger.complete(ledger.claim_dead_letter("same-id", "team-b"), {"dead_letter_id": "dl-1"})

    assert ledger.delivered("same-id", "team-b") is False
    assert ledger.claim("same-id", "team-b").done is False
