"""A per-test forwarder stack on moto server: queue, DLQ with redrive, idempotency table, SSM targets."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


def sqs_refused_characters(text: str) -> list[str]:
    """The characters of `text` outside SQS's documented set for message bodies and String attributes:
    #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF (moto does not check; AWS does)."""
    refused = []
    for char in text:
        code = ord(char)
        if not (
            code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF
        ):
            refused.append(f"U+{code:04X}")
    return refused


def assert_sqs_would_accept(body: str, attributes: dict[str, str]) -> None:
    """Fail when real SQS would refuse this message (its body or any String attribute)."""
    problems = {name: sqs_refused_characters(value) for name, value in {"body": body, **attributes}.items()}
    problems = {name: chars for name, chars in problems.items() if chars}
    assert not problems, f"SQS would refuse this dead letter: {problems}"


@dataclass
class DeadLetterView:
    body: str
    attributes: dict[str, str]
    message_id: str

    def __post_init__(self) -> None:
        assert_sqs_would_accept(self.body, self.attributes)  # every letter a test reads is one AWS would take

    @property
    def envelope(self) -> Any:
        return json.loads(self.body)


@dataclass
class ForwarderStack:
    """Resources named uniquely per test, so tests never see each other's messages."""

    sqs: Any
    ssm: Any
    dynamodb: Any
    queue_url: str
    dlq_url: str
    table: str
    targets_path: str
    secrets_path: str
    sent: list[str] = field(default_factory=list)
    # MWAA targets (DESIGN 9.1): the environments and roles the function may use, and where InvokeRestApi is
    # (the local MWAA emulator); left out of env() while unset.
    mwaa_environments: str = ""
    target_role_arns: str = ""
    mwaa_endpoint: str | None = None

    @classmethod
    def create(cls, session: Any, *, max_receive_count: int = 10, visibility_timeout_s: int = 30) -> ForwarderStack:
        suffix = uuid.uuid4().hex[:10]
        sqs = session.client("sqs")
        ssm = session.client("ssm")
        dynamodb = session.client("dynamodb")
        dlq_url = sqs.create_queue(QueueName=f"dlq-{suffix}")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})
        queue_url = sqs.create_queue(
            QueueName=f"events-{suffix}",
            Attributes={"VisibilityTimeout": str(visibility_timeout_s), "RedrivePolicy": redrive},
        )["QueueUrl"]
        table = f"idempotency-{suffix}"
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expiration"}
        )
        return cls(
            sqs=sqs,
            ssm=ssm,
            dynamodb=dynamodb,
            queue_url=queue_url,
            dlq_url=dlq_url,
            table=table,
            targets_path=f"/dataset-forwarder-{suffix}/targets",
            secrets_path=f"/dataset-forwarder-{suffix}/secrets",
        )

    def env(self) -> dict[str, str]:
        return {
            "TARGETS_PATH": self.targets_path,
            "SECRETS_PATH": self.secrets_path,
            "DEAD_LETTER_QUEUE_URL": self.dlq_url,
            "IDEMPOTENCY_TABLE": self.table,
            **self.mwaa_env(),
        }

    def mwaa_env(self) -> dict[str, str]:
        """MWAA_ENVIRONMENTS, TARGET_ROLE_ARNS and AWS_ENDPOINT_URL_MWAA, those that are set."""
        env = {"MWAA_ENVIRONMENTS": self.mwaa_environments, "TARGET_ROLE_ARNS": self.target_role_arns}
        if self.mwaa_endpoint:
            env["AWS_ENDPOINT_URL_MWAA"] = self.mwaa_endpoint
        return {key: value for key, value in env.items() if value}

    def put_secret(self, name: str, value: str) -> str:
        full = f"{self.secrets_path}/{name}"
        self.ssm.put_parameter(Name=full, Value=value, Type="SecureString", Overwrite=True)
        return full

    def put_target(self, name: str, value: dict[str, Any] | str, *, secure: bool = False) -> None:
        body = value if isinstance(value, str) else json.dumps(value)
        self.ssm.put_parameter(
            Name=f"{self.targets_path}/{name}",
            Value=body,
            Type="SecureString" if secure else "String",
            Overwrite=True,
        )

    def send_many(self, bodies: list[str]) -> None:
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
            response = self.sqs.send_message_batch(QueueUrl=self.queue_url, Entries=entries)
            assert not response.get("Failed"), response["Failed"]

    def send(self, body: dict[str, Any] | str) -> str:
        text = body if isinstance(body, str) else json.dumps(body)
        message_id = str(self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=text)["MessageId"])
        self.sent.append(message_id)
        return message_id

    def dead_letters(self, expected: int | None = None, timeout_s: float = 5.0) -> list[DeadLetterView]:
        """Every dead letter (consumed: hidden for 5 min); waits for `expected` of them if given."""
        found: list[DeadLetterView] = []
        deadline = time.monotonic() + timeout_s
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=self.dlq_url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=300,
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            found += [
                DeadLetterView(
                    body=m["Body"],
                    attributes={k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()},
                    message_id=m["MessageId"],
                )
                for m in batch
            ]
            if batch:
                continue
            if expected is None or len(found) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.05)
