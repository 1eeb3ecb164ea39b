"""Redrive in batches: only what the events queue accepted leaves the DLQ; refusals are reported."""

from __future__ import annotations

from typing import Any

import pytest

from dataset_forwarder_cli.dead_letter_box import DeadLetterBox, RedriveIncomplete


class SqsWithRefusals:
    """The few SQS calls a redrive makes, in memory; the events queue refuses bodies containing "refuse"."""

    def __init__(self, bodies: list[str]) -> None:
        self.dlq = {f"m{i}": body for i, body in enumerate(bodies)}
        self.delivered: list[str] = []
        self.calls: list[str] = []
        self._served = False

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("receive")
        if self._served:
            return {"Messages": []}
        self._served = True
        messages = [
            {"MessageId": mid, "ReceiptHandle": f"rh-{mid}", "Body": body, "MessageAttributes": {}}
            for mid, body in self.dlq.items()
        ]
        return {"Messages": messages}

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("release")
        return {"Successful": kwargs["Entries"], "Failed": []}

    def send_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("send_batch")
        entries = kwargs["Entries"]
        assert len(entries) <= 10
        ok = [e for e in entries if "refuse" not in e["MessageBody"]]
        self.delivered += [e["MessageBody"] for e in ok]
        failed = [{"Id": e["Id"], "Code": "InvalidParameterValue", "SenderFault": True} for e in entries if e not in ok]
        return {"Successful": [{"Id": e["Id"], "MessageId": "x"} for e in ok], "Failed": failed}

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append("delete_batch")
        for entry in kwargs["Entries"]:
            del self.dlq[entry["ReceiptHandle"].removeprefix("rh-")]
        return {"Successful": kwargs["Entries"], "Failed": []}


def test_redrive_sends_and_deletes_ten_at_a_time() -> None:
    sqs = SqsWithRefusals([f'{{"id": "{i}"}}' for i in range(10)])

    moved = DeadLetterBox(sqs, "dlq").redrive("events")

    assert len(moved) == 10
    assert sqs.dlq == {}
    assert sqs.calls.count("send_batch") == 1
    assert sqs.calls.count("delete_batch") == 1


def test_refused_messages_stay_in_the_dlq_and_the_redrive_says_so() -> None:
    sqs = SqsWithRefusals(['{"id": "1"}', '{"id": "2", "x": "refuse"}', '{"id": "3"}'])

    with pytest.raises(RedriveIncomplete, match="1 message\\(s\\) were refused") as raised:
        DeadLetterBox(sqs, "dlq").redrive("events")

    assert sorted(r.message_id for r in raised.value.moved) == ["m0", "m2"]
    assert list(sqs.dlq) == ["m1"]
    assert len(sqs.delivered) == 2


class SqsWhoseDeletesFail(SqsWithRefusals):
    """Deletes fail for bodies containing "stuck" (an expired receipt handle), or the whole call fails."""

    def __init__(self, bodies: list[str], *, whole_call: bool = False) -> None:
        super().__init__(bodies)
        self.whole_call = whole_call

    def delete_message_batch(self, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        self.calls.append("delete_batch")
        if self.whole_call:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "try later"}}, "DeleteMessageBatch")
        ok, failed = [], []
        for entry in kwargs["Entries"]:
            message_id = entry["ReceiptHandle"].removeprefix("rh-")
            if "stuck" in self.dlq[message_id]:
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid", "SenderFault": True})
            else:
                del self.dlq[message_id]
                ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}


def test_a_letter_sent_but_not_deleted_is_reported_apart_from_the_moved_ones() -> None:
    sqs = SqsWhoseDeletesFail(['{"id": "1"}', '{"id": "2", "x": "stuck"}', '{"id": "3"}'])

    with pytest.raises(RedriveIncomplete, match=r"1 message\(s\) were sent .* but NOT deleted") as raised:
        DeadLetterBox(sqs, "dlq").redrive("events")

    assert sorted(r.message_id for r in raised.value.moved) == ["m0", "m2"]
    assert [(r.message_id, reason) for r, reason in raised.value.not_deleted] == [("m1", "ReceiptHandleIsInvalid")]
    assert list(sqs.dlq) == ["m1"]
    assert len(sqs.delivered) == 3


def test_a_failed_delete_call_leaves_every_letter_of_its_batch_reported_as_not_deleted() -> None:
    sqs = SqsWhoseDeletesFail(['{"id": "1"}', '{"id": "2"}'], whole_call=True)

    with pytest.raises(RedriveIncomplete, match="InternalError") as raised:
        DeadLetterBox(sqs, "dlq").redrive("events")

    assert raised.value.moved == []
    assert sorted(r.message_id for r, _ in raised.value.not_deleted) == ["m0", "m1"]


class SqsWhoseHoldsRunOut:
    """Serves 25 messages in batches; the first batch comes back (new receipt handles) before the rest, as when a
    scan of a long queue outlives its holds."""

    def __init__(self) -> None:
        ids = [f"m{i}" for i in range(25)]
        self.batches = [ids[0:10], ids[0:10], ids[10:20], ids[20:25], []]
        self.released: list[str] = []

    def receive_message(self, **kwargs: Any) -> dict[str, Any]:
        batch = self.batches.pop(0) if self.batches else []
        round_ = 5 - len(self.batches)
        return {
            "Messages": [
                {"MessageId": mid, "ReceiptHandle": f"{mid}@{round_}", "Body": "{}", "MessageAttributes": {}}
                for mid in batch
            ]
        }

    def change_message_visibility_batch(self, **kwargs: Any) -> dict[str, Any]:
        self.released += [e["ReceiptHandle"] for e in kwargs["Entries"]]
        return {"Successful": kwargs["Entries"], "Failed": []}


def test_a_scan_outliving_its_holds_still_sees_every_message_once_with_the_newest_receipt_handle() -> None:
    sqs = SqsWhoseHoldsRunOut()

    records = DeadLetterBox(sqs, "dlq").peek()

    assert sorted(r.message_id for r in records) == sorted(f"m{i}" for i in range(25))
    assert {r.receipt_handle for r in records if r.message_id == "m0"} == {"m0@2"}
    assert len(sqs.released) == 25
