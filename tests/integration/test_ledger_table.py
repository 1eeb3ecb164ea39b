"""The ledger on DynamoDB (moto server) keeps Powertools' record format and keys.

The forwarder before the ledger's claim/complete flow wrote its records through Powertools' own
`idempotent_function`; a deployed table must keep its at-most-once promise across the upgrade (and a rollback).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer, IdempotencyConfig
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.idempotency.idempotency import idempotent_function

from dataset_forwarder.ledger import Ledger
from dataset_forwarder.outcomes import AlreadyInFlight
from dataset_forwarder_cli.local.bootstrap import LambdaContext

TTL_S = 3600
# The key prefixes deployed tables hold (written out: the ledger's constants must keep these values).
DELIVERY_PREFIX = "dataset-forwarder#delivery"
DEAD_LETTER_PREFIX = "dataset-forwarder#dead-letter"


class Killed(BaseException):
    """The execution environment dies here: Powertools does not clean up after it."""


class Table:
    def __init__(self) -> None:
        self.client = boto3.client("dynamodb")
        self.name = f"idempotency-{uuid.uuid4().hex[:10]}"
        self.client.create_table(
            TableName=self.name,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )

    def ledger(self) -> Ledger:
        ledger = Ledger.on_dynamodb(table=self.name, ttl_s=TTL_S, dynamodb=self.client)
        ledger.register_lambda_context(LambdaContext(timeout_s=60))
        return ledger

    def item(self, prefix: str, key: dict[str, str]) -> dict[str, Any]:
        """The raw item of `key`, found by the key derivation deployed tables hold: prefix#md5(sorted JSON)."""
        digest = hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()
        found = self.client.get_item(TableName=self.name, Key={"id": {"S": f"{prefix}#{digest}"}}, ConsistentRead=True)
        return dict(found.get("Item", {}))

    def end_invocations(self, prefix: str, key: dict[str, str]) -> None:
        """The invocation that wrote `key`'s in-progress record has passed its deadline."""
        self.client.update_item(
            TableName=self.name,
            Key={"id": self.item(prefix, key)["id"]},
            UpdateExpression="SET in_progress_expiration = :past",
            ExpressionAttributeValues={":past": {"N": "0"}},
        )


