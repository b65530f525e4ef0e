"""A circuit breaker shared by every process that uses the same name and store.

State lives in the store (one Lua script per decision on Redis), so a fleet of
Celery workers trips, probes and recovers as one breaker. The hot path stays
cheap: while the breaker is closed a process trusts its own view of it for at
most ``max_staleness`` seconds and admits calls without a round trip;
failures are written through at once (so trips are exact and signalled once
cluster-wide), successes are counted locally and flushed in batches (with the
next store call, or by a background timer within 100 ms, or at exit).
Half-open admission always goes through the store, so the cluster-wide probe
limit holds exactly; a probe holds a lease that expires if its process dies.
"""

from __future__ import annotations

import atexit
import contextvars
import enum
import functools
import inspect
import logging
import multiprocessing.util
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast, overload

from snakepit_celery import signals
from snakepit_celery.errors import CircuitOpenError, ConfigError, StoreUnavailableError
from snakepit_celery.policy.checks import check_int, check_seconds
from snakepit_celery.store import StoreBinding, fail_open, report_store_error, store_from_url
from snakepit_celery.store.base import BreakerRecord, Store
from snakepit_celery.testing import is_testing

__all__ = ["BreakerState", "BreakerStats", "CircuitBreaker", "flush_all"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Longest time a batched success waits before the background flush writes it.
FLUSH_INTERVAL = 0.1
#: Shortest default lease of a half-open probe (``max(reset_timeout, this)``).
MIN_PROBE_TTL = 30.0
#: After a store error under fail-open, how long calls are admitted without asking again.
STORE_RETRY_INTERVAL = 1.0


class BreakerState(enum.StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A breaker's state and counters as read from the store."""

    state: BreakerState
    failure_count: int
    success_count: int
    failure_threshold: int
    half_open_calls: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain types; keys equal the field names."""
        return {
            "state": str(self.state),
            "failure_count": self.failure_count,
            "success_count": self.success_count,
            "failure_threshold": self.failure_threshold,
            "half_open_calls": self.half_open_calls,
        }


@dataclass(frozen=True, slots=True)
class _Admission:
    """One admitted call: ``probe`` is the half-open lease token, if any."""

    counted: bool
    probe: str | None = None


_UNCOUNTED = _Admission(counted=False)
_LOCAL = _Admission(counted=True)


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
        if not isinstance(name, str) or not name:
            raise ConfigError("name", name, "a non-empty string")
        self.name = name
        self.failure_threshold = check_int("failure_threshold", failure_threshold, minimum=1)
        self.reset_timeout = check_seconds("reset_timeout", reset_timeout)
        self.half_open_max_calls = check_int("half_open_max_calls", half_open_max_calls, minimum=1)
        if isinstance(exclude, type):
            exclude = (exclude,)
        if not all(isinstance(e, type) and issubclass(e, BaseException) for e in exclude):
            raise ConfigError("exclude", exclude, "exception classes")
        self.exclude: tuple[type[BaseException], ...] = tuple(exclude)
        self.max_staleness = check_seconds("max_staleness", max_staleness)
        if probe_ttl is None:
            probe_ttl = max(self.reset_timeout, MIN_PROBE_TTL)
        self.probe_ttl = check_seconds("probe_ttl", probe_ttl)
        if self.probe_ttl == 0:
            raise ConfigError("probe_ttl", probe_ttl, "a number of seconds > 0")
        self._store = StoreBinding(store)
        # Monotonic deadlines: known closed (admit without asking the store), known open
        # (refuse while the store cannot be asked), store failed (admit uncounted, unasked).
        self._view_until = 0.0
        self._open_until = 0.0
        self._blind_until = 0.0
        self._pending = 0
        self._lock = threading.Lock()
        self._admissions: contextvars.ContextVar[tuple[_Admission, ...]] = contextvars.ContextVar(
            f"snakepit_breaker_{name}", default=()
        )
        _BREAKERS.add(self)

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

        A generator function is guarded over its iteration (see ``__call__``).
        """
        if inspect.isgeneratorfunction(fn):
            return cast(R, self._guard_generator(fn)(*args, **kwargs))
        admission = self._admit()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            self._finish_error(admission, exc)
            raise
        self._finish_success(admission)
        return result

    async def acall(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """``call`` for coroutine functions (admission itself is a quick synchronous step)."""
        admission = self._admit()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self._finish_error(admission, exc)
            raise
        self._finish_success(admission)
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
            admission = self._admit()
            try:
                result = yield from fn(*args, **kwargs)
            except GeneratorExit:
                self._finish_success(admission)  # the consumer stopped: the service answered
                raise
            except BaseException as exc:
                self._finish_error(admission, exc)
                raise
            self._finish_success(admission)
            return result

        return wrapper

    def _guard_async_generator(
        self, fn: Callable[P, AsyncGenerator[Any, Any]]
    ) -> Callable[P, AsyncGenerator[Any, Any]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> AsyncGenerator[Any, Any]:
            admission = self._admit()
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
                self._finish_success(admission)
            except GeneratorExit:
                self._finish_success(admission)
                raise
            except BaseException as exc:
                self._finish_error(admission, exc)
                raise

        return wrapper

    def __enter__(self) -> CircuitBreaker:
        admission = self._admit()
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
            self._finish_success(admission)
        else:
            self._finish_error(admission, exc)

    # -- inspection (always reads the store, no side effect) --------------------
    @property
    def state(self) -> BreakerState:
        """Current state read from the store (``open`` past its timeout reads ``half_open``)."""
        return self.stats().state

    def stats(self) -> BreakerStats:
        """State and counters read from the store (this process's batched successes included)."""
        self.flush()
        try:
            snap = self.store.breaker_peek(self.name, reset_timeout=self.reset_timeout)
        except StoreUnavailableError as exc:
            known_open = self._store_down(exc)
            state = BreakerState.OPEN if known_open else BreakerState.CLOSED
            return BreakerStats(state, 0, 0, self.failure_threshold, 0)
        self._learn(snap.state, snap.retry_after)
        return BreakerStats(
            state=BreakerState(snap.state),
            failure_count=snap.failures,
            success_count=snap.successes,
            failure_threshold=self.failure_threshold,
            half_open_calls=snap.half_open_calls,
        )

    def allow_call(self) -> bool:
        """Whether a call made now would be admitted (reads the store, takes no probe slot)."""
        if is_testing():
            return True
        try:
            snap = self.store.breaker_peek(self.name, reset_timeout=self.reset_timeout)
        except StoreUnavailableError as exc:
            return not self._store_down(exc)
        self._learn(snap.state, snap.retry_after)
        if snap.state == BreakerState.CLOSED:
            return True
        if snap.state == BreakerState.HALF_OPEN:
            return snap.half_open_calls < self.half_open_max_calls
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
        self._record_manual(success=True)

    def record_failure(self) -> None:
        """Record the failure of a call made outside the breaker; may open the breaker."""
        self._record_manual(success=False)

    def reset(self) -> None:
        """Close the breaker and forget its counters, for every process.

        Sends ``breaker_closed`` when the breaker was not closed: once cluster-wide
        however many processes reset it at the same time.
        """
        with self._lock:
            self._pending = 0
        self._view_until = self._open_until = 0.0
        try:
            previous = self.store.breaker_reset(self.name)
        except StoreUnavailableError as exc:
            self._store_down(exc)
            return
        self._blind_until = 0.0
        if previous != BreakerState.CLOSED:
            signals.breaker_closed.send(sender=self, pool=self.name)

    def flush(self) -> None:
        """Write this process's batched successes to the store now."""
        with self._lock:
            count, self._pending = self._pending, 0
        if not count:
            return
        try:
            record = self.store.breaker_record(
                self.name, success=True, failure_threshold=self.failure_threshold, count=count
            )
        except StoreUnavailableError as exc:
            report_store_error(exc)
            return
        self._apply(record)

    # -- internals --------------------------------------------------------------
    def _admit(self) -> _Admission:
        if is_testing():
            return _UNCOUNTED
        now = time.monotonic()
        if self._view_until > now:
            return _LOCAL
        if self._blind_until > now:
            return self._admit_blind(now)
        return self._admit_from_store()

    def _admit_blind(self, now: float) -> _Admission:
        """The store cannot be asked: refuse while known open, else admit uncounted."""
        if self._open_until > now:
            raise CircuitOpenError(self.name, self._open_until - now)
        return _UNCOUNTED

    def _admit_from_store(self) -> _Admission:
        store = self.store
        with self._lock:
            count, self._pending = self._pending, 0
        try:
            if count:
                record = store.breaker_record(
                    self.name, success=True, failure_threshold=self.failure_threshold, count=count
                )
                self._apply(record)
                if record.state == BreakerState.CLOSED:
                    return _LOCAL  # the store just answered "closed": as fresh as an acquire
            decision = store.breaker_acquire(
                self.name,
                reset_timeout=self.reset_timeout,
                half_open_max_calls=self.half_open_max_calls,
                probe_ttl=self.probe_ttl,
            )
        except StoreUnavailableError as exc:
            self._store_down(exc)
            return self._admit_blind(time.monotonic())
        self._learn(decision.state, decision.retry_after)
        if decision.transition == BreakerState.HALF_OPEN:
            signals.breaker_half_open.send(sender=self, pool=self.name)
        if not decision.allowed:
            self._view_until = 0.0
            raise CircuitOpenError(self.name, decision.retry_after)
        if decision.probe is None and decision.state == BreakerState.CLOSED:
            self._refresh_view()
        else:
            self._view_until = 0.0
        return _Admission(counted=True, probe=decision.probe)

    def _record_manual(self, *, success: bool) -> None:
        if is_testing():
            return
        probe = None
        if self._view_until <= time.monotonic():
            try:
                probe = self._admit_from_store().probe
            except CircuitOpenError:
                probe = None
        self._record(success=success, probe=probe)

    def _finish_success(self, admission: _Admission) -> None:
        if not admission.counted:
            return
        if admission.probe is not None:
            self._record(success=True, probe=admission.probe)
            return
        with self._lock:
            self._pending += 1
            first = self._pending == 1
        if first:
            _FLUSHER.schedule(self)

    def _finish_error(self, admission: _Admission, exc: BaseException) -> None:
        if not admission.counted:
            return
        if isinstance(exc, self.exclude):
            # The service answered: a probe that got an excluded error proves recovery.
            if admission.probe is not None:
                self._record(success=True, probe=admission.probe, reraise=False)
            return
        if not isinstance(exc, Exception) and admission.probe is None:
            return  # KeyboardInterrupt, SystemExit, cancellation: not the service's fault
        self._record(success=False, probe=admission.probe, reraise=False)

    def _record(self, *, success: bool, probe: str | None, reraise: bool = True) -> None:
        """Write one outcome through to the store (batched successes go first, in order)."""
        store = self.store
        with self._lock:
            count, self._pending = self._pending, 0
        try:
            if count:
                self._apply(
                    store.breaker_record(
                        self.name,
                        success=True,
                        failure_threshold=self.failure_threshold,
                        count=count,
                    )
                )
            record = store.breaker_record(
                self.name, success=success, failure_threshold=self.failure_threshold, probe=probe
            )
        except StoreUnavailableError as exc:
            if reraise:
                self._store_down(exc)
            else:
                report_store_error(exc)
            return
        self._apply(record)

    def _apply(self, record: BreakerRecord) -> None:
        """Update the local view from a store answer and send the transition's signal."""
        self._learn(record.state, self.reset_timeout if record.transition == "opened" else None)
        if record.state == BreakerState.CLOSED:
            self._refresh_view()
        else:
            self._view_until = 0.0
        if record.transition == "opened":
            signals.breaker_opened.send(
                sender=self, failure_count=record.failures, pool=self.name, reason="failures"
            )
        elif record.transition == "closed":
            signals.breaker_closed.send(sender=self, pool=self.name)

    def _refresh_view(self) -> None:
        if self.max_staleness > 0:
            self._view_until = time.monotonic() + self.max_staleness

    def _learn(self, state: str, open_for: float | None) -> None:
        """Note a store answer: the state, and for how long it stays open if known."""
        self._blind_until = 0.0
        if state != BreakerState.OPEN:
            self._open_until = 0.0
        elif open_for is not None:
            self._open_until = time.monotonic() + open_for

    def _store_down(self, exc: StoreUnavailableError) -> bool:
        """A store call failed: stop asking for a while; True when known open (refuse then).

        Only an unknown state fails open (logged at most once a minute) or
        raises, per ``fail_open()``; a breaker this process knows to be open
        stays open until its reset timeout.
        """
        now = time.monotonic()
        self._blind_until = now + STORE_RETRY_INTERVAL
        known_open = self._open_until > now
        if not known_open and not fail_open():
            raise exc
        report_store_error(exc)
        return known_open

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pending = 0  # the parent flushes its own batch


def _restore(
    cls: type[CircuitBreaker], config: dict[str, Any], url: str | None, prefix: str | None
) -> CircuitBreaker:
    store: Store | str | None = url
    if url is not None and prefix is not None:
        store = store_from_url(url, key_prefix=prefix)
    return cls(**config, store=store)


class _Flusher:
    """One daemon thread per process writing batched successes every ``FLUSH_INTERVAL``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: set[CircuitBreaker] = set()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def schedule(self, breaker: CircuitBreaker) -> None:
        with self._lock:
            self._due.add(breaker)
            if self._thread is not None and self._pid == os.getpid():
                return
            if self._pid != os.getpid():
                self._pid = os.getpid()
                _register_exit_flush()
            self._thread = threading.Thread(
                target=self._run, name="snakepit-breaker-flush", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        idle = 0
        while True:
            time.sleep(FLUSH_INTERVAL)
            with self._lock:
                due, self._due = self._due, set()
                if not due:
                    idle += 1
                    if idle >= 10:
                        self._thread = None
                        return
                    continue
            idle = 0
            for breaker in due:
                try:
                    breaker.flush()
                except Exception:
                    logger.exception("breaker flush failed", extra={"breaker": breaker.name})

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._due = set()
        self._thread = None
        self._pid = 0


_BREAKERS: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()
_FLUSHER = _Flusher()


def flush_all() -> None:
    """Write every breaker's batched successes now (run at exit and by worker shutdown hooks)."""
    for breaker in list(_BREAKERS):
        try:
            breaker.flush()
        except Exception:
            logger.exception("breaker flush failed", extra={"breaker": breaker.name})


def _register_exit_flush() -> None:
    """Flush at exit of a multiprocessing/billiard child too (they leave through ``os._exit``)."""
    multiprocessing.util.Finalize(None, flush_all, exitpriority=100)
    billiard_util = sys.modules.get("billiard.util")
    if billiard_util is not None:
        cast(Any, billiard_util).Finalize(None, flush_all, exitpriority=100)


def _after_fork_in_child() -> None:
    _FLUSHER.after_fork()
    for breaker in list(_BREAKERS):
        breaker._after_fork()


atexit.register(flush_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
