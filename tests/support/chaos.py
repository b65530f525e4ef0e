"""A fleet of real ``tests.apps.chaos_app`` worker nodes for the reliability suite.

``ChaosFleet`` builds the ``app.conf`` shared by the test and its worker nodes
(broker, result backend and store on the test's Redis, every key under one
prefix through kombu's ``global_keyprefix``), starts nodes with
``snakepit_celery.testing.workers.WorkerNode``, reads final states from the
result backend and the execution log the tasks write (``Execution``: when
and where each run of a task started, and ended when it did), and deletes
every key of the run at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import psutil
import redis
from celery import Celery

from snakepit_celery.celery.app_context import namespace
from snakepit_celery.policy.routing import node_queue
from snakepit_celery.testing.workers import WorkerNode, stop_all
from tests.support import ROOT
from tests.support.harness import celery_conf

APP = "tests.apps.chaos_app"
QUEUE = "chaos"
FINAL_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
#: Broker visibility timeout (s): the message of a killed node comes back after it.
VISIBILITY_TIMEOUT = 6.0
T = TypeVar("T")


def run_db() -> int:
    """The Redis database (1..14) of this test process's fleets, by default."""
    return 1 + os.getpid() % 14


@dataclass(frozen=True)
class Execution:
    """One run of a task, from the execution log: where, and when it started and ended.

    ``end`` (``time.time()``) is None when the run left no end record: its
    process died in the middle (or it still runs).
    """

    task_id: str
    node: str
    pid: int
    start: float
    end: float | None = None


