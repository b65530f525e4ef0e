"""Running a call in a background thread or task, and with a time limit.

``execute_with_timeout`` abandons the thread of a call that outlives its
timeout (Python cannot kill a thread); ``aexecute_with_timeout`` cancels.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from snakepit_celery.errors import ConfigError

__all__ = [
    "aexecute_async",
    "aexecute_with_timeout",
    "check_timeout",
    "execute_async",
    "execute_with_timeout",
]

T = TypeVar("T")


def check_timeout(name: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` as seconds >= 0 (None allowed with ``optional``); else ``ConfigError``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        allowed = "a number of seconds >= 0" + (" or None" if optional else "")
        raise ConfigError(name, value, allowed)
    if math.isnan(value) or value < 0:
        allowed = "a number of seconds >= 0" + (" or None" if optional else "")
        raise ConfigError(name, value, allowed)
    return float(value)


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
    seconds = check_timeout("timeout", timeout)
    future = execute_async(fn)
    try:
        return future.result(timeout=seconds)
    except TimeoutError:
        if future.done():
            raise  # fn itself raised TimeoutError
        raise TimeoutError(
            f"call did not finish within {seconds:g}s (its thread was abandoned)"
        ) from None


def aexecute_async(fn: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
    """Schedule ``fn()`` on the running event loop; return its ``Task``."""

    async def run() -> T:
        return await fn()

    return asyncio.get_running_loop().create_task(run())


async def aexecute_with_timeout(fn: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Await ``fn()``; cancel it and raise ``TimeoutError`` after ``timeout`` seconds."""
    seconds = check_timeout("timeout", timeout)
    return await asyncio.wait_for(fn(), seconds)
