"""``CircuitBreaker``: configuration, the ways to call through it, inspection, control.

What a process knows of the shared state and every store call live in
``shared.SharedView``; this class is what users hold.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from types import GeneratorType, TracebackType
from typing import Any, ParamSpec, TypeVar, cast, overload

from snakepit_celery.breaker.shared import SharedView
from snakepit_celery.breaker.state import Admission, BreakerState, BreakerStats
from snakepit_celery.breaker.stored_config import warn_config_conflict
from snakepit_celery.errors import CircuitOpenError, ConfigError
from snakepit_celery.policy.checks import check_name, check_seconds
from snakepit_celery.policy.settings import BreakerConfig
from snakepit_celery.store import StoreBinding, store_from_url
from snakepit_celery.store.base import Store
from snakepit_celery.testing import is_testing

__all__ = ["MIN_PROBE_TTL", "CircuitBreaker"]

P = ParamSpec("P")
R = TypeVar("R")

#: Shortest default lease of a half-open probe (``max(reset_timeout, this)``).
MIN_PROBE_TTL = 30.0


class CircuitBreaker:
    """Fleet-wide circuit breaker: ``closed`` → ``open`` → ``half_open`` → ``closed``.

    Use ``breaker.call(fn, *args)``, ``@breaker`` or ``with breaker:``. Every
    process using the same ``name`` on the same store shares one breaker.
    ``probe_ttl`` (keyword only, default ``max(reset_timeout, 30.0)``) is the
    lease of a half-open probe: a probe whose process dies frees its slot then.
    """

    def __init__(  # noqa: PLR0917 - positional order is the public API
        self,
        name: str,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max_calls: int = 1,
        exclude: type[BaseException] | tuple[type[BaseException], ...] = (),
        max_staleness: float = 0.25,
        store: Store | str | None = None,
        *,
        probe_ttl: float | None = None,
    ) -> None:
        self.name = check_name("name", name)
        #: The checked numbers of this breaker (``policy.settings.BreakerConfig``).
        self.config = BreakerConfig(
            failure_threshold, reset_timeout, half_open_max_calls, max_staleness
        )
        self.failure_threshold: int = self.config.failure_threshold
        self.reset_timeout: float = self.config.reset_timeout
        self.half_open_max_calls: int = self.config.half_open_max_calls
        self.max_staleness: float = self.config.max_staleness
        if isinstance(exclude, type):
            exclude = (exclude,)
        if not all(isinstance(e, type) and issubclass(e, BaseException) for e in exclude):
            raise ConfigError("exclude", exclude, "exception classes")
        self.exclude: tuple[type[BaseException], ...] = tuple(exclude)
        if probe_ttl is None:
            probe_ttl = max(self.reset_timeout, MIN_PROBE_TTL)
        self.probe_ttl = check_seconds("probe_ttl", probe_ttl)
        if self.probe_ttl == 0:
            raise ConfigError("probe_ttl", probe_ttl, "a number of seconds > 0")
        self._store = StoreBinding(store)
        self._view = SharedView(self)
        self._admissions: contextvars.ContextVar[tuple[Admission, ...]] = contextvars.ContextVar(
            f"snakepit_breaker_{name}", default=()
        )

    # -- configuration ---------------------------------------------------------
    @property
    def store(self) -> Store:
        """The store holding this breaker (the process default when built with ``store=None``)."""
        return self._store.get()

    def __repr__(self) -> str:
        store = self._store.describe()
        return (
            f"CircuitBreaker({self.name!r}, failure_threshold={self.failure_threshold}, "
            f"reset_timeout={self.reset_timeout}, half_open_max_calls={self.half_open_max_calls}, "
            f"exclude={tuple(e.__name__ for e in self.exclude)!r}, "
            f"max_staleness={self.max_staleness}, store={store!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by configuration; a Store object travels as its URL and key prefix."""
        store = self._store.arg
        prefix = None
        if store is not None and not isinstance(store, str):
            store, prefix = store.url, getattr(store, "key_prefix", None)
        config = {
            "name": self.name,
            "failure_threshold": self.failure_threshold,
            "reset_timeout": self.reset_timeout,
            "half_open_max_calls": self.half_open_max_calls,
            "exclude": self.exclude,
            "max_staleness": self.max_staleness,
            "probe_ttl": self.probe_ttl,
        }
        return (_restore, (type(self), config, store, prefix))

    # -- calling through the breaker -------------------------------------------
    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Call ``fn`` through the breaker; raises ``CircuitOpenError`` when refused.

        When ``fn`` returns a generator, the call is admitted now and its
        outcome is that of the iteration (see ``__call__``).
        """
        admission = self._view.admit()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._view.failed(admission, exc)
            raise
        if isinstance(result, GeneratorType):
            return cast(R, self._iterate(admission, result))
        self._view.succeeded(admission)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``call`` for coroutine functions (admission itself is a quick synchronous step)."""
        admission = self._view.admit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._view.failed(admission, exc)
            raise
        self._view.succeeded(admission)
        return result

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorator form: ``@breaker`` wraps functions, coroutine and generator functions.

        A (sync or async) generator is admitted when its iteration starts and
        counted when it ends: exhausted or closed early by its consumer is a
        success, an exception raised out of it a failure.
        """
        if inspect.isgeneratorfunction(fn):
            return self._guard_generator(fn)
        if inspect.isasyncgenfunction(fn):
            return self._guard_async_generator(fn)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.acall(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper

    def _guard_generator(
        self, fn: Callable[P, Generator[Any, Any, R]]
    ) -> Callable[P, Generator[Any, Any, R]]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Generator[Any, Any, R]:
            return (yield from self._iterate(self._view.admit(), fn(*args, **kwargs)))

        return wrapper

    def _iterate(
        self, admission: Admission, inner: Generator[Any, Any, R]
    ) -> Generator[Any, Any, R]:
        """Delegate to ``inner`` (send, throw, close too) and record how its iteration ends."""
        try:
            result = yield from inner
        except GeneratorExit:
            self._view.succeeded(admission)  # the consumer stopped: the service answered
            raise
        except BaseException as exc:
            self._view.failed(admission, exc)
            raise
        self._view.succeeded(admission)
        return result

    def _guard_async_generator(
        self, fn: Callable[P, AsyncGenerator[Any, Any]]
    ) -> Callable[P, AsyncGenerator[Any, Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Any, Any]:
            admission = self._view.admit()
            inner = fn(*args, **kwargs)
            try:
                item = await anext(inner)
                while True:  # delegate like ``yield from``: asend, athrow and aclose reach inner
                    try:
                        sent = yield item
                    except GeneratorExit:
                        await inner.aclose()
                        raise
                    except BaseException as exc:
                        item = await inner.athrow(exc)
                    else:
                        item = await inner.asend(sent)
            except StopAsyncIteration:
                self._view.succeeded(admission)
            except GeneratorExit:
                self._view.succeeded(admission)
                raise
            except BaseException as exc:
                self._view.failed(admission, exc)
                raise

        return wrapper

    def __enter__(self) -> CircuitBreaker:
        admission = self._view.admit()
        self._admissions.set((*self._admissions.get(), admission))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = self._admissions.get()
        if not stack:
            return
        admission = stack[-1]
        self._admissions.set(stack[:-1])
        if exc is None:
            self._view.succeeded(admission)
        else:
            self._view.failed(admission, exc)

    # -- inspection (always reads the store, no side effect) --------------------
    @property
    def state(self) -> BreakerState:
        """Current state read from the store (``open`` past its timeout reads ``half_open``)."""
        return self.stats().state

    def stats(self) -> BreakerStats:
        """State and counters read from the store (this process's batched successes included)."""
        self._view.flush()
        snap = self._view.peek()
        judged, conflict = self.judged(snap.config)
        return BreakerStats(
            state=BreakerState(snap.state),
            failure_count=snap.failures,
            success_count=snap.successes,
            failure_threshold=int(judged["failure_threshold"]),
            half_open_calls=snap.half_open_calls,
            config_conflict=conflict,
        )

    def stored_config(self) -> dict[str, Any]:
        """The numbers this breaker stores with its state (the first stored wins)."""
        return {
            "failure_threshold": self.failure_threshold,
            "half_open_max_calls": self.half_open_max_calls,
            "reset_timeout": self.reset_timeout,
        }

    def judged(self, stored: Mapping[str, Any] | None) -> tuple[dict[str, Any], bool]:
        """The numbers the breaker is judged by (its ``stored`` ones, else this one's), and
        whether they differ from this process's (logged once per store and configuration)."""
        own = self.stored_config()
        judged = {key: (stored or {}).get(key, value) for key, value in own.items()}
        conflict = judged != own
        if conflict:
            warn_config_conflict("breaker", self.name, self.store, own, judged)
        return judged, conflict

    def allow_call(self) -> bool:
        """Whether a call made now would be admitted (reads the store, takes no probe slot)."""
        if is_testing():
            return True
        snap = self._view.peek()
        if snap.state == BreakerState.CLOSED:
            return True
        if snap.state == BreakerState.HALF_OPEN:
            return snap.half_open_calls < int(self.judged(snap.config)[0]["half_open_max_calls"])
        return False

    def retry_delay(self, exc: CircuitOpenError) -> float:
        """Seconds to wait before calling again after the refusal ``exc``.

        Its ``retry_after``, capped at ``reset_timeout`` when this breaker
        refused: a busy half-open probe answers with its lease (``probe_ttl``),
        but the breaker recovers as soon as that probe ends.
        """
        if exc.breaker == self.name:
            return min(exc.retry_after, self.reset_timeout)
        return exc.retry_after

    # -- manual control ---------------------------------------------------------
    def record_success(self) -> None:
        """Record the success of a call made outside the breaker (written through at once).

        It counts as a call admitted now: on a breaker whose reset timeout has
        passed it is the half-open probe, so it closes the breaker.
        """
        self._view.record_manual(success=True)

    def record_failure(self) -> None:
        """Record the failure of a call made outside the breaker; may open the breaker."""
        self._view.record_manual(success=False)

    def reset(self) -> None:
        """Close the breaker and forget its counters, for every process.

        Sends ``breaker_closed`` when the breaker was not closed: once cluster-wide
        however many processes reset it at the same time.
        """
        self._view.reset()

    def flush(self) -> None:
        """Write this process's batched successes to the store now."""
        self._view.flush()


def _restore(
    cls: type[CircuitBreaker], config: dict[str, Any], url: str | None, prefix: str | None
) -> CircuitBreaker:
    store: Store | str | None = url
    if url is not None and prefix is not None:
        store = store_from_url(url, key_prefix=prefix)
    return cls(**config, store=store)
