"""Lambda entry point: an SQS batch in, partial batch response out; the work is in `dataset_forwarder`."""

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities.batch import (
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from dataset_forwarder.inbound import InboundMessage
from dataset_forwarder.runtime import forwarder
from dataset_forwarder.tracing import traced

logger = Logger(service="dataset-forwarder")
copy_config_to_registered_loggers(source_logger=logger, include={"dataset_forwarder"})
# A transient failure of every record is normal here (downstream down): report it, do not error.
processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


async def record_handler(record: SQSRecord) -> None:
    await forwarder().forward(InboundMessage.from_record(record))


@traced
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    with forwarder().invocation(context):
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
