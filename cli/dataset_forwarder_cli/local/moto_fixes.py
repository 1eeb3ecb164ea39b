"""A fix for moto server's SQS under concurrent clients, applied wherever we run moto server.

moto's `Queue.delete_message` rebuilds the queue's message list without the lock that `add_message` appends
under: a message sent while another client deletes one can vanish (a lost update; seen here as events that
were sent but never received, once in a few thousand under load). Real SQS has no such race, so the local
stack and the tests hold that lock for deletes too. moto may also hand one message to two concurrent
receivers: that is SQS's at-least-once delivery, which the forwarder handles, so it is left alone.

`python -m dataset_forwarder_cli.local.moto_fixes -H 127.0.0.1 -p PORT` runs moto server with the fix.
"""

from __future__ import annotations

import functools
from typing import Any

_PATCHED = "_dataset_forwarder_locked"


def apply() -> None:
    """Make moto's SQS deletes atomic with sends (idempotent)."""
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


def main() -> None:
    from moto.server import main as moto_main

    apply()
    moto_main()


if __name__ == "__main__":
    main()
