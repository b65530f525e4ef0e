"""Helpers for the Redis Cluster and Sentinel tests: breaker calls running while Redis changes."""

from __future__ import annotations

import threading
import time

from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.testing import wait_until


class CallLoop:
    """Calls through ``breaker`` in a thread (one every ``interval`` s) until the ``with`` ends.

    Counts the calls that went through; an exception escaping a call is kept
    in ``errors`` and ends the loop.
    """

    def __init__(self, breaker: CircuitBreaker, interval: float = 0.0) -> None:
        self.breaker = breaker
        self.interval = interval
        self.calls = 0
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.breaker.call(lambda: None)
            except Exception as exc:
                self.errors.append(exc)
                return
            self.calls += 1
            time.sleep(self.interval)

    def wait_calls(self, more: int, timeout: float = 20.0) -> None:
        """Wait (at most ``timeout`` s) until ``more`` further calls went through, or one failed."""
        target = self.calls + more
        wait_until(
            lambda: self.calls >= target or self.errors, timeout, what=f"{more} breaker calls"
        )

    def __enter__(self) -> CallLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
