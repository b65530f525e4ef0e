"""A private Redis Sentinel set for the tests and benchmarks, built from ``redis-server``.

``SentinelSet`` starts a master, one replica of it and ``sentinels`` Sentinels
watching the master under the service name ``service`` (quorum: a majority
of the Sentinels), each an ``EmbeddedRedis`` on a free port in its own temporary
directory. Failure detection is quick (``down_after`` s, default 1) so a test
can SIGKILL the master and see the replica promoted within seconds. Every
wait is bounded; every process is stopped by PID.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from snakepit_celery.testing.redis_server import EmbeddedRedis

__all__ = ["SentinelSet"]

log = logging.getLogger(__name__)


@dataclass
class SentinelSet:
    """Master + replica + Sentinel(s); ``url`` is the ``redis+sentinel://`` URL of the service.

    ``down_after`` (s) is Sentinel's ``down-after-milliseconds``,
    ``failover_timeout`` (s) its ``failover-timeout``.
    """

    binary: str
    service: str = "snakepit"
    sentinels: int = 1
    down_after: float = 1.0
    failover_timeout: float = 3.0
    master: EmbeddedRedis | None = None
    replica: EmbeddedRedis | None = None
    sentinel_nodes: list[EmbeddedRedis] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:<port>,.../<service>``."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.sentinel_nodes)
        return f"redis+sentinel://{hosts}/{self.service}"

    def start(self, timeout: float = 30.0) -> SentinelSet:
        """Start master, replica and Sentinels; wait until the replica is in sync and watched."""
        deadline = time.monotonic() + timeout
        try:
            # No 5 s wait for more replicas before the first sync (Redis 7's default).
            self.master = EmbeddedRedis(self.binary, ["repl-diskless-sync-delay 0"]).start()
            self.replica = EmbeddedRedis(self.binary, [f"replicaof 127.0.0.1 {self.master.port}"])
            self.replica.start()
            self._wait(deadline, self._replica_in_sync, "the replica to sync")
            quorum = self.sentinels // 2 + 1
            config = [
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} {quorum}",
                f"sentinel down-after-milliseconds {self.service} {int(self.down_after * 1000)}",
                f"sentinel failover-timeout {self.service} {int(self.failover_timeout * 1000)}",
                f"sentinel parallel-syncs {self.service} 1",
            ]
            for _ in range(self.sentinels):
                self.sentinel_nodes.append(
                    EmbeddedRedis(self.binary, config, sentinel=True).start()
                )
            self._wait(deadline, self._watched, "the Sentinels to see the replica and each other")
        except BaseException:
            self.stop()
            raise
        log.info("started private Redis Sentinel set", extra={"url": self.url})
        return self

    def _wait(self, deadline: float, ready: Callable[[], bool], what: str) -> None:
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.05)
        tails = "\n".join(
            node.log_tail(500) for node in [self.master, self.replica, *self.sentinel_nodes] if node
        )
        raise RuntimeError(f"timed out waiting for {what}:\n{tails}")

    def _replica_in_sync(self) -> bool:
        assert self.replica is not None
        info = self.replica.command("INFO", "replication")
        return isinstance(info, dict) and info.get("master_link_status") == "up"

    def _watched(self) -> bool:
        for sentinel in self.sentinel_nodes:
            replicas = sentinel.command("SENTINEL", "REPLICAS", self.service)
            if not isinstance(replicas, list) or not replicas:
                return False
            master = sentinel.command("SENTINEL", "MASTER", self.service)
            known = master.get("num-other-sentinels") if isinstance(master, dict) else None
            if known is not None and int(known) < self.sentinels - 1:
                return False
        return True

    def master_port(self) -> int:
        """The port of the master as the first Sentinel names it now."""
        reply = self.sentinel_nodes[0].command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        assert isinstance(reply, list | tuple)
        return int(reply[1])

    def wait_replicated(self, timeout: float = 5.0) -> None:
        """Block until the replica has every write the master acknowledged so far (``WAIT``)."""
        assert self.master is not None
        acked = self.master.command("WAIT", 1, int(timeout * 1000))
        if not isinstance(acked, int) or acked < 1:
            raise RuntimeError(f"the replica did not acknowledge the writes within {timeout}s")

    def kill_master(self) -> EmbeddedRedis:
        """SIGKILL the current master (found through Sentinel); returns its node."""
        port = self.master_port()
        master = next(n for n in (self.master, self.replica) if n is not None and n.port == port)
        master.kill()
        return master

    def stop(self) -> None:
        """Stop every process by PID (Sentinels first) and remove their directories."""
        for node in self.sentinel_nodes:
            node.stop()
        self.sentinel_nodes.clear()
        for server in (self.replica, self.master):
            if server is not None:
                server.stop()
        self.master = self.replica = None

    def __enter__(self) -> SentinelSet:
        return self.start() if self.master is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