def chaos_conf(
    redis_url: str, key_prefix: str, barrier: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``app.conf`` of the chaos app (JSON-safe: it reaches the nodes in env ``CHAOS_CONF``)."""
    own = {"task_default_queue": QUEUE, "snakepit_crash_barrier": barrier, **(extra or {})}
    return celery_conf(redis_url, key_prefix, own, visibility_timeout=VISIBILITY_TIMEOUT)


class ChaosFleet:
    """The worker nodes, client app and Redis keys of one reliability run."""

    def __init__(self, redis_url: str, key_prefix: str, conf: dict[str, Any]) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.conf = conf
        self.log_key = f"{key_prefix}:chaos:exec"
        self.redis = redis.Redis.from_url(redis_url)
        self.client = Celery("chaos_client", set_as_current=False)
        self.client.conf.update(conf)
        self.queue = str(conf.get("task_default_queue") or QUEUE)
        self.nodes: dict[str, WorkerNode] = {}
        self.retired: list[WorkerNode] = []
        self._tag = uuid.uuid4().hex[:6]

    # -- nodes ----------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        redis_base_url: str,
        label: str,
        barrier: dict[str, Any],
        db: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ChaosFleet:
        """A fleet on a database of ``redis_base_url`` under a fresh ``<label>-...`` key prefix.

        ``extra`` is added to (or overrides) the app's ``chaos_conf``.
        """
        redis_url = f"{redis_base_url}/{run_db() if db is None else db}"
        key_prefix = f"{label}-{uuid.uuid4().hex[:10]}"
        return cls(redis_url, key_prefix, chaos_conf(redis_url, key_prefix, barrier, extra))

    def node_name(self, index: int) -> str:
        return f"chaos{index}-{self._tag}@{socket.gethostname()}"

    def start(
        self, name: str, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> WorkerNode:
        """Start node ``name`` (a fresh process and log; returns without waiting).

        ``env`` is added to the node's environment (e.g. ``SNAKEPIT_*`` settings).
        """
        old = self.nodes.pop(name, None)
        if old is not None:
            self.retired.append(old)
        node = WorkerNode(
            app=APP,
            name=name,
            queues=(self.queue,),
            concurrency=concurrency,
            env={
                "CHAOS_CONF": json.dumps(self.conf),
                "CHAOS_LOG": self.log_key,
                "PYTHONPATH": str(ROOT),
                **(env or {}),
            },
            cwd=str(ROOT),
        ).start()
        self.nodes[name] = node
        return node

    def start_all(self, count: int, timeout: float = 60.0) -> None:
        """Start ``count`` nodes together and wait until each is ready."""
        started = [self.start(self.node_name(i)) for i in range(count)]
        for node in started:
            node.wait_ready(timeout)

    def alive(self) -> list[WorkerNode]:
        return [n for n in self.nodes.values() if n.process and n.process.poll() is None]

    @staticmethod
    def pool_children(node: WorkerNode) -> list[int]:
        """PIDs of the node's pool children (empty when the node is gone)."""
        try:
            return [child.pid for child in psutil.Process(node.pid).children()]
        except (psutil.NoSuchProcess, RuntimeError):
            return []

    def logs(self, tail: int = 6000) -> str:
        """The last ``tail`` characters of every node's log (0: all), for failure messages."""
        parts = []
        for node in [*self.retired, *self.nodes.values()]:
            parts.append(f"===== {node.name} (pid {node.process and node.process.pid})")
            parts.append(node.logs()[-tail:])
        return "\n".join(parts)

    # -- tasks ------------------------------------------------------------------------
    def send(self, task: str, *args: Any) -> str:
        return str(self.client.send_task(task, args=args).id)

    def states(self, ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
        """The result-backend record of each task (None: no state stored yet)."""
        pipe = self.redis.pipeline(transaction=False)
        for task_id in ids:
            pipe.get(f"{self.key_prefix}:celery-task-meta-{task_id}")
        return {
            task_id: None if raw is None else json.loads(raw)
            for task_id, raw in zip(ids, pipe.execute(), strict=True)
        }

    def unfinished(self, ids: Sequence[str]) -> list[str]:
        return [
            task_id
            for task_id, meta in self.states(ids).items()
            if meta is None or meta.get("status") not in FINAL_STATES
        ]

    def unacked(self) -> set[str]:
        """Ids of the tasks whose messages a node holds unacknowledged (kombu's unacked hash)."""
        ids = set()
        for raw in self.redis.hvals(f"{self.key_prefix}:unacked"):
            payload = json.loads(raw)[0]
            ids.add(str(payload["headers"]["id"]))
        return ids

    def in_broker(self) -> set[str]:
        """Ids of the tasks whose messages the broker still holds: queued or unacknowledged."""
        ids = self.unacked()
        for key in self.redis.scan_iter(match=f"{self.key_prefix}:*", count=1000, _type="list"):
            if key.decode().startswith(f"{self.log_key}"):
                continue
            for raw in self.redis.lrange(key, 0, -1):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    ids.add(str(json.loads(raw)["headers"]["id"]))
        return ids

    def executions(self) -> Counter[str]:
        """How many times each task id started running (from the execution log)."""
        return Counter({task_id: len(runs) for task_id, runs in self.runs().items()})

    def runs(self) -> dict[str, list[Execution]]:
        """Each task's executions in the order they started (an end joins its run's start)."""
        runs: dict[str, list[Execution]] = {}
        open_runs: dict[tuple[str, int], int] = {}  # (task id, pid) -> index of its open run
        for raw in reversed(self.redis.lrange(self.log_key, 0, -1)):  # LPUSH: newest first
            record = json.loads(raw)
            task_id, pid, at = str(record["id"]), int(record["pid"]), float(record["at"])
            if record["event"] == "start":
                task_runs = runs.setdefault(task_id, [])
                open_runs[(task_id, pid)] = len(task_runs)
                task_runs.append(Execution(task_id, str(record["node"]), pid, at))
            elif (task_id, pid) in open_runs:
                index = open_runs.pop((task_id, pid))
                runs[task_id][index] = replace(runs[task_id][index], end=at)
        return runs

    # -- the end --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every node, then delete every key of the run."""
        with contextlib.suppress(Exception):
            stop_all([*self.nodes.values(), *self.retired], timeout=10)
        for node in [*self.nodes.values(), *self.retired]:
            with contextlib.suppress(OSError):
                os.unlink(node.log_path)
        if str(self.conf["broker_url"]).startswith("amqp"):
            self._delete_amqp_queues()
        keys = list(self.redis.scan_iter(match=f"{self.key_prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            self.redis.delete(*keys[start : start + 500])
        self.redis.close()
        self.client.close()

    def _delete_amqp_queues(self) -> None:
        """Delete the RabbitMQ queues of the run (its task queue and its nodes' own queues)."""
        prefix = namespace(self.client)
        names = [self.queue, *(node_queue(name, prefix=prefix) for name in self.nodes)]
        with contextlib.suppress(Exception), self.client.connection_for_write() as conn:
            channel = conn.default_channel
            for name in names:
                with contextlib.suppress(Exception):
                    channel.queue_delete(name)
