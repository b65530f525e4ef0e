"""Helpers for the breaker and health tests: signal recorders, a call-counting store, a private
Redis to stop and start."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from snakepit_celery import signals

BREAKER_SIGNALS = {
    "opened": signals.breaker_opened,
    "half_open": signals.breaker_half_open,
    "closed": signals.breaker_closed,
}


class SignalLog:
    """Records the breaker signals sent for one pool name, in order."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        with self._lock:
            return [name for name, _ in self.events]

    def count(self, name: str) -> int:
        return self.names().count(name)

    def receiver(self, name: str) -> Callable[..., None]:
        def receive(sender: Any = None, signal: Any = None, **kwargs: Any) -> None:
            if kwargs.get("pool") == self.pool:
                with self._lock:
                    self.events.append((name, kwargs))

        return receive


@contextmanager
def record_signals(pool: str) -> Iterator[SignalLog]:
    """Collect breaker_opened/half_open/closed and worker_crash signals for ``pool``."""
    log = SignalLog(pool)
    connected = []
    for name, sig in {**BREAKER_SIGNALS, "worker_crash": signals.worker_crash}.items():
        receiver = log.receiver(name)
        sig.connect(receiver, weak=False)
        connected.append((sig, receiver))
    try:
        yield log
    finally:
        for sig, receiver in connected:
            sig.disconnect(receiver)


class CountingStore:
    """Wraps a store and counts calls per operation (round trips, for a real store)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: dict[str, int] = {}

    def total(self) -> int:
        return sum(self.calls.values())

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted
