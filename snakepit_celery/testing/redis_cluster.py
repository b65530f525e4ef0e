"""A private Redis Cluster for the tests and benchmarks, built from ``redis-server``.

``RedisNode`` is one ``redis-server`` process started from a config file in its
own temporary directory, on a free port, and stopped (or SIGKILLed) by PID;
Cluster and Sentinel deployments are made of them. ``LocalCluster`` starts
``masters`` cluster-enabled nodes, splits the 16384 hash slots between them
with ``CLUSTER ADDSLOTSRANGE`` and joins them with ``CLUSTER MEET`` (what
``redis-cli --cluster create`` does), and offers the operations a test plays
on a running cluster: moving a slot to another master and ``SCRIPT FLUSH`` on
every node. Every wait is bounded.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from snakepit_celery.testing.redis_server import redis_answers

__all__ = ["SLOTS", "LocalCluster", "RedisNode", "execute", "free_port"]

log = logging.getLogger(__name__)

#: Hash slots of a Redis Cluster.
SLOTS = 16384


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def execute(client: redis.Redis, *args: str | int) -> Any:
    """One command on ``client``, its reply as redis-py parses it."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


@dataclass
class RedisNode:
    """One ``redis-server`` process with ``config`` lines added to its config file.

    ``sentinel`` starts it as a Sentinel (``--sentinel``). The directory holds
    the config file (Sentinel rewrites it), the data and ``redis.log``; it is
    removed by ``stop()``.
    """

    binary: str
    config: Sequence[str] = ()
    sentinel: bool = False
    port: int = field(default_factory=free_port)
    directory: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        """``("127.0.0.1", port)``."""
        return ("127.0.0.1", self.port)

    def start(self, timeout: float = 10.0) -> RedisNode:
        """Write the config file, start the process and wait (at most ``timeout`` s) for PONG."""
        if not self.directory:
            self.directory = tempfile.mkdtemp(prefix="snakepit-redis-node-")
        base = [f"port {self.port}", "bind 127.0.0.1", f'dir "{self.directory}"']
        base += ["daemonize no", 'logfile "redis.log"']
        if not self.sentinel:
            base += ['save ""', "appendonly no"]
        conf = Path(self.directory, "redis.conf")
        conf.write_text("\n".join([*base, *self.config]) + "\n", encoding="utf-8")
        args = [self.binary, str(conf), *(["--sentinel"] if self.sentinel else [])]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited at start:\n{self.log_tail()}")
            if redis_answers(self.url, timeout=0.2):
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A plain client on this node (answers decoded to ``str``); close it after use."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def command(self, *args: str | int) -> Any:
        """Run one command on this node and return its reply (as redis-py parses it)."""
        client = self.client()
        try:
            return execute(client, *args)
        finally:
            client.close()

    def alive(self) -> bool:
        """True while the process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (a machine failure: nothing is saved); the directory stays."""
        process = self.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def stop(self) -> None:
        """Stop the process by PID (SIGTERM, SIGKILL after 5 s) and remove its directory."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the node's log file (for error messages)."""
        try:
            return Path(self.directory, "redis.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """A Redis Cluster of ``masters`` nodes (no replicas) on free ports.

    ``url`` is the ``redis+cluster://`` URL naming every node. Use as a
    context manager, or call ``start()`` and ``stop()``.
    """

    binary: str
    masters: int = 3
    nodes: list[RedisNode] = field(default_factory=list)

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
                self.nodes.append(RedisNode(self.binary, config).start())
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

    def node_id(self, node: RedisNode) -> str:
        """The cluster id of ``node``."""
        return str(node.command("CLUSTER", "MYID"))

    def owner(self, slot: int) -> RedisNode:
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

    def move_slot(self, slot: int, target: RedisNode, pause: float = 0.0) -> int:
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
