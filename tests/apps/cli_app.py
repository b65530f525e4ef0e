"""Celery app for the ``celery snakepit`` command-line tests.

``make_app(store_url, key_prefix)`` builds one per test; the module-level
``app`` is what ``celery -A tests.apps.cli_app`` loads in a subprocess, and
takes its store from ``SNAKEPIT_STORE_URL`` / ``SNAKEPIT_KEY_PREFIX``.
Tasks carry the options the CLI discovers breakers and pools from.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery


def make_app(store_url: str | None = None, key_prefix: str | None = None) -> Celery:
    """A Celery app with two breaker-protected tasks and one task in pool ``gpu``."""
    broker = store_url or os.environ.get("SNAKEPIT_STORE_URL", "redis://127.0.0.1:6379/0")
    app = Celery("cli_app", broker=broker, backend=broker, set_as_current=False)
    if store_url:
        app.conf.snakepit_store_url = store_url
    if key_prefix:
        app.conf.snakepit_key_prefix = key_prefix
    app.conf.snakepit_breaker = {"failure_threshold": 2, "reset_timeout": 60.0}

    @app.task(name="cli_app.charge", breaker="payments", shared=False)
    def charge(amount: int) -> int:
        return amount

    @app.task(name="cli_app.infer", breaker=True, pool="gpu", shared=False)
    def infer(batch: list[Any]) -> int:
        return len(batch)

    return app


app = make_app()
