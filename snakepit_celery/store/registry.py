"""Which store a ``store=`` argument means: backends by URL scheme, the cache, the default.

Each backend declares the schemes it serves (``URL_SCHEMES``); ``BACKENDS``
collects them, so the list of store URLs is written once.
``store_from_url()`` turns a URL into a ``Store``, cached per URL and key
prefix so that many objects naming the same URL share one connection pool.
``resolve_store()`` is what every stateful object calls on its ``store=``
argument (``StoreBinding`` keeps that argument); ``None`` is the process
default (``set_default_store``, ``memory://`` until ``install()`` sets it).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from snakepit_celery.store.base import Store
from snakepit_celery.store.memory import MemoryStore
from snakepit_celery.store.redis import RedisStore
from snakepit_celery.store.redis_connect import check_url
from snakepit_celery.store.urls import checked_scheme, redact

__all__ = [
    "ALLOWED_SCHEMES",
    "BACKENDS",
    "REDIS_SCHEMES",
    "StoreBinding",
    "check_store_url",
    "clear_store_cache",
    "resolve_store",
    "set_default_store",
    "store_from_url",
]

#: URL scheme -> the backend class serving it.
BACKENDS: Mapping[str, type[RedisStore] | type[MemoryStore]] = {
    scheme: backend for backend in (RedisStore, MemoryStore) for scheme in backend.URL_SCHEMES
}
#: URL schemes ``store_from_url`` understands.
ALLOWED_SCHEMES: tuple[str, ...] = tuple(BACKENDS)
#: URL schemes of a Redis store (what a Redis broker or result backend can share).
REDIS_SCHEMES: tuple[str, ...] = RedisStore.URL_SCHEMES

_lock = threading.Lock()
_cache: dict[tuple[str, str], Store] = {}
_default: Store | None = None


def check_store_url(
    url: object, *, setting: str = "snakepit_store_url", allowed: str | None = None
) -> str:
    """Validate a store URL without connecting (scheme, hosts, TLS options); returns the URL.

    Raises ``ConfigError`` naming ``setting``, with the password hidden.
    """
    scheme = checked_scheme(url, ALLOWED_SCHEMES, setting=setting, allowed=allowed)
    if scheme in REDIS_SCHEMES:
        check_url(str(url), REDIS_SCHEMES)
    return str(url)


def store_from_url(url: str, *, key_prefix: str = "snakepit") -> Store:
    """The store for ``url``, shared by every caller asking for the same URL and prefix.

    ``memory://`` gives one process-wide ``MemoryStore`` per key prefix; the
    Redis schemes give a ``RedisStore`` (connections are made lazily, and
    redis-py's pools reset themselves in forked children). Any other URL
    raises ``ConfigError`` naming ``snakepit_store_url`` (password hidden).
    """
    scheme = checked_scheme(url, ALLOWED_SCHEMES)
    with _lock:
        store = _cache.get((url, key_prefix))
        if store is None:
            store = BACKENDS[scheme](url, key_prefix=key_prefix)
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
        """The argument for a ``repr``: its URL (password hidden), or None for the default."""
        url = self.arg if isinstance(self.arg, str | None) else self.arg.url
        return None if url is None else redact(url)
