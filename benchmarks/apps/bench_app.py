# mypy: disable-error-code="untyped-decorator"
"""The app ``celery -A benchmarks.apps.bench_app worker`` runs in the task benchmarks.

Broker, result backend and store are the private Redis named by env
``BENCH_REDIS_URL`` (each benchmark starts its own, so ``MONITOR`` and
``INFO`` see only this app); env ``BENCH_BROKER_URL`` names another broker
(RabbitMQ) instead of it. The crash barrier is on for the whole app, so
the snakepit tasks pay for everything a user switching it on pays for. Pairs
of no-op tasks differ only in being declared with ``@snakepit_task``. With
env ``BENCH_PLAIN_CELERY=1`` the node is plain Celery (no ``install()``).
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

from benchmarks.apps import DEATH_STARTS, ENV_BROKER, ENV_PLAIN, ENV_URL, HANG_PIDS
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task

#: Name of the breaker the snakepit no-op tasks run through.
BREAKER = "bench-noop"

app = Celery("bench_app", set_as_current=True)
app.conf.update(
    broker_url=os.environ.get(ENV_BROKER) or os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get(ENV_URL, "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=4,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    snakepit_crash_barrier={"enabled": True, "taint_duration": 30.0},
)
if os.environ.get(ENV_PLAIN) != "1":  # a plain Celery node runs only the plain tasks
    install(app)


@app.task(name="bench.plain")
def plain() -> None:
    """Plain Celery no-op: the baseline."""


@app.task(name="bench.plain_late", acks_late=True)
def plain_late() -> None:
    """Plain Celery no-op acknowledged after it runs (baseline of the idempotent task)."""


@snakepit_task(app=app, name="bench.snake", breaker=BREAKER)
def snake() -> None:
    """Snakepit no-op through a breaker, crash barrier on."""


@snakepit_task(app=app, name="bench.snake_idem", breaker=BREAKER, idempotent=True)
def snake_idem() -> None:
    """Idempotent snakepit no-op (acks_late, crash ledger for redelivered messages)."""


def _hang(seconds: float) -> None:
    client = redis.Redis.from_url(str(app.conf.result_backend))
    client.rpush(HANG_PIDS, os.getpid())
    client.close()
    time.sleep(seconds)


@snakepit_task(app=app, name="bench.hang")
def hang(seconds: float) -> None:
    """Records its pool child's pid, then blocks until it is killed (crash benchmark)."""
    _hang(seconds)


@app.task(name="bench.plain_hang")
def plain_hang(seconds: float) -> None:
    """Plain Celery twin of ``bench.hang`` (Celery's own crash detection is the baseline)."""
    _hang(seconds)


@snakepit_task(
    app=app, name="bench.snake_marked", breaker=BREAKER, crash_barrier={"start_marks": True}
)
def snake_marked() -> None:
    """Snakepit no-op with start marks (one store round trip per run)."""


def _work(seconds: float) -> None:
    client = redis.Redis.from_url(str(app.conf.result_backend))
    client.rpush(DEATH_STARTS, current_task_id())
    client.close()
    time.sleep(seconds)


def current_task_id() -> str:
    """The id of the task running in this process."""
    return str(app.current_task.request.id)


@snakepit_task(app=app, name="bench.work_idem", idempotent=True)
def work_idem(seconds: float) -> None:
    """Idempotent work of ``seconds`` (node-death benchmark): logs each start."""
    _work(seconds)


@snakepit_task(app=app, name="bench.work_once")
def work_once(seconds: float) -> None:
    """Non-idempotent work of ``seconds`` (node-death benchmark): logs each start."""
    _work(seconds)
