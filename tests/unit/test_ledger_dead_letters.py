"""The dead-letter half of the ledger: only a letter that was really sent settles a target."""

from __future__ import annotations

import pytest

from dataset_forwarder.ledger import Ledger
from tests.fakes.idempotency import Killed, MemoryTable


def _killed() -> dict[str, str]:
    raise Killed


def test_a_try_killed_before_its_dead_letter_was_sent_does_not_count_as_dead_lettered() -> None:
    ledger = Ledger(ttl_s=3600, store=MemoryTable().layer)
    with pytest.raises(Killed):
        ledger.dead_letter_once("message-1", "team-b", _killed)

    assert ledger.dead_lettered("message-1", "team-b") is False


def test_a_sent_dead_letter_settles_the_target_for_later_tries_of_the_message() -> None:
    ledger = Ledger(ttl_s=3600, store=MemoryTable().layer)
    ledger.dead_letter_once("message-1", "team-b", lambda: {"dead_letter_id": "dl-1"})

    assert ledger.dead_lettered("message-1", "team-b") is True
    assert ledger.dead_lettered("message-1", "team-c") is False
    assert ledger.dead_letter_once("message-1", "team-b", _killed) == ({"dead_letter_id": "dl-1"}, True)
