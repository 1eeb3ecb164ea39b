"""The envelope v1, the listener's SQS message (its JSON Schema: events/envelope.schema.json): parse an SQS body,
build what downstream and the DLQ receive."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

VERSION = 1
MAX_ID_LENGTH = 256
LINEAGE_KEY = "dataset_forwarder"
# SQS counts body and attributes against 256 KiB; a dead letter's attributes take at most ~1.2 KiB.
MAX_DEAD_LETTER_BODY_BYTES = 256 * 1024 - 2048
# A replay names a few targets; more is a hostile or broken upstream (each name could cost a check or a letter).
MAX_ONLY_TARGETS = 100


class InvalidMessage(ValueError):
    """The SQS body is not a usable envelope; the reason is safe to show in a dead letter."""


@dataclass(frozen=True)
class Envelope:
    """One upstream dataset event, as the listener put it on the queue."""

    id: str
    uri: str
    name: str | None
    extra: dict[str, Any]
    source: dict[str, Any] | None
    trail: tuple[str, ...]
    only_targets: tuple[str, ...] | None
    raw: dict[str, Any]

    @property
    def kind(self) -> str:
        """`asset_event` (also when absent) or `dag_run`; the forwarder routes both alike."""
        kind = self.raw.get("kind")
        return kind if isinstance(kind, str) and kind else "asset_event"

    @property
    def partition_key(self) -> str | None:
        key = self.raw.get("partition_key")
        return key if isinstance(key, str) else None

    @property
    def emitted_at(self) -> datetime | None:
        """When the listener built the envelope (None when absent or unreadable)."""
        return parse_time(self.raw.get("emitted_at"))

    def downstream_extra(self) -> dict[str, Any]:
        """The extra posted downstream: the upstream extra plus our lineage key (with the partition key, if any)."""
        lineage: dict[str, Any] = {"id": self.id, "source": self.source, "trail": list(self.trail)}
        if self.partition_key is not None:  # also where a downstream that takes no partition key can read it
            lineage["partition_key"] = self.partition_key
        return {**self.extra, LINEAGE_KEY: lineage}

    def dead_letter_body(self, *targets: str) -> str:
        """The body of a dead letter: this envelope, unknown fields kept, aimed at `targets` (usually one).

        An envelope so close to SQS's size limit that `only_targets` would not fit is kept as it
        came: its replay then goes to every target again, and the ledger stops it at those that
        already have it.
        """
        body = dumps({**self.raw, "only_targets": list(targets)})
        if len(body.encode("utf-8")) > MAX_DEAD_LETTER_BODY_BYTES:
            return dumps(self.raw)
        return body


ASSET_EVENT = "asset_event"
DAG_RUN = "dag_run"
DAG_RUN_STATES = ("success", "failed")


def dag_run_uri(deployment: str, dag_id: str, state: str) -> str:
    """The URI a finished DAG run is reported under: `dagrun://{deployment}/{dag_id}/{state}`."""
    return f"dagrun://{deployment}/{dag_id}/{state}"


def new_envelope(
    uri: str,
    *,
    event_id: str,
    deployment: str,
    extra: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    kind: str = ASSET_EVENT,
    partition_key: str | None = None,
    only_targets: list[str] | None = None,
) -> dict[str, Any]:
    """A version-1 envelope as a listener of `deployment` writes it (the CLI's test events use it)."""
    envelope: dict[str, Any] = {
        "version": VERSION,
        "kind": kind,
        "id": event_id,
        "uri": uri,
        "name": uri,
        "extra": extra or {},
        "source": {
            "deployment": deployment,
            "airflow_version": None,
            "dag_id": None,
            "task_id": None,
            "run_id": None,
            "map_index": None,
            **(source or {}),
        },
        "emitted_at": datetime.now(UTC).isoformat(),
        "trail": [deployment],
        "only_targets": only_targets,
    }
    if partition_key is not None:
        envelope["partition_key"] = partition_key
    return envelope


def message_attributes(envelope: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The SQS message attributes a listener sets on an envelope."""
    values = {"uri": envelope["uri"], "event_id": envelope["id"], "source_deployment": envelope["source"]["deployment"]}
    return {key: {"DataType": "String", "StringValue": str(value)} for key, value in values.items()}


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time as Airflow and the listener write it (naive means UTC); None when absent or bad."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def dumps(data: Any) -> str:
    """Compact JSON; non-ASCII kept as is unless SQS would refuse a character (lone surrogates, U+FFFE…)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    if not sqs_accepts(text):
        text = json.dumps(data, separators=(",", ":"))  # all escaped: ASCII only, the same JSON value
    return text


# The characters SQS accepts in a message body and String attributes (its documented set).
_NOT_SQS = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_accepts(text: str) -> bool:
    return _NOT_SQS.search(text) is None


def sqs_text(text: str) -> str:
    """`text` with every character SQS would refuse (e.g. a control byte from a downstream) replaced by U+FFFD."""
    return _NOT_SQS.sub("\ufffd", text)


def _optional_str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise InvalidMessage(f"'{key}' must be a string or null, got {type(value).__name__}")


def _str_list(data: dict[str, Any], key: str, *, max_items: int | None = None) -> tuple[str, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if max_items is not None and isinstance(value, list) and len(value) > max_items:
        raise InvalidMessage(f"'{key}' names more than {max_items} targets ({len(value)} entries)")
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InvalidMessage(f"'{key}' must be a list of non-empty strings")
    return tuple(value)


def parse_envelope(body: str) -> Envelope:
    """Parse and validate an SQS message body; unknown fields are ignored (forward compatible)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidMessage(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage(f"body must be a JSON object, got {type(data).__name__}")
    version = data.get("version")
    if type(version) is not int or version != VERSION:
        raise InvalidMessage(f"unsupported envelope version {version!r}; this forwarder reads version {VERSION}")
    event_id = data.get("id")
    if not isinstance(event_id, str) or not event_id.strip():
        raise InvalidMessage("'id' is required and must be a non-empty string")
    if len(event_id) > MAX_ID_LENGTH:
        raise InvalidMessage(f"'id' is longer than {MAX_ID_LENGTH} characters")
    uri = data.get("uri")
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidMessage("'uri' is required and must be a non-empty string")
    extra = data.get("extra")
    if extra is None:
        extra = {}
    elif not isinstance(extra, dict):
        raise InvalidMessage(f"'extra' must be an object, got {type(extra).__name__}")
    source = data.get("source")
    if source is not None and not isinstance(source, dict):
        raise InvalidMessage(f"'source' must be an object, got {type(source).__name__}")
    return Envelope(
        id=event_id,
        uri=uri,
        name=_optional_str(data, "name"),
        extra=extra,
        source=source,
        trail=_str_list(data, "trail") or (),
        only_targets=_str_list(data, "only_targets", max_items=MAX_ONLY_TARGETS),
        raw=data,
    )
