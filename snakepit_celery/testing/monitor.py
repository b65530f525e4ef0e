"""Count what clients send to Redis, with ``MONITOR``, for round-trip tests and benchmarks.

``INFO commandstats`` also counts the commands Lua scripts run; MONITOR tags
those (``lua``), so a ``CommandLog`` keeps only what a client sent: one entry
per command, the unit the hot-path budget is written in.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from typing import Any

import redis

__all__ = ["CommandLog", "transactions"]

_MARK = "snakepit-monitor-mark-"
_MARKER = re.compile(re.escape(_MARK) + r"(\w+)")


class CommandLog:
    """A MONITOR connection in a thread, logging client commands (optionally of one db).

    ``mark(client)`` returns a position in the log once MONITOR has seen it,
    so ``since(position)`` holds exactly what happened after it.
    """

    def __init__(self, url: str, db: int | None = None) -> None:
        self._url = url
        self._db = db
        self._commands: list[str] = []
        self._marks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = redis.Redis.from_url(url)
        self._monitor: Any = self._client.monitor()  # type: ignore[no-untyped-call]
        self._monitor.__enter__()
        self._thread = threading.Thread(target=self._run, name="snakepit-monitor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                entry: dict[str, Any] = self._monitor.next_command()
            except (redis.RedisError, OSError, AttributeError):
                return
            command = str(entry.get("command", ""))
            with self._lock:
                if _MARK in command:
                    self._marks[command.split(_MARK, 1)[1].split(maxsplit=1)[0]] = len(
                        self._commands
                    )
                    continue
                if entry.get("client_type") == "lua":
                    continue
                if self._db is not None and entry.get("db") != self._db:
                    continue
                self._commands.append(command)

    @property
    def commands(self) -> list[str]:
        """Every client command logged so far."""
        with self._lock:
            return list(self._commands)

    def matching(self, needle: str) -> list[str]:
        """Logged commands containing ``needle``."""
        return [command for command in self.commands if needle in command]

    def mark(self, client: redis.Redis, timeout: float = 10.0) -> int:
        """Send a marker through ``client``; the log position once MONITOR saw it."""
        token = uuid.uuid4().hex
        client.echo(_MARK + token)
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if token in self._marks:
                    return self._marks.pop(token)
            if time.monotonic() > deadline:
                raise TimeoutError("MONITOR did not see the marker")
            time.sleep(0.005)

    def since(self, position: int, until: int | None = None) -> list[str]:
        """Commands logged between two positions (``until`` None = up to now)."""
        with self._lock:
            return self._commands[position:until]

    def close(self) -> None:
        """Stop the thread (an ECHO wakes its blocking read) and the connection."""
        self._stop.set()
        with contextlib.suppress(redis.RedisError, OSError):
            waker = redis.Redis.from_url(self._url)
            waker.echo(_MARK + "stop")
            waker.close()
        self._thread.join(5)
        try:
            self._monitor.__exit__()
        finally:
            self._client.close()

    def __enter__(self) -> CommandLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def transactions(commands: list[str], needle: str) -> list[list[str]]:
    """The MULTI/EXEC blocks of a MONITOR log, each as its commands that contain ``needle``.

    Commands of other clients that MONITOR logged in between are left out
    (a key prefix as ``needle`` keeps one test's own); empty blocks are dropped.
    """
    blocks: list[list[str]] = []
    current: list[str] = []
    for command in commands:
        name = command.split(maxsplit=1)[0].strip('"').upper() if command else ""
        if name in ("MULTI", "EXEC"):
            if name == "EXEC" and current:
                blocks.append(current)
            current = []
        elif needle in command:
            current.append(command)
    return blocks
