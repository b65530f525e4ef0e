"""Running many calls in parallel: threads, or asyncio tasks for the ``a``-twin.

Like ``asyncio.gather(return_exceptions=True)``: each result is the call's
value or its exception; an item unfinished at the batch timeout is a
``TimeoutError`` instance (threads are abandoned, tasks cancelled).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from snakepit_celery.errors import ConfigError
from snakepit_celery.executor.timeouts import check_timeout

__all__ = ["aexecute_batch", "check_concurrency", "execute_batch"]

logger = logging.getLogger(__name__)


def check_concurrency(value: Any) -> int | None:
    """``value`` if it is None or an int >= 1; else ``ConfigError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("max_concurrency", value, "an integer >= 1 or None")
    return value


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
    seconds = check_timeout("timeout", timeout, optional=True)
    limit = check_concurrency(max_concurrency)
    if not calls:
        return []
    batch = _ThreadBatch(calls)
    for _ in range(min(len(calls), limit or len(calls))):
        threading.Thread(target=batch.work, name="snakepit-batch", daemon=True).start()
    batch.all_done.wait(seconds)
    return batch.stop(seconds)


async def aexecute_batch(
    fns: Iterable[Callable[[], Awaitable[Any]]],
    timeout: float | None = 30.0,
    max_concurrency: int | None = None,
) -> list[Any]:
    """``execute_batch`` for coroutine functions; unfinished items are cancelled."""
    calls = list(fns)
    seconds = check_timeout("timeout", timeout, optional=True)
    limit = check_concurrency(max_concurrency)
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
