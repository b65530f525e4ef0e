"""Helpers of the ``celery snakepit`` command-line tests: the app they run against.

``make_app(store_url, key_prefix)`` builds one per test (``tests/apps/cli_app.py``
builds one at import for ``celery -A``). Its tasks carry the options the CLI
discovers breakers and pools from.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task


def make_app(store_url: str | None = None, key_prefix: str | None = None) -> Celery:
    """An installed app: ``charge`` uses breaker ``payments``, ``infer`` its own in pool ``gpu``."""
    broker = store_url or os.environ.get("SNAKEPIT_STORE_URL", "redis://127.0.0.1:6379/0")
    app = Celery("cli_app", broker=broker, backend=broker, set_as_current=False)
    if store_url:
        app.conf.snakepit_store_url = store_url
    if key_prefix:
        app.conf.snakepit_key_prefix = key_prefix
    app.conf.snakepit_breaker = {"failure_threshold": 2, "reset_timeout": 60.0}
    install(app)

    @snakepit_task(app=app, name="cli_app.charge", breaker="payments", shared=False)
    def charge(amount: int) -> int:
        return amount

    @snakepit_task(app=app, name="cli_app.infer", breaker=True, pool="gpu", shared=False)
    def infer(batch: list[Any]) -> int:
        return len(batch)

    return app