def _run(*, key: dict[str, str], action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return action()


def previous_forwarder(table: Table, prefix: str) -> Callable[..., dict[str, Any]]:
    """How the previous forwarder wrote a record: plain Powertools, one layer per prefix."""
    config = IdempotencyConfig(expires_after_seconds=TTL_S)
    config.register_lambda_context(LambdaContext(timeout_s=60))
    store = DynamoDBPersistenceLayer(table_name=table.name, boto3_client=table.client)
    return idempotent_function(  # type: ignore[no-any-return]
        _run, data_keyword_argument="key", persistence_store=store, config=config, key_prefix=prefix
    )


@pytest.fixture
def table(aws_env: str) -> Table:
    return Table()


PAIR = {"event_id": "event-1", "target": "team-b"}


def test_a_pair_the_previous_forwarder_delivered_is_done_for_the_ledger(table: Table) -> None:
    previous_forwarder(table, DELIVERY_PREFIX)(key=PAIR, action=lambda: {"status": 200, "api": "v2"})
    ledger = table.ledger()

    claim = ledger.claim("event-1", "team-b")

    assert (claim.done, claim.result) == (True, {"status": 200, "api": "v2"})
    assert ledger.delivered("event-1", "team-b") is True
    assert ledger.claim("event-1", "team-c").done is False


def test_a_pair_the_previous_forwarder_was_delivering_blocks_until_its_deadline_then_is_an_earlier_try(
    table: Table,
) -> None:
    def killed() -> dict[str, Any]:
        raise Killed

    with pytest.raises(Killed):
        previous_forwarder(table, DELIVERY_PREFIX)(key=PAIR, action=killed)
    ledger = table.ledger()
    with pytest.raises(AlreadyInFlight):
        ledger.claim("event-1", "team-b")

    table.end_invocations(DELIVERY_PREFIX, PAIR)
    claim = ledger.claim("event-1", "team-b")

    assert (claim.done, claim.earlier_try) == (False, True)


def test_a_dead_letter_the_previous_forwarder_sent_is_not_sent_again(table: Table) -> None:
    letter = {"message_id": "message-1", "target": "team-b"}
    previous_forwarder(table, DEAD_LETTER_PREFIX)(key=letter, action=lambda: {"dead_letter_id": "dl-1"})
    ledger = table.ledger()

    assert ledger.dead_lettered("message-1", "team-b") is True
    assert ledger.claim_dead_letter("message-1", "team-b").done is True
    assert ledger.delivered("message-1", "team-b") is False


def test_the_previous_forwarder_reads_the_ledger_s_records_after_a_rollback(table: Table) -> None:
    ledger = table.ledger()
    ledger.complete(ledger.claim("event-1", "team-b"), {"status": 200})
    ledger.claim("event-2", "team-b")  # in flight
    previous = previous_forwarder(table, DELIVERY_PREFIX)
    ran: list[str] = []

    def post() -> dict[str, Any]:
        ran.append("posted")
        return {"status": 200}

    assert previous(key=PAIR, action=post) == {"status": 200}
    with pytest.raises(IdempotencyAlreadyInProgressError):
        previous(key={"event_id": "event-2", "target": "team-b"}, action=post)
    assert ran == []


def test_the_ledger_s_records_have_the_previous_forwarder_s_attributes(table: Table) -> None:
    ours = {"event_id": "ours", "target": "team-b"}
    theirs = {"event_id": "theirs", "target": "team-b"}
    ledger = table.ledger()
    claim = ledger.claim("ours", "team-b")
    previous = previous_forwarder(table, DELIVERY_PREFIX)

    def in_progress() -> dict[str, Any]:
        assert set(table.item(DELIVERY_PREFIX, theirs)) == set(table.item(DELIVERY_PREFIX, ours))
        assert table.item(DELIVERY_PREFIX, ours)["status"] == {"S": "INPROGRESS"}
        return {"status": 200}

    previous(key=theirs, action=in_progress)
    ledger.complete(claim, {"status": 200})

    mine, previous_item = table.item(DELIVERY_PREFIX, ours), table.item(DELIVERY_PREFIX, theirs)
    assert set(mine) == set(previous_item) == {"id", "expiration", "in_progress_expiration", "status", "data"}
    assert (mine["status"], mine["data"]) == (previous_item["status"], previous_item["data"])


def test_on_dynamodb_a_hold_outlasts_the_claiming_invocation_and_a_release_frees_the_pair(table: Table) -> None:
    ledger = table.ledger()
    held = ledger.claim("event-1", "team-b")
    table.end_invocations(DELIVERY_PREFIX, PAIR)
    ledger.hold(held, 60.0)
    with pytest.raises(AlreadyInFlight):
        ledger.claim("event-1", "team-b")

    released = ledger.claim("event-1", "team-c")
    ledger.release(released)

    assert table.item(DELIVERY_PREFIX, {"event_id": "event-1", "target": "team-c"}) == {}
    again = ledger.claim("event-1", "team-c")
    assert (again.done, again.earlier_try) == (False, False)


def test_the_ledger_s_store_still_serves_plain_powertools(table: Table) -> None:
    from dataset_forwarder.ledger_store import DynamoDBLedgerStore

    config = IdempotencyConfig(expires_after_seconds=TTL_S)
    config.register_lambda_context(LambdaContext(timeout_s=60))
    store = DynamoDBLedgerStore(table_name=table.name, boto3_client=table.client)
    once = idempotent_function(
        _run, data_keyword_argument="key", persistence_store=store, config=config, key_prefix=DELIVERY_PREFIX
    )
    ran: list[int] = []

    def post() -> dict[str, Any]:
        ran.append(1)
        return {"status": 200}

    assert once(key=PAIR, action=post) == once(key=PAIR, action=post) == {"status": 200}
    assert ran == [1]
    assert table.ledger().claim("event-1", "team-b").done
