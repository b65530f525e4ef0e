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

import asyncio
import contextvars
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from snakepit_celery import signals
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.errors import CircuitOpenError, ConfigError, RetryExhaustedError
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.testing import is_testing

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


# -- validation ----------------------------------------------------------------


def _check_timeout(name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        allowed = "a number of seconds >= 0" + (" or None" if optional else "")
        raise ConfigError(name, value, allowed)
    if math.isnan(value) or value < 0:
        allowed = "a number of seconds >= 0" + (" or None" if optional else "")
        raise ConfigError(name, value, allowed)
    return float(value)


def _check_concurrency(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("max_concurrency", value, "an integer >= 1 or None")
    return value


def _resolve_policy(policy: RetryPolicy | None, overrides: dict[str, Any]) -> RetryPolicy:
    if policy is not None and not isinstance(policy, RetryPolicy):
        raise ConfigError("policy", policy, "a RetryPolicy or None")
    base = policy if policy is not None else RetryPolicy()
    return base.replace(**overrides) if overrides else base


# -- threads ----------------------------------------------------------------------


def execute_async(fn: Callable[[], T]) -> Future[T]:
    """Start ``fn()`` in a background daemon thread; return its ``Future``.

    The caller's context variables are visible inside ``fn``. ``cancel()`` on
    the returned future has no effect once started (it always is).
    """
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()
    context = contextvars.copy_context()

    def run() -> None:
        try:
            result = context.run(fn)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name="snakepit-executor", daemon=True).start()
    return future


def execute_with_timeout(fn: Callable[[], T], timeout: float) -> T:
    """Return ``fn()``, or raise ``TimeoutError`` if it takes longer than ``timeout`` seconds.

    ``fn``'s own exception is re-raised. On timeout the thread running ``fn``
    is abandoned, not killed (Python cannot kill threads); use a Celery time
    limit or ``aexecute_with_timeout`` when the work must really stop.
    """
    seconds = _check_timeout("timeout", timeout)
    future = execute_async(fn)
    try:
        return future.result(timeout=seconds)
    except TimeoutError:
        if future.done():
            raise  # fn itself raised TimeoutError
        raise TimeoutError(
            f"call did not finish within {seconds:g}s (its thread was abandoned)"
        ) from None


_PENDING: Any = object()


def _timed_out(index: int, seconds: float | None) -> TimeoutError:
    """The result of batch item ``index`` unfinished after ``seconds`` (logged by the caller)."""
    return TimeoutError(f"batch item {index} did not finish within {seconds:g}s")


def _warn_unfinished(unfinished: int, total: int, seconds: float | None) -> None:
    if unfinished:
        logger.warning(
            "batch timed out",
            extra={"unfinished": unfinished, "total": total, "timeout": seconds},
        )


class _ThreadBatch:
    """Items run by worker threads taking the next unstarted one until told to stop."""

    def __init__(self, calls: list[Callable[[], Any]]) -> None:
        self.calls = calls
        self.results: list[Any] = [_PENDING] * len(calls)
        self.all_done = threading.Event()
        self._lock = threading.Lock()
        self._queue = iter(range(len(calls)))
        self._remaining = len(calls)
        self._stopped = False
        self._context = contextvars.copy_context()

    def work(self) -> None:
        while True:
            with self._lock:
                index = None if self._stopped else next(self._queue, None)
            if index is None:
                return
            try:
                value = self._context.copy().run(self.calls[index])
            except BaseException as exc:
                value = exc
            with self._lock:
                self.results[index] = value
                self._remaining -= 1
                if self._remaining == 0:
                    self.all_done.set()

    def stop(self, seconds: float | None) -> list[Any]:
        """Start nothing more; the results, unfinished items as ``TimeoutError`` instances."""
        with self._lock:
            self._stopped = True
            unfinished = [i for i, value in enumerate(self.results) if value is _PENDING]
            _warn_unfinished(len(unfinished), len(self.calls), seconds)
            return [
                _timed_out(i, seconds) if value is _PENDING else value
                for i, value in enumerate(self.results)
            ]


def execute_batch(
    fns: Iterable[Callable[[], Any]],
    timeout: float | None = 30.0,
    max_concurrency: int | None = None,
) -> list[Any]:
    """Run ``fns`` in parallel threads; return their results in input order.

    Like ``asyncio.gather(return_exceptions=True)``: an item that raised is its
    exception instance, an item unfinished after ``timeout`` seconds for the
    whole batch (None = no limit) is a ``TimeoutError`` instance (items not
    started by then are never started). At most ``max_concurrency`` items run
    at once (None = all).
    """
    calls = list(fns)
    seconds = _check_timeout("timeout", timeout, optional=True)
    limit = _check_concurrency(max_concurrency)
    if not calls:
        return []
    batch = _ThreadBatch(calls)
    for _ in range(min(len(calls), limit or len(calls))):
        threading.Thread(target=batch.work, name="snakepit-batch", daemon=True).start()
    batch.all_done.wait(seconds)
    return batch.stop(seconds)


# -- retries ----------------------------------------------------------------------


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
    return _retry(fn, _resolve_policy(policy, policy_kwargs))


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
    resolved = _resolve_policy(policy, policy_kwargs)
    return _retry(lambda: breaker.call(fn), resolved, breaker=breaker)


# -- asyncio twins ------------------------------------------------------------------


def aexecute_async(fn: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
    """Schedule ``fn()`` on the running event loop; return its ``Task``."""

    async def run() -> T:
        return await fn()

    return asyncio.get_running_loop().create_task(run())


async def aexecute_with_timeout(fn: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Await ``fn()``; cancel it and raise ``TimeoutError`` after ``timeout`` seconds."""
    seconds = _check_timeout("timeout", timeout)
    return await asyncio.wait_for(fn(), seconds)


async def aexecute_with_retry(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy | None = None, **policy_kwargs: Any
) -> T:
    """``execute_with_retry`` for a coroutine function (sleeps with ``asyncio.sleep``)."""
    return await _aretry(fn, _resolve_policy(policy, policy_kwargs))


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
    resolved = _resolve_policy(policy, policy_kwargs)
    return await _aretry(lambda: breaker.acall(fn), resolved, breaker=breaker)


async def aexecute_batch(
    fns: Iterable[Callable[[], Awaitable[Any]]],
    timeout: float | None = 30.0,
    max_concurrency: int | None = None,
) -> list[Any]:
    """``execute_batch`` for coroutine functions; unfinished items are cancelled."""
    calls = list(fns)
    seconds = _check_timeout("timeout", timeout, optional=True)
    limit = _check_concurrency(max_concurrency)
    if not calls:
        return []
    gate = asyncio.Semaphore(limit or len(calls))

    async def run(call: Callable[[], Awaitable[Any]]) -> Any:
        async with gate:
            return await call()

    tasks = [asyncio.ensure_future(run(call)) for call in calls]
    _, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in pending:
        task.cancel()
    _warn_unfinished(len(pending), len(calls), seconds)
    results: list[Any] = []
    for index, task in enumerate(tasks):
        if task in pending:
            results.append(_timed_out(index, seconds))
        elif task.cancelled():
            results.append(asyncio.CancelledError())
        else:
            error = task.exception()
            results.append(error if error is not None else task.result())
    return results
