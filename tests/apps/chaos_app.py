"""The app ``celery -A tests.apps.chaos_app worker`` runs in the reliability (chaos) suite.

Configured from env ``CHAOS_CONF`` (JSON of the ``app.conf`` the test builds).
Every execution of every task is logged before the task does anything else,
and again when its body ends (returns, raises, or is about to kill its own
process): ``LPUSH <CHAOS_LOG> <JSON>`` of ``{"id", "event": "start"|"end",
"at": time.time(), "pid", "node"}``, so the test can count how often each task
really ran and tell whether two runs of it overlapped, whatever the chaos loop
killed in between (a killed run has no end record).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import redis
from celery import Celery

from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task

app = Celery("chaos_app", set_as_current=True)
app.conf.update(json.loads(os.environ.get("CHAOS_CONF", "{}")))
install(app)

_redis = redis.Redis.from_url(app.conf.result_backend)  # the broker may be RabbitMQ
_LOG = os.environ.get("CHAOS_LOG", "chaos:exec")


def _log(task: Any, event: str) -> None:
    record = {
        "id": str(task.request.id),
        "event": event,
        "at": time.time(),
        "pid": os.getpid(),
        "node": str(task.request.hostname),
    }
    _redis.lpush(_LOG, json.dumps(record))


@contextlib.contextmanager
def _execution(task: Any) -> Iterator[None]:
    """Log the start of this execution, and its end however the body ends (not a death)."""
    _log(task, "start")
    try:
        yield
    finally:
        _log(task, "end")


def _work(task: Any, work: float) -> str:
    with _execution(task):
        time.sleep(work)
    return str(task.request.id)


@snakepit_task(app=app, name="chaos.idempotent", bind=True, idempotent=True)
def idempotent(self: Any, work: float) -> str:
    """Safe to run twice: may be re-run after a crash."""
    return _work(self, work)


@snakepit_task(app=app, name="chaos.once", bind=True)
def once(self: Any, work: float) -> str:
    """Not idempotent: must never run a second time after a crash."""
    return _work(self, work)


@snakepit_task(app=app, name="chaos.long", bind=True, idempotent=True)
def long(self: Any, work: float) -> str:
    """Idempotent, sent with more ``work`` than the broker's visibility timeout."""
    return _work(self, work)


@snakepit_task(app=app, name="chaos.long_once", bind=True)
def long_once(self: Any, work: float) -> str:
    """Not idempotent, sent with more ``work`` than the broker's visibility timeout."""
    return _work(self, work)


@snakepit_task(app=app, name="chaos.poison", bind=True, idempotent=True)
def poison(self: Any, work: float) -> None:
    """Idempotent, but every execution kills its own process (SIGSEGV)."""
    _work(self, work)
    os.kill(os.getpid(), signal.SIGSEGV)


@snakepit_task(app=app, name="chaos.poison_once", bind=True)
def poison_once(self: Any, work: float) -> None:
    """Not idempotent, and its execution kills its own process (SIGKILL)."""
    _work(self, work)
    os.kill(os.getpid(), signal.SIGKILL)


@snakepit_task(app=app, name="chaos.guarded", bind=True, breaker="chaos-guarded")
def guarded(self: Any, fail: bool) -> str:
    """Calls a downstream through the shared breaker ``chaos-guarded``; fails when told to."""
    with _execution(self):
        if fail:
            raise ConnectionError("downstream is down")
    return str(self.request.id)


@app.task(name="chaos.on_error")
def on_error(task_id: str) -> None:
    """Errback in the old style (called with the failed task's id): logs it under ``:errbacks``."""
    _redis.lpush(f"{_LOG}:errbacks", task_id)


@app.task(name="chaos.collect")
def collect(results: list[Any]) -> list[Any]:
    """Chord body: the header's results."""
    return results
