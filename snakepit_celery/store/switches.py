"""Process-wide store switches: the default store, fail-open, and the error counters.

``resolve_store()`` is what every stateful object calls on its ``store=``
argument (``StoreBinding`` keeps that argument). ``fail_open()`` /
``report_store_error()`` implement the policy for an unreachable store:
proceed without shared state (logging at most once a minute) unless
fail-open was turned off. ``report_script_error()`` counts and logs a store
operation Redis refused or failed (a bug or a misconfiguration, never an
outage). Logs go to the ``snakepit_celery.store`` logger.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from snakepit_celery.store.base import Store
from snakepit_celery.store.registry import store_from_url
from snakepit_celery.store.urls import redact

__all__ = [
    "ERROR_LOG_INTERVAL",
    "StoreBinding",
    "fail_open",
    "report_script_error",
    "report_store_error",
    "resolve_store",
    "script_error_count",
    "set_default_store",
    "set_fail_open",
    "store_error_count",
]

logger = logging.getLogger(__package__)

#: Seconds between two warnings about an unreachable store.
ERROR_LOG_INTERVAL = 60.0

_lock = threading.Lock()
_default: Store | None = None
_fail_open = True
_last_error_log = float("-inf")
_error_count = 0
_script_error_count = 0


def set_default_store(store: Store | str | None) -> None:
    """Make ``store`` (a Store or URL) what ``resolve_store(None)`` returns; None restores memory://."""
    global _default
    _default = store_from_url(store) if isinstance(store, str) else store


def resolve_store(store: Store | str | None) -> Store:
    """Turn a ``store=`` argument into a Store: itself, the one for a URL, or the default."""
    if store is None:
        return _default if _default is not None else store_from_url("memory://")
    if isinstance(store, str):
        return store_from_url(store)
    return store


class StoreBinding:
    """The ``store=`` argument of a stateful object (breaker, health monitor, barrier).

    A Store or URL is resolved once, at construction; ``None`` means the
    process default at each use, so ``install(app)`` can set it later.
    """

    __slots__ = ("_store", "arg")

    def __init__(self, store: Store | str | None) -> None:
        self.arg = store
        self._store = None if store is None else resolve_store(store)

    def get(self) -> Store:
        """The store to use now."""
        return self._store if self._store is not None else resolve_store(None)

    def describe(self) -> str | None:
        """The argument for a ``repr``: its URL (password hidden), or None for the default."""
        url = self.arg if isinstance(self.arg, str | None) else self.arg.url
        return None if url is None else redact(url)


def fail_open() -> bool:
    """True when an unreachable store should be ignored (the default) rather than raised."""
    return _fail_open


def set_fail_open(value: bool) -> None:
    """Turn fail-open on (proceed without shared state) or off (raise StoreUnavailableError)."""
    global _fail_open
    _fail_open = bool(value)


def report_store_error(exc: BaseException, **context: Any) -> None:
    """Count a store failure and log a warning about it, at most once a minute per process."""
    global _last_error_log, _error_count
    now = time.monotonic()
    with _lock:
        _error_count += 1
        due = now - _last_error_log >= ERROR_LOG_INTERVAL
        if due:
            _last_error_log = now
    if due:
        logger.warning(
            "snakepit store unavailable, continuing without shared state: %s",
            redact(str(exc)),
            extra={"snakepit_store_error": type(exc).__name__, "snakepit_context": context},
        )


def store_error_count() -> int:
    """How many store failures ``report_store_error`` has seen in this process."""
    return _error_count


def report_script_error(operation: str, exc: BaseException) -> None:
    """Count and log a store operation that Redis refused or failed (ACL, script error)."""
    global _script_error_count
    with _lock:
        _script_error_count += 1
    logger.error(
        "snakepit store operation %s failed (a bug or a misconfiguration, not an outage): %s",
        operation,
        redact(str(exc)),
        extra={"snakepit_script": operation, "snakepit_store_error": type(exc).__name__},
    )


def script_error_count() -> int:
    """How many store operations Redis refused or failed in this process."""
    return _script_error_count
