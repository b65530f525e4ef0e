"""A private Redis Cluster for the tests and benchmarks, built from ``redis-server``.

Each node is an ``EmbeddedRedis`` (``testing/redis_server.py``): one
``redis-server`` on a free port, stopped (or SIGKILLed) by PID. ``LocalCluster``
starts ``masters`` cluster-enabled nodes, splits the 16384 hash slots between them
with ``CLUSTER ADDSLOTSRANGE`` and joins them with ``CLUSTER MEET`` (what
``redis-cli --cluster create`` does), and offers the operations a test plays
on a running cluster: moving a slot to another master and ``SCRIPT FLUSH`` on
every node. Every wait is bounded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from snakepit_celery.testing.redis_server import EmbeddedRedis, execute, free_port

__all__ = ["SLOTS", "LocalCluster"]

log = logging.getLogger(__name__)

#: Hash slots of a Redis Cluster.
SLOTS = 16384


@dataclass
class LocalCluster:
    """A Redis Cluster of ``masters`` nodes (no replicas) on free ports.

    ``url`` is the ``redis+cluster://`` URL naming every node. Use as a
    context manager, or call ``start()`` and ``stop()``.
    """

    binary: str
    masters: int = 3
    nodes: list[EmbeddedRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:<port>,...`` naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 30.0) -> LocalCluster:
        """Start the nodes, give each a contiguous share of the slots, join them, wait for OK."""
        try:
            buses = [free_port() for _ in range(self.masters)]
            for bus in buses:
                config = [
                    "cluster-enabled yes",
                    f"cluster-port {bus}",
                    'cluster-config-file "nodes.conf"',
                    "cluster-node-timeout 5000",
                ]
                self.nodes.append(EmbeddedRedis(self.binary, config).start())
            self._assign_slots()
            first = self.nodes[0]
            for node, bus in zip(self.nodes[1:], buses[1:], strict=True):
                first.command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        log.info("started private Redis Cluster", extra={"url": self.url})
        return self

    def _assign_slots(self) -> None:
        share = SLOTS // self.masters
        for index, node in enumerate(self.nodes):
            first = index * share
            last = SLOTS - 1 if index == self.masters - 1 else first + share - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
            node.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)

    def _wait_ready(self, timeout: float) -> None:
        """Wait until every node knows every other and serves all slots (``cluster_state:ok``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [str(node.command("CLUSTER", "INFO")) for node in self.nodes]
            if all(
                "cluster_state:ok" in info and f"cluster_known_nodes:{self.masters}" in info
                for info in infos
            ):
                return
            time.sleep(0.1)
        tails = "\n".join(node.log_tail(500) for node in self.nodes)
        raise RuntimeError(f"Redis Cluster not ready within {timeout}s:\n{tails}")

    def node_id(self, node: EmbeddedRedis) -> str:
        """The cluster id of ``node``."""
        return str(node.command("CLUSTER", "MYID"))

    def owner(self, slot: int) -> EmbeddedRedis:
        """The master serving ``slot`` (as the first node sees it)."""
        for start, end, port in self._slot_table():
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise LookupError(f"slot {slot} is not served")

    def _slot_table(self) -> list[tuple[int, int, int]]:
        """``(first slot, last slot, master port)`` per slot range (``CLUSTER SLOTS``)."""
        reply = self.nodes[0].command("CLUSTER SLOTS")
        if isinstance(reply, dict):  # redis-py's parsed form: {(start, end): {"primary": ...}}
            return [(int(a), int(b), int(info["primary"][1])) for (a, b), info in reply.items()]
        return [(int(entry[0]), int(entry[1]), int(entry[2][1])) for entry in reply]

    def move_slot(self, slot: int, target: EmbeddedRedis, pause: float = 0.0) -> int:
        """Move ``slot`` and its keys to ``target`` as a resharding does; returns the keys moved.

        The Redis steps: SETSLOT IMPORTING on the target, MIGRATING on the
        source, MIGRATE of every key, then SETSLOT NODE on every node.
        ``pause`` (s) is slept after each step, so clients running meanwhile
        meet the ASK and TRYAGAIN redirections of a slot in migration.
        """
        source = self.owner(slot)
        if source is target:
            return 0
        source_id, target_id = self.node_id(source), self.node_id(target)
        order = [target, source, *(n for n in self.nodes if n not in (target, source))]
        clients = [node.client() for node in order]
        into, out = clients[0], clients[1]
        try:
            for client in clients:
                client.ping()  # connected before the move starts
            execute(into, "CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            execute(out, "CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            time.sleep(pause)
            moved = 0
            while keys := execute(out, "CLUSTER", "GETKEYSINSLOT", slot, 100):
                execute(out, "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            time.sleep(pause)
            for client in clients:
                execute(client, "CLUSTER", "SETSLOT", slot, "NODE", target_id)
        finally:
            for client in clients:
                client.close()
        time.sleep(pause)
        return moved

    def script_flush(self) -> None:
        """``SCRIPT FLUSH`` on every node: every loaded Lua script is forgotten."""
        for node in self.nodes:
            node.command("SCRIPT", "FLUSH")

    def stop(self) -> None:
        """Stop every node by PID and remove their directories."""
        for node in self.nodes:
            node.stop()
        self.nodes.clear()

    def __enter__(self) -> LocalCluster:
        return self.start() if not self.nodes else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
