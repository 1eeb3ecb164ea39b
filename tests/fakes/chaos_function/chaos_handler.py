"""The forwarder's real handler, in an execution environment that gets killed now and then (chaos tests).

Used as `_HANDLER=chaos_handler.lambda_handler` with this folder as the code dir of a local execution environment
(`dataset_forwarder_cli.local.poller.ExecutionEnvironment`). `CHAOS_FUNCTION_CODE_DIR` is the forwarder's code dir.
With probability `CHAOS_KILL_DURING` an invocation's process is SIGKILLed at a random moment while the handler
runs (mid-delivery, as a Lambda timeout or an out-of-memory kill does); with probability `CHAOS_KILL_BEFORE_ACK`
it is killed after the handler has returned but before the answer leaves (deliveries made, nothing acknowledged).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
from typing import Any

sys.path.insert(0, os.environ["CHAOS_FUNCTION_CODE_DIR"])

import app

_rng = random.Random(f"{os.environ.get('CHAOS_SEED', '0')}-{os.getpid()}")
_KILL_DURING = float(os.environ.get("CHAOS_KILL_DURING", "0"))
_KILL_BEFORE_ACK = float(os.environ.get("CHAOS_KILL_BEFORE_ACK", "0"))
_MAX_DELAY_S = float(os.environ.get("CHAOS_KILL_MAX_DELAY_S", "0.5"))


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def lambda_handler(event: dict[str, Any], context: Any) -> Any:
    timer = None
    if _rng.random() < _KILL_DURING:
        timer = threading.Timer(_rng.uniform(0.0, _MAX_DELAY_S), _kill)
        timer.daemon = True
        timer.start()
    response = app.lambda_handler(event, context)
    if timer is not None:
        timer.cancel()
    if _rng.random() < _KILL_BEFORE_ACK:
        _kill()
    return response
