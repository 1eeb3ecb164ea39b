"""Optional X-Ray tracing. The X-Ray SDK costs ~140 ms of cold start, so it is imported only when
`POWERTOOLS_TRACE_DISABLED=false` asks for it (the SDK must then be added to the layer)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

Handler = TypeVar("Handler", bound=Callable[..., Any])


def tracing_wanted(env: dict[str, str] | None = None) -> bool:
    value = (env if env is not None else os.environ).get("POWERTOOLS_TRACE_DISABLED", "true")
    return value.strip().lower() in ("false", "0", "no")


def traced(handler: Handler) -> Handler:
    if not tracing_wanted():
        return handler
    from aws_lambda_powertools import Tracer

    return cast(Handler, Tracer().capture_lambda_handler(handler))
