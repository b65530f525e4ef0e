"""The app ``celery -A tests.apps.snakepit_app worker`` runs in the task and crash tests.

Configured from env ``SPT_CONF`` (JSON of ``tests/support/harness.celery_conf``,
plus whatever snakepit settings a test adds). Tasks count their executions in
Redis keys the test passes in, so the test can tell how often each one ran.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import redis
from celery import Celery

from snakepit_celery import RetryPolicy
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task

app = Celery("snakepit_app", set_as_current=True)
app.conf.update(json.loads(os.environ.get("SPT_CONF", "{}")))
install(app)

_redis = redis.Redis.from_url(app.conf.broker_url)
_FAST = RetryPolicy(max_attempts=3, backoff=(0.1, 0.2))


def _count(key: str) -> int:
    return int(_redis.incr(key))


def _crash(how: str) -> None:
    if how == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "abort":
        os.abort()
    elif how == "node":
        os.killpg(os.getpgid(0), signal.SIGKILL)
    time.sleep(5)
    raise AssertionError(f"still alive after crash {how!r}")


@snakepit_task(app=app, name="spt.flaky", bind=True, retry_policy=_FAST)
def flaky(self: Any, counter: str, failures: int, log: str) -> int:
    """Fails with a retriable ConnectionError ``failures`` times, then succeeds."""
    _redis.rpush(log, self.request.retries)
    runs = _count(counter)
    if runs <= failures:
        raise ConnectionError("downstream unavailable")
    return runs


@snakepit_task(app=app, name="spt.unavailable", retry_policy=_FAST)
def unavailable(counter: str) -> None:
    """Always fails with a retriable ConnectionError."""
    _count(counter)
    raise ConnectionError("downstream unavailable")


@snakepit_task(app=app, name="spt.bad_input", retry_policy=_FAST)
def bad_input(counter: str) -> None:
    """Fails with an error no policy retries."""
    _count(counter)
    raise ValueError("bad input: 42")


@snakepit_task(app=app, name="spt.downstream", bind=True, breaker="downstream")
def downstream(self: Any, flag: str, counter: str, nodes: str) -> str:
    """Calls a downstream that is down while Redis key ``flag`` says so."""
    _count(counter)
    _redis.sadd(nodes, self.request.hostname)
    if _redis.get(flag) == b"down":
        raise ConnectionError("downstream is down")
    return "ok"


@snakepit_task(app=app, name="spt.crash_once", idempotent=True)
def crash_once(counter: str, how: str) -> int:
    """Idempotent: its first execution crashes the process, the next ones succeed."""
    runs = _count(counter)
    if runs == 1:
        _crash(how)
    return runs


@snakepit_task(app=app, name="spt.crash_once_where", bind=True, idempotent=True)
def crash_once_where(self: Any, nodes: str) -> str:
    """Idempotent: notes the node of each execution; the first one segfaults."""
    if _redis.rpush(nodes, self.request.hostname) == 1:
        _crash("segv")
    return str(self.request.hostname)


@snakepit_task(app=app, name="spt.crash_always", idempotent=True)
def crash_always(counter: str, how: str) -> None:
    """Idempotent poison: every execution crashes the process."""
    _count(counter)
    _crash(how)


@snakepit_task(app=app, name="spt.crash_plain")
def crash_plain(counter: str, how: str) -> None:
    """Not idempotent: crashes the process."""
    _count(counter)
    _crash(how)


@snakepit_task(app=app, name="spt.gpu_fatal", device="cuda", bind=True)
def gpu_fatal(self: Any, counter: str, pids: str, *, device: Any) -> None:
    """Raises a sticky CUDA error (the process must go)."""
    _count(counter)
    _redis.rpush(pids, os.getpid())
    raise RuntimeError(f"CUDA error: an illegal memory access was encountered on {device}")


@snakepit_task(app=app, name="spt.where", device=["cuda", "cpu"])
def where(*, device: Any) -> dict[str, Any]:
    """Reports its process and the device it was given."""
    return {"pid": os.getpid(), "device": str(device)}


@snakepit_task(app=app, name="spt.noop")
def noop() -> None:
    """Does nothing (hot-path measurements)."""


@snakepit_task(app=app, name="spt.noop_idempotent", idempotent=True)
def noop_idempotent() -> None:
    """Does nothing; acknowledged late, so the crash barrier watches it."""


@snakepit_task(app=app, name="spt.noop_breaker", breaker=True)
def noop_breaker() -> None:
    """Does nothing, through a breaker."""


@app.task(name="spt.plain_noop")
def plain_noop() -> None:
    """A plain Celery task that does nothing (the baseline)."""
