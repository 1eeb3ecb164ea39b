"""The baseline of bench/cold_start.py: the forwarder as a straightforward Powertools handler would write it.

Everything at module level, as the Powertools examples do: Logger, Tracer, Metrics, a BatchProcessor, the
idempotency layer, boto3 clients for SSM, SQS and DynamoDB, requests. Same job on the happy path as ours:
read the targets from SSM, and post each record once (Powertools idempotency on DynamoDB) to every
target that subscribes to its uri (Airflow 2 API, basic auth with the password from SSM).
Never deployed; Tracer needs aws-xray-sdk, which the dev venv has (moto depends on it) and the layer has not.
"""

from __future__ import annotations

import json
import os
from fnmatch import fnmatchcase
from typing import Any

import boto3
import requests
from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)

ssm = boto3.client("ssm")
sqs = boto3.client("sqs")  # for dead letters (unused on the happy path)
dynamodb = boto3.client("dynamodb")
persistence = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"], boto3_client=dynamodb)
idempotency = IdempotencyConfig(expires_after_seconds=14 * 24 * 3600)
TARGETS_PATH = os.environ["TARGETS_PATH"]


def targets() -> dict[str, dict[str, Any]]:
    pages = ssm.get_paginator("get_parameters_by_path").paginate(Path=TARGETS_PATH, Recursive=True, WithDecryption=True)
    return {
        parameter["Name"].rsplit("/", 1)[-1]: json.loads(parameter["Value"])
        for page in pages
        for parameter in page["Parameters"]
    }


@idempotent_function(data_keyword_argument="delivery", persistence_store=persistence, config=idempotency)
def deliver(*, delivery: dict[str, Any], target: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    auth = target["auth"]
    password = ssm.get_parameter(Name=auth["secret"], WithDecryption=True)["Parameter"]["Value"]
    response = requests.post(
        target["url"] + "/api/v1/datasets/events",
        json={"dataset_uri": delivery["uri"], "extra": extra},
        auth=(auth["username"], password),
        timeout=10,
    )
    response.raise_for_status()
    return {"status": response.status_code}


@tracer.capture_method
def record_handler(record: SQSRecord) -> None:
    event = record.json_body
    for name, target in targets().items():
        if any(fnmatchcase(event["uri"], pattern) for pattern in target["datasets"]):
            deliver(
                delivery={"id": event["id"], "uri": event["uri"], "target": name}, target=target, extra=event["extra"]
            )
            metrics.add_metric(name="Delivered", unit=MetricUnit.Count, value=1)
            logger.info("delivered", extra={"target": name, "event_id": event["id"]})


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Any:
    idempotency.register_lambda_context(context)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
