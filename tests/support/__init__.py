"""Shared test support: one conf builder (``harness.celery_conf``), harnesses and fakes."""

from pathlib import Path

#: The repository root (worker subprocesses run with it on ``PYTHONPATH``).
ROOT = Path(__file__).resolve().parents[2]
