"""Fixes for moto server under many concurrent clients, applied wherever we run moto server.

Correctness: moto's `Queue.delete_message` rebuilds the queue's message list without the lock that `add_message` appends
under: a message sent while another client deletes one can vanish (a lost update; seen here as events that
were sent but never received, once in a few thousand under load). Real SQS has no such race, so the local
stack and the tests hold that lock for deletes too. moto may also hand one message to two concurrent
receivers: that is SQS's at-least-once delivery, which the forwarder handles, so it is left alone.

Speed, same answers: profiled under the chaos test's load, moto server spent most of its CPU on
- reading its own package directory (a listdir and ~150 isdir calls) for every request, under the lock
  that dispatches all requests: the list is read once now;
- computing every queue attribute (each an O(messages) scan with datetime arithmetic per message) for
  every message it hands out, only to read the retention period: that one attribute is read directly;
- the current time through naive-datetime arithmetic, several times per message per receive: SQS's
  models read it as `time.time()` (the same epoch seconds);
- one werkzeug log line per request: requests are not logged (its banner and errors still are).

`python -m dataset_forwarder_cli.local.moto_fixes -H 127.0.0.1 -p PORT` runs moto server with the fixes.
"""

from __future__ import annotations

import functools
import time
from typing import Any

_PATCHED = "_dataset_forwarder_locked"


def apply() -> None:
    """Make moto's SQS deletes atomic with sends, and moto server faster (idempotent)."""
    from moto.sqs.models import Queue

    original = Queue.delete_message
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def delete_message(self: Any, receipt_handle: str) -> None:
        with self._messages_lock:
            original(self, receipt_handle)

    setattr(delete_message, _PATCHED, True)
    Queue.delete_message = delete_message  # type: ignore[method-assign]
    _speed_up()


def _speed_up() -> None:
    from moto import backends
    from moto.core import utils
    from moto.sqs import models as sqs

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules

    def unix_time(dt: Any = None) -> float:
        return time.time() if dt is None else utils.unix_time(dt)

    def unix_time_millis(dt: Any = None) -> float:
        return time.time() * 1000.0 if dt is None else utils.unix_time_millis(dt)

    vars(sqs).update(unix_time=unix_time, unix_time_millis=unix_time_millis)  # the names sqs/models.py imported

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention_s = int(self.get_queue(queue_name).message_retention_period)
        return bool(retention_s + message.sent_timestamp / 1000 > time.time())

    backend: Any = sqs.SQSBackend
    backend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period
    from werkzeug.serving import WSGIRequestHandler

    handler: Any = WSGIRequestHandler
    handler.log_request = lambda *_args, **_kwargs: None  # the banner and errors are still logged


def main() -> None:
    from moto.server import main as moto_main

    apply()
    moto_main()


if __name__ == "__main__":
    main()
