"""Which backend serves which URL scheme, and the per-URL store cache.

Each backend declares the schemes it serves (``URL_SCHEMES``); ``BACKENDS``
collects them, so the list of store URLs is written once.
``store_from_url()`` turns a URL into a ``Store``, cached per URL and key
prefix so that many objects naming the same URL share one connection pool.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from snakepit_celery.store.base import Store
from snakepit_celery.store.memory import MemoryStore
from snakepit_celery.store.redis import RedisStore
from snakepit_celery.store.urls import checked_scheme

__all__ = [
    "ALLOWED_SCHEMES",
    "BACKENDS",
    "REDIS_SCHEMES",
    "clear_store_cache",
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
