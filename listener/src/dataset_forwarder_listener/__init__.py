"""Airflow listener plugin of the dataset forwarder: sends this deployment's dataset/asset events to SQS."""

from pathlib import Path

# The repository's VERSION file (a symlink in the source tree, a copy in the wheel), which pyproject.toml reads too.
__version__ = Path(__file__).with_name("VERSION").read_text(encoding="utf-8").strip()
