"""The Lambda module itself: cheap to import, loud about bad configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FUNCTION_DIR = Path(__file__).resolve().parents[2] / "functions" / "forwarder"


def test_importing_the_handler_builds_no_clients_and_skips_heavy_modules() -> None:
    probe = (
        "import sys, app\n"
        "heavy = ['boto3', 'botocore.session', 'requests', 'aws_xray_sdk', "
        "'aws_lambda_powertools.utilities.idempotency', 'aws_lambda_powertools.utilities.parameters']\n"
        "print(__import__('json').dumps([m for m in heavy if m in sys.modules]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=FUNCTION_DIR, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_missing_configuration_fails_the_invocation_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import app
    from dataset_forwarder import runtime
    from dataset_forwarder.settings import SettingsError
    from devkit.lambda_sqs import FakeLambdaContext

    monkeypatch.delenv("IDEMPOTENCY_TABLE", raising=False)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/000000000000/dlq")
    runtime.reset()
    try:
        with pytest.raises(SettingsError, match="IDEMPOTENCY_TABLE is not set"):
            app.lambda_handler({"Records": []}, FakeLambdaContext())
    finally:
        runtime.reset()


def test_tracing_is_off_unless_explicitly_enabled() -> None:
    from dataset_forwarder.tracing import traced, tracing_wanted

    assert not tracing_wanted({})
    assert not tracing_wanted({"POWERTOOLS_TRACE_DISABLED": "true"})
    assert tracing_wanted({"POWERTOOLS_TRACE_DISABLED": "false"})

    def handler(event: dict[str, object], context: object) -> None:
        return None

    assert traced(handler) is handler
