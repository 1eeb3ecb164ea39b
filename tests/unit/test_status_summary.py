"""`status`'s pure parts: dead letters grouped by target and error, durations for people."""

from __future__ import annotations

from dataset_forwarder_cli.dead_letter_box import DeadLetterRecord
from dataset_forwarder_cli.render import duration
from dataset_forwarder_cli.status_cmd import group_letters


def _letter(target: str, error: str, sent_at_ms: int, **attributes: str) -> DeadLetterRecord:
    return DeadLetterRecord(
        message_id=f"m{sent_at_ms}",
        receipt_handle="rh",
        body="{}",
        attributes={"target": target, "error": error, **attributes},
        sent_at_ms=sent_at_ms,
    )


def test_letters_are_grouped_by_target_and_error_largest_group_first() -> None:
    letters = [
        _letter("team-c", "timeout", 5_000),
        _letter("team-b", "auth", 3_000),
        _letter("team-b", "auth", 1_000, unconfirmed="true"),
        _letter("team-b", "timeout", 2_000),
    ]

    groups = group_letters(letters)

    assert [(g.target, g.error, g.count, g.unconfirmed, g.oldest_ms) for g in groups] == [
        ("team-b", "auth", 2, 1, 1_000),
        ("team-b", "timeout", 1, 0, 2_000),
        ("team-c", "timeout", 1, 0, 5_000),
    ]
    assert groups[0].as_dict()["oldest_failed_at"] == "1970-01-01T00:00:01+00:00"


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (0, 12.7, 187, 3_600, 14_520)] == ["0s", "12s", "3m 07s", "1h 00m", "4h 02m"]
