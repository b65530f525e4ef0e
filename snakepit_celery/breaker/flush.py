"""Batched breaker successes reach the store: a timer thread per process, and at exit.

Each breaker's shared view registers here; ``schedule`` wakes one daemon
thread that flushes what is due every ``FLUSH_INTERVAL``; ``flush_all`` runs at
interpreter exit, at exit of multiprocessing/billiard children, and from worker
shutdown hooks. A forked child starts with no timer and no batch of its parent.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterable
from typing import Any, Protocol, cast

__all__ = ["FLUSH_INTERVAL", "Flushable", "flush_all", "register", "schedule"]

logger = logging.getLogger(__name__)

#: Longest time a batched success waits before the background flush writes it.
FLUSH_INTERVAL = 0.1


class Flushable(Protocol):
    """What holds a batch of successes (one breaker's view of its shared state)."""

    name: str

    def flush(self) -> None:
        """Write the batch to the store now."""
        ...

    def after_fork(self) -> None:
        """Forget the batch in a forked child (the parent flushes its own)."""
        ...


class _Flusher:
    """One daemon thread per process writing batched successes every ``FLUSH_INTERVAL``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: set[Flushable] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def schedule(self, batch: Flushable) -> None:
        with self._lock:
            self._due.add(batch)
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid != os.getpid():
                self._pid = os.getpid()
                _register_exit_flush()
            self._thread = threading.Thread(
                target=self._run, name="snakepit-breaker-flush", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        idle = 0
        while True:
            time.sleep(FLUSH_INTERVAL)
            with self._lock:
                due, self._due = self._due, set()
                if not due:
                    idle += 1
                    if idle >= 10:
                        self._thread = None
                        return
                    continue
            idle = 0
            _flush_each(due)

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._due = set()
        self._thread = None
        self._pid = 0


_REGISTERED: weakref.WeakSet[Flushable] = weakref.WeakSet()
_FLUSHER = _Flusher()


def register(batch: Flushable) -> None:
    """Make ``flush_all`` and the after-fork reset cover ``batch`` (held weakly)."""
    _REGISTERED.add(batch)


def schedule(batch: Flushable) -> None:
    """Have the timer thread flush ``batch`` within ``FLUSH_INTERVAL``."""
    _FLUSHER.schedule(batch)


def flush_all() -> None:
    """Write every breaker's batched successes now (run at exit and by worker shutdown hooks)."""
    _flush_each(list(_REGISTERED))


def _flush_each(batches: Iterable[Flushable]) -> None:
    for batch in batches:
        try:
            batch.flush()
        except Exception:
            logger.exception("breaker flush failed", extra={"breaker": batch.name})


def _register_exit_flush() -> None:
    """Flush at exit of a multiprocessing/billiard child too (they leave through ``os._exit``)."""
    multiprocessing.util.Finalize(None, flush_all, exitpriority=100)
    billiard_util = sys.modules.get("billiard.util")
    if billiard_util is not None:
        cast(Any, billiard_util).Finalize(None, flush_all, exitpriority=100)


def _after_fork_in_child() -> None:
    _FLUSHER.after_fork()
    for batch in list(_REGISTERED):
        batch.after_fork()


atexit.register(flush_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
