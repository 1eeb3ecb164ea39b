"""Expected problems become one clear line and a non-zero exit, never a stack trace."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


class CliError(click.ClickException):
    """A problem the operator can fix; printed as `Error: ...`, exit code 1."""


def explain(exc: Exception) -> str | None:
    """A one-line explanation for the AWS/network errors an operator meets, or None if unexpected."""
    from botocore import exceptions as bex

    if isinstance(exc, bex.NoRegionError):
        return "no AWS region: set AWS_REGION / AWS_DEFAULT_REGION or pass --region"
    if isinstance(exc, bex.NoCredentialsError | bex.PartialCredentialsError):
        return "no AWS credentials found (environment, profile, SSO or instance role)"
    if isinstance(exc, bex.EndpointConnectionError | bex.ConnectTimeoutError | bex.ReadTimeoutError):
        return f"cannot reach AWS: {exc}"
    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "Unknown")
        message = error.get("Message", "")
        if code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"):
            return f"queue not found ({message or code})"
        if code == "ParameterNotFound":
            return "parameter not found"
        if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"):
            return f"AWS credentials rejected: {code}"
        if code in ("AccessDenied", "AccessDeniedException"):
            return f"access denied: {message}"
        return f"{code}: {message}"
    if isinstance(exc, bex.BotoCoreError):
        return str(exc)
    return None


def friendly(func: F) -> F:
    """Turn expected AWS errors raised by a command into CliError."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            raise CliError(message) from None

    return wrapper  # type: ignore[return-value]
