"""The inside of a local execution environment: what Lambda's Python runtime does for one container.

Run as `python -m dataset_forwarder_cli.local.bootstrap READ_FD WRITE_FD` with the function's environment
(`_HANDLER`, `LAMBDA_TASK_ROOT`, `AWS_LAMBDA_FUNCTION_*` and the function's own variables). It imports the
handler once (the cold start), then serves invocations one at a time: each request and each answer is one line
of JSON on the two file descriptors, so the handler's own stdout and stderr stay free for its logs. Responses are
serialized to JSON, as Lambda does; one that cannot be is a `Runtime.MarshalError`.

Standard library only, so that the environment's start-up time is the handler's.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
import uuid
from typing import IO, Any


class LambdaContext:
    """The context object Lambda passes to a Python handler (the attributes Powertools reads)."""

    def __init__(
        self,
        timeout_s: float = 60.0,
        function_name: str = "dataset-forwarder",
        memory_limit_in_mb: int = 512,
        invoked_function_arn: str = "",
        aws_request_id: str | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_limit_in_mb
        self.invoked_function_arn = (
            invoked_function_arn or f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        )
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self.started = time.monotonic()

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.timeout_s - (time.monotonic() - self.started)) * 1000))


def _send(channel: IO[str], message: dict[str, Any]) -> None:
    channel.write(json.dumps(message, separators=(",", ":")) + "\n")
    channel.flush()


def _load_handler() -> Any:
    sys.path.insert(0, os.environ.get("LAMBDA_TASK_ROOT", "."))
    module_name, _, attribute = os.environ["_HANDLER"].rpartition(".")
    return getattr(importlib.import_module(module_name), attribute)


def serve(requests: IO[str], answers: IO[str]) -> int:
    started = time.monotonic()
    try:
        handler = _load_handler()
    except BaseException as exc:
        traceback.print_exc()
        _send(answers, {"type": "init_error", "error": f"Runtime.ImportModuleError: {type(exc).__name__}: {exc}"})
        return 1
    _send(answers, {"type": "ready", "init_s": time.monotonic() - started})
    function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "function")
    memory = int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"))
    arn = os.environ.get("ADF_LOCAL_FUNCTION_ARN", "")
    for line in requests:
        request = json.loads(line)
        context = LambdaContext(request["timeout_s"], function_name, memory, arn, request.get("request_id"))
        try:
            response = handler(request["event"], context)
        except Exception as exc:
            traceback.print_exc()
            answer: dict[str, Any] = {"type": "error", "error": f"Runtime.HandlerError: {type(exc).__name__}: {exc}"}
        else:
            try:
                json.dumps(response)
            except (TypeError, ValueError) as exc:
                answer = {"type": "error", "error": f"Runtime.MarshalError: {exc}"}
            else:
                answer = {"type": "ok", "response": response}
        sys.stdout.flush()
        sys.stderr.flush()
        _send(answers, answer)
    return 0


def main(argv: list[str]) -> int:
    # Ctrl-C in a terminal reaches the whole process group: the poller that started this environment decides
    # when it ends (EOF on the request pipe), so an invocation in progress is never cut short by it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    read_fd, write_fd = int(argv[0]), int(argv[1])
    with os.fdopen(read_fd, "r", encoding="utf-8") as requests, os.fdopen(write_fd, "w", encoding="utf-8") as answers:
        return serve(requests, answers)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
