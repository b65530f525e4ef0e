"""Real Celery workers for the task and crash-barrier tests.

``celery_conf()`` is the configuration shared by the test process and the
worker subprocesses (``tests/apps/snakepit_app.py`` reads it from env): broker,
result backend and store on the test's Redis database, every key under the
test's unique prefix (kombu's ``global_keyprefix``), so tests running side by
side never see each other's queues, unacked messages or breakers.

``Worker`` runs ``python -m celery -A tests.apps.snakepit_app worker -P prefork``
in its own process group, waits (bounded) until it answers ``ping``, and stops
it with SIGTERM, then SIGKILL for the whole group. Its log goes to a file that
``Harness.close()`` prints, so a failing test shows it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery
from celery.result import AsyncResult

from snakepit_celery.testing import wait_until
from snakepit_celery.testing.workers import WorkerNode, stop_all
from tests.support import ROOT

APP_MODULE = "tests.apps.snakepit_app"
T = TypeVar("T")

#: Visibility timeout of the broker in these tests (s): longer than any task or
#: countdown they use (a message held past it is restored, i.e. delivered twice).
VISIBILITY_TIMEOUT = 30.0


def celery_conf(
    redis_url: str,
    key_prefix: str,
    extra: dict[str, Any] | None = None,
    visibility_timeout: float = VISIBILITY_TIMEOUT,
) -> dict[str, Any]:
    """``app.conf`` of the test app (JSON-safe: it travels to workers in an env variable).

    ``visibility_timeout`` is how long an unacknowledged message stays with a
    node before kombu restores it (marked ``redelivered``) for another.
    """
    transport = {
        "global_keyprefix": f"{key_prefix}:",
        "visibility_timeout": visibility_timeout,
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    }
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"global_keyprefix": f"{key_prefix}:"},
        "broker_connection_retry_on_startup": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "snakepit_store_url": redis_url,
        "snakepit_key_prefix": key_prefix,
        **(extra or {}),
    }


def make_client(redis_url: str, key_prefix: str) -> Celery:
    """A plain Celery app on the test's broker and backend (sends by name, reads results)."""
    app = Celery("snakepit_client", set_as_current=False)
    app.conf.update(celery_conf(redis_url, key_prefix))
    return app


def wait_answering(worker: WorkerNode, client: Celery, timeout: float = 60.0) -> None:
    """Wait until ``worker`` answers ``ping`` (fails early when it exits)."""

    def answers() -> bool:
        if not worker.alive():
            raise AssertionError(f"worker {worker.name} exited:\n{worker.logs()[-4000:]}")
        replies = client.control.ping(destination=[worker.name], timeout=0.5)
        return any(worker.name in reply for reply in replies or [])

    wait_until(answers, timeout, interval=0.2, what=f"worker {worker.name} to answer ping")


class Harness:
    """One test's client app, Redis client and worker nodes; cleans every key of the test."""

    def __init__(self, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.tmp_path = tmp_path
        self.client = make_client(redis_url, key_prefix)
        self.redis = redis.Redis.from_url(redis_url)
        self.workers: list[WorkerNode] = []

    def key(self, name: str) -> str:
        """A Redis key of this test for the tasks' own bookkeeping (counters, flags)."""
        return f"{self.key_prefix}:t:{name}"

    def worker(
        self,
        name: str,
        *,
        conf: dict[str, Any] | None = None,
        queues: str = "celery",
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        wait: bool = True,
        visibility_timeout: float = VISIBILITY_TIMEOUT,
    ) -> WorkerNode:
        """Start a node running ``tests/apps/snakepit_app.py`` with extra ``conf``."""
        app_conf = celery_conf(self.redis_url, self.key_prefix, conf, visibility_timeout)
        worker_env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SPT_CONF": json.dumps(app_conf),
            "SPT_KEY_PREFIX": self.key_prefix,
            **(env or {}),
        }
        worker = WorkerNode(
            APP_MODULE,
            f"{name}@{socket.gethostname()}",
            queues=queues.split(","),
            concurrency=concurrency,
            env=worker_env,
            cwd=str(ROOT),
            log_path=self.tmp_path / f"{name}.log",
        ).start()
        self.workers.append(worker)
        if wait:
            wait_answering(worker, self.client)
        return worker

    def send(self, task: str, *args: Any, **options: Any) -> AsyncResult:
        return self.client.send_task(f"spt.{task}", args=args, **options)

    def count(self, name: str) -> int:
        return int(self.redis.get(self.key(name)) or 0)

    def wait_state(self, result: AsyncResult, states: set[str], timeout: float = 30.0) -> str:
        def reached() -> str | None:
            state = str(result.state)
            return state if state in states else None

        return wait_until(reached, timeout, what=f"task {result.id} to reach {states}")

    def close(self) -> None:
        stop_all(self.workers)
        for worker in self.workers:
            print(f"===== log of {worker.name} =====\n{worker.logs()[-20000:]}")
        keys = list(self.redis.scan_iter(match=f"{self.key_prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            self.redis.delete(*keys[start : start + 500])
        self.redis.close()
        self.client.close()


def harness_fixture(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Harness]:
    """Generator behind the ``harness`` fixture of the Celery test modules."""
    harness = Harness(redis_url, key_prefix, tmp_path)
    try:
        yield harness
    finally:
        harness.close()


class StateLog:
    """Every state the result backend publishes for one task id (Redis backend pub/sub)."""

    def __init__(self, harness: Harness, task_id: str) -> None:
        self.states: list[str] = []
        self._pubsub = harness.redis.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(f"{harness.key_prefix}:celery-task-meta-{task_id}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message and message.get("type") == "message":
                self.states.append(json.loads(message["data"])["status"])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
