"""How full a queue is and how old its oldest message is, read without receiving from it.

SQS's own attributes give the depth. The age of the oldest message is not an SQS attribute: it is the CloudWatch
metric `ApproximateAgeOfOldestMessage` (one datapoint a minute, a few minutes late), shown with the time it was
measured, or as unknown. Receiving from the events queue to read timestamps is not an option: every receive counts
towards its redrive's maxReceiveCount, and a peek could send an event to the DLQ without one delivery attempt.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

AGE_METRIC = "ApproximateAgeOfOldestMessage"
AGE_LOOKBACK = timedelta(minutes=15)
DEPTH_ATTRIBUTES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)


@dataclass(frozen=True)
class OldestAge:
    seconds: float | None  # None: unknown
    measured_at: datetime | None
    source: str  # where the number comes from, or why there is none

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "measured_at": self.measured_at.isoformat() if self.measured_at else None,
            "source": self.source,
        }


@dataclass(frozen=True)
class QueueHealth:
    url: str
    visible: int  # waiting to be received
    in_flight: int  # received and not deleted: being handled, or held back for a retry
    delayed: int  # sent with a delay, not receivable yet
    oldest: OldestAge

    @property
    def total(self) -> int:
        return self.visible + self.in_flight + self.delayed

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "visible": self.visible,
            "in_flight": self.in_flight,
            "delayed": self.delayed,
            "total": self.total,
            "oldest_message_age": self.oldest.as_dict(),
        }


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def read_health(sqs: Any, cloudwatch: Any, url: str, *, now: datetime | None = None) -> QueueHealth:
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(DEPTH_ATTRIBUTES))["Attributes"]
    visible, in_flight, delayed = (int(attributes.get(name, "0")) for name in DEPTH_ATTRIBUTES)
    return QueueHealth(url, visible, in_flight, delayed, oldest_age(cloudwatch, queue_name(url), now=now))


def oldest_age(cloudwatch: Any, name: str, *, now: datetime | None = None) -> OldestAge:
    """The newest CloudWatch datapoint of the queue's oldest-message age in the last 15 minutes, else unknown."""
    from botocore.exceptions import BotoCoreError, ClientError

    end = now or datetime.now(UTC)
    try:
        points = cloudwatch.get_metric_statistics(
            Namespace="AWS/SQS",
            MetricName=AGE_METRIC,
            Dimensions=[{"Name": "QueueName", "Value": name}],
            StartTime=end - AGE_LOOKBACK,
            EndTime=end,
            Period=60,
            Statistics=["Maximum"],
        ).get("Datapoints", [])
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "error")
        return OldestAge(None, None, f"unknown: CloudWatch answered {code}")
    except BotoCoreError as exc:
        return OldestAge(None, None, f"unknown: CloudWatch not reached ({type(exc).__name__})")
    if not points:
        return OldestAge(None, None, "unknown: no CloudWatch datapoint in the last 15 min")
    newest = max(points, key=lambda p: p["Timestamp"])
    return OldestAge(float(newest["Maximum"]), newest["Timestamp"], f"CloudWatch {AGE_METRIC}")
