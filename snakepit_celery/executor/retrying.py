"""Retrying a call by a ``RetryPolicy``, optionally through a circuit breaker (sync and async).

Retries emit the ``retry_attempt``, ``retry_success`` and ``retry_exhausted``
signals with the policy as sender.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from snakepit_celery import signals
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.errors import CircuitOpenError, ConfigError, RetryExhaustedError
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.testing import is_testing

__all__ = [
    "Breaker",
    "aexecute_with_circuit_breaker",
    "aexecute_with_protection",
    "aexecute_with_retry",
    "execute_with_circuit_breaker",
    "execute_with_protection",
    "execute_with_retry",
    "resolve_policy",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Breaker(Protocol):
    """What the executor needs from a circuit breaker (``CircuitBreaker`` fits)."""

    def call(self, fn: Callable[[], T], /) -> T:
        """Call ``fn`` through the breaker; raise ``CircuitOpenError`` when refused."""
        ...

    async def acall(self, fn: Callable[[], Awaitable[T]], /) -> T:
        """Await ``fn()`` through the breaker; raise ``CircuitOpenError`` when refused."""
        ...


def resolve_policy(policy: RetryPolicy | None, overrides: dict[str, Any]) -> RetryPolicy:
    """``policy`` (default ``RetryPolicy()``) with ``overrides`` applied."""
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise ConfigError("policy", policy, "a RetryPolicy or None")
    base = policy if policy is not None else RetryPolicy()
    return base.replace(**overrides) if overrides else base


class _RetryRun:
    """Bookkeeping of one retried call, shared by the sync and async loops."""

    def __init__(self, policy: RetryPolicy, *, breaker: Breaker | None = None) -> None:
        self.policy = policy
        self.breaker = breaker
        self.attempt = 1
        self.started = time.monotonic()

    def failed(self, exc: Exception) -> float | None:
        """Seconds to wait before the next attempt; None when ``exc`` is not retriable.

        Raises ``RetryExhaustedError`` (from ``exc``) when attempts ran out. A
        refusal of ``breaker`` is always retriable, never sooner than its
        ``retry_after`` (capped at a ``CircuitBreaker``'s ``reset_timeout``).
        """
        open_circuit = isinstance(exc, CircuitOpenError)
        retriable = (open_circuit and self.breaker is not None) or self.policy.retry_for_error(exc)
        if not retriable:
            return None
        if not self.policy.should_retry(self.attempt):
            duration = time.monotonic() - self.started
            logger.warning(
                "retries exhausted",
                extra={"attempts": self.attempt, "error": repr(exc), "duration": duration},
            )
            signals.retry_exhausted.send(
                sender=self.policy,
                attempts=self.attempt,
                total_duration=duration,
                last_error=exc,
            )
            raise RetryExhaustedError(self.attempt, exc) from exc
        delay = 0.0 if is_testing() else self.policy.backoff_for_attempt(self.attempt)
        if isinstance(exc, CircuitOpenError) and not is_testing():
            wait = exc.retry_after
            if isinstance(self.breaker, CircuitBreaker):
                wait = self.breaker.retry_delay(exc)
            delay = max(delay, wait)
        logger.info(
            "retrying after failure",
            extra={"attempt": self.attempt, "delay": delay, "error": repr(exc)},
        )
        signals.retry_attempt.send(sender=self.policy, attempt=self.attempt, delay=delay)
        self.attempt += 1
        return delay

    def succeeded(self) -> None:
        """Send ``retry_success`` for the attempt that worked."""
        signals.retry_success.send(
            sender=self.policy,
            attempts=self.attempt,
            total_duration=time.monotonic() - self.started,
        )


def _retry(fn: Callable[[], T], policy: RetryPolicy, *, breaker: Breaker | None = None) -> T:
    run = _RetryRun(policy, breaker=breaker)
    while True:
        try:
            result = fn()
        except Exception as exc:
            delay = run.failed(exc)
            if delay is None:
                raise
            if delay > 0:
                time.sleep(delay)
            continue
        run.succeeded()
        return result


async def _aretry(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy, *, breaker: Breaker | None = None
) -> T:
    run = _RetryRun(policy, breaker=breaker)
    while True:
        try:
            result = await fn()
        except Exception as exc:
            delay = run.failed(exc)
            if delay is None:
                raise
            await asyncio.sleep(delay)
            continue
        run.succeeded()
        return result


def execute_with_retry(
    fn: Callable[[], T], policy: RetryPolicy | None = None, **policy_kwargs: Any
) -> T:
    """Call ``fn`` until it succeeds or the policy gives up.

    ``policy_kwargs`` build a ``RetryPolicy`` (or override fields of
    ``policy``). A non-retriable error is re-raised as is; when attempts run
    out, ``RetryExhaustedError`` is raised with the last error as its cause.
    """
    return _retry(fn, resolve_policy(policy, policy_kwargs))


def execute_with_circuit_breaker(breaker: Breaker, fn: Callable[[], T]) -> T:
    """Call ``fn`` through ``breaker`` (``CircuitOpenError`` when it refuses)."""
    return breaker.call(fn)


def execute_with_protection(
    breaker: Breaker,
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    **policy_kwargs: Any,
) -> T:
    """Retry outside, breaker inside: each attempt goes through ``breaker``.

    A refusal (``CircuitOpenError``) counts as an attempt and is retried
    whatever ``retriable_errors`` says, but never sooner than its
    ``retry_after``, so an open breaker is waited out, not hammered. A
    ``CircuitBreaker``'s own refusal is waited out for at most its
    ``reset_timeout`` (a busy half-open probe answers with its longer lease).
    """
    resolved = resolve_policy(policy, policy_kwargs)
    return _retry(lambda: breaker.call(fn), resolved, breaker=breaker)


async def aexecute_with_retry(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy | None = None, **policy_kwargs: Any
) -> T:
    """``execute_with_retry`` for a coroutine function (sleeps with ``asyncio.sleep``)."""
    return await _aretry(fn, resolve_policy(policy, policy_kwargs))


async def aexecute_with_circuit_breaker(breaker: Breaker, fn: Callable[[], Awaitable[T]]) -> T:
    """Await ``fn()`` through ``breaker`` (``CircuitOpenError`` when it refuses)."""
    return await breaker.acall(fn)


async def aexecute_with_protection(
    breaker: Breaker,
    fn: Callable[[], Awaitable[T]],
    policy: RetryPolicy | None = None,
    **policy_kwargs: Any,
) -> T:
    """``execute_with_protection`` for a coroutine function."""
    resolved = resolve_policy(policy, policy_kwargs)
    return await _aretry(lambda: breaker.acall(fn), resolved, breaker=breaker)
