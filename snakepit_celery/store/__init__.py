"""Shared state behind one small protocol, picked by URL (re-exports only).

- ``base``: the ``Store`` protocol and its result types;
- ``memory`` / ``redis``: the backends; ``lua/``: one Redis script per operation;
- ``registry``: URL scheme -> backend, ``store_from_url()``, its cache, the default store;
- ``urls``: the one URL parser and the one password redaction;
- ``switches``: fail-open and the error counters.
"""

from __future__ import annotations

from snakepit_celery.store.base import Store
from snakepit_celery.store.memory import MemoryStore
from snakepit_celery.store.records import (
    BreakerDecision,
    BreakerRecord,
    BreakerSnapshot,
    HealthSnapshot,
    LedgerEntry,
    TaintRecord,
    WorkerCrashes,
)
from snakepit_celery.store.redis import RedisStore
from snakepit_celery.store.registry import (
    ALLOWED_SCHEMES,
    StoreBinding,
    clear_store_cache,
    resolve_store,
    set_default_store,
    store_from_url,
)
from snakepit_celery.store.switches import (
    ERROR_LOG_INTERVAL,
    fail_open,
    report_script_error,
    report_store_error,
    script_error_count,
    set_fail_open,
    store_error_count,
)
from snakepit_celery.store.urls import redact

__all__ = [
    "ALLOWED_SCHEMES",
    "ERROR_LOG_INTERVAL",
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
    "redact",
    "report_script_error",
    "report_store_error",
    "resolve_store",
    "script_error_count",
    "set_default_store",
    "set_fail_open",
    "store_error_count",
    "store_from_url",
]
