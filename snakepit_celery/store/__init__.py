"""Shared state behind one small protocol, picked by URL.

``store_from_url()`` turns a URL into a ``Store`` (cached per URL and key
prefix, so many objects naming the same URL share one connection pool);
``resolve_store()`` is what every stateful object calls on its ``store=``
argument. ``fail_open()`` / ``report_store_error()`` implement the policy for
an unreachable store: proceed without shared state (logging at most once a
minute) unless fail-open was turned off.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from snakepit_celery.errors import ConfigError
from snakepit_celery.store.base import (
    BreakerDecision,
    BreakerRecord,
    BreakerSnapshot,
    HealthSnapshot,
    LedgerEntry,
    Store,
    TaintRecord,
    WorkerCrashes,
)
from snakepit_celery.store.memory import MemoryStore
from snakepit_celery.store.redis import RedisStore

__all__ = [
    "ALLOWED_SCHEMES",
    "BreakerDecision",
    "BreakerRecord",
    "BreakerSnapshot",
    "HealthSnapshot",
    "LedgerEntry",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreBinding",
    "TaintRecord",
    "WorkerCrashes",
    "clear_store_cache",
    "fail_open",
    "report_store_error",
    "resolve_store",
    "set_default_store",
    "set_fail_open",
    "store_error_count",
    "store_from_url",
]

logger = logging.getLogger(__name__)

#: URL schemes ``store_from_url`` understands.
ALLOWED_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "memory")
_ALLOWED_TEXT = ", ".join(f"{scheme}://" for scheme in ALLOWED_SCHEMES)

#: Seconds between two warnings about an unreachable store.
ERROR_LOG_INTERVAL = 60.0

_lock = threading.Lock()
_cache: dict[tuple[str, str], Store] = {}
_default: Store | None = None
_fail_open = True
_last_error_log = float("-inf")
_error_count = 0


def store_from_url(url: str, *, key_prefix: str = "snakepit") -> Store:
    """The store for ``url``, shared by every caller asking for the same URL and prefix.

    ``memory://`` gives one process-wide ``MemoryStore`` per key prefix; the
    Redis schemes give a ``RedisStore`` (connections are made lazily, and
    redis-py's pools reset themselves in forked children). Any other URL
    raises ``ConfigError`` naming ``snakepit_store_url``.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError("snakepit_store_url", url, _ALLOWED_TEXT)
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise ConfigError("snakepit_store_url", url, _ALLOWED_TEXT)
    with _lock:
        store = _cache.get((url, key_prefix))
        if store is None:
            if scheme == "memory":
                store = MemoryStore(url, key_prefix=key_prefix)
            else:
                store = RedisStore(url, key_prefix=key_prefix)
            _cache[(url, key_prefix)] = store
        return store


def clear_store_cache() -> None:
    """Close and forget every cached store (tests, and re-configuration)."""
    with _lock:
        stores = list(_cache.values())
        _cache.clear()
    for store in stores:
        store.close()


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
        """The argument for a ``repr``: its URL, or None for the default."""
        return self.arg if isinstance(self.arg, str | None) else self.arg.url


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
            exc,
            extra={"snakepit_store_error": type(exc).__name__, "snakepit_context": context},
        )


def store_error_count() -> int:
    """How many store failures ``report_store_error`` has seen in this process."""
    return _error_count
