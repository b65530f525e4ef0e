"""Executor helpers: run a callable with a timeout, retries, a circuit breaker, or in batch.

Each helper takes a zero-argument callable (use ``functools.partial`` or a
lambda for arguments) and has an ``a``-prefixed asyncio twin taking a
coroutine function. Retries emit the ``retry_attempt``, ``retry_success`` and
``retry_exhausted`` signals with the policy as sender.

Thread-based helpers (``execute_with_timeout``, ``execute_batch``,
``execute_async``) run work in daemon threads: Python cannot kill a thread, so
work that outlives its timeout is *abandoned* (it keeps running in the
background until it returns; it never blocks interpreter exit), not stopped.
The asyncio twins cancel instead.
"""

from __future__ import annotations

from snakepit_celery.executor.batch import aexecute_batch, execute_batch
from snakepit_celery.executor.retrying import (
    Breaker,
    aexecute_with_circuit_breaker,
    aexecute_with_protection,
    aexecute_with_retry,
    execute_with_circuit_breaker,
    execute_with_protection,
    execute_with_retry,
)
from snakepit_celery.executor.timeouts import (
    aexecute_async,
    aexecute_with_timeout,
    execute_async,
    execute_with_timeout,
)

__all__ = [
    "Breaker",
    "aexecute_async",
    "aexecute_batch",
    "aexecute_with_circuit_breaker",
    "aexecute_with_protection",
    "aexecute_with_retry",
    "aexecute_with_timeout",
    "execute_async",
    "execute_batch",
    "execute_with_circuit_breaker",
    "execute_with_protection",
    "execute_with_retry",
    "execute_with_timeout",
]
