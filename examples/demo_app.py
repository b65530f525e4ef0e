"""The Celery app the demo tour's worker nodes run (``celery -A examples.demo_app worker``).

Configured from the environment the tour sets: ``DEMO_REDIS_URL`` (broker,
result backend and store) and ``DEMO_PREFIX`` (every key of the run starts
with it). Tasks log each execution (node, pid, attempt) to a Redis list so
the tour can tell where and how often each one ran.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from typing import Any

import redis
from celery import Celery

import snakepit_celery
from snakepit_celery import RetryPolicy, Store, snakepit_task, store_from_url

REDIS_URL = os.environ.get("DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("DEMO_PREFIX", "demo")

app = Celery("demo", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_transport_options={"global_keyprefix": f"{PREFIX}:", "visibility_timeout": 20},
    result_backend_transport_options={"global_keyprefix": f"{PREFIX}:"},
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    snakepit_key_prefix=PREFIX,
    snakepit_breaker={"failure_threshold": 3, "reset_timeout": 2.0},
    snakepit_crash_barrier={"enabled": True, "max_restarts": 1, "taint_duration": 30.0},
)
snakepit_celery.install(app)

_redis = redis.Redis.from_url(REDIS_URL)
_QUICK = RetryPolicy(max_attempts=3, backoff=(0.2, 0.4))


def _log(kind: str, **fields: Any) -> None:
    """Append one execution record to the tour's log."""
    node = os.environ.get("DEMO_NODE", socket.gethostname())
    record: dict[str, Any] = {"task": kind, "node": node, "pid": os.getpid(), **fields}
    _redis.rpush(f"{PREFIX}:log:{kind}", json.dumps(record))


def _runs(kind: str) -> int:
    return int(_redis.llen(f"{PREFIX}:log:{kind}"))


@snakepit_task(app=app, name="demo.flaky", bind=True, retry_policy=_QUICK)
def flaky(self: Any) -> str:
    """Fails twice with a retriable ConnectionError, then succeeds."""
    _log("flaky", attempt=self.request.retries)
    if _runs("flaky") <= 2:
        raise ConnectionError("feature store timed out")
    return "scored"


@snakepit_task(app=app, name="demo.predict", breaker="model-server")
def predict(item: int) -> int:
    """Calls a model server that is down while the key ``<prefix>:model-server`` says so."""
    _log("predict", item=item)
    if _redis.get(f"{PREFIX}:model-server") == b"down":
        raise ConnectionError("model server refused the connection")
    return item * 2


@snakepit_task(app=app, name="demo.segfault_once", idempotent=True)
def segfault_once() -> str:
    """Idempotent; its first execution segfaults the worker child."""
    _log("segfault_once")
    if _runs("segfault_once") == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return "done on a healthy worker"


@snakepit_task(app=app, name="demo.segfault_plain")
def segfault_plain() -> str:
    """Not idempotent: segfaults, and must not be run twice."""
    _log("segfault_plain")
    os.kill(os.getpid(), signal.SIGSEGV)
    return "unreachable"


@snakepit_task(app=app, name="demo.poison", idempotent=True)
def poison() -> str:
    """Idempotent, but segfaults every time: a poison message."""
    _log("poison")
    os.kill(os.getpid(), signal.SIGSEGV)
    return "unreachable"


@snakepit_task(app=app, name="demo.long", idempotent=True)
def long(seconds: float) -> str:
    """Idempotent and slow: the tour kills its node while it runs."""
    _log("long")
    time.sleep(seconds)
    return "done"


@snakepit_task(app=app, name="demo.embed", device=["cuda", "cpu"])
def embed(item: int, *, device: Any) -> str:
    """Runs on a GPU when one is free, else on the CPU; reports where."""
    _log("embed", item=item, device=str(device))
    return str(device)


def snakepit_store() -> Store:
    """The store this app's workers share (for the tour's own inspections)."""
    return store_from_url(REDIS_URL, key_prefix=PREFIX)
