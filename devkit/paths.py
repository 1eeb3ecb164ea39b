"""Where the checkout's parts are, for tools that run its code or build from it."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTENER_DIR = REPO_ROOT / "listener"
FUNCTION_DIR = REPO_ROOT / "functions" / "forwarder"
CLI_DIR = REPO_ROOT / "cli"


def listener_extras() -> tuple[str, ...]:
    """What the Airflow venvs get besides Airflow: the listener, installed from the checkout (non-editable, so a venv
    is keyed by its content)."""
    return (str(LISTENER_DIR),)
