"""Executor helpers, as specified in API.md "Executor".

Waits are bounded and tiny; assertions are on counts, order and values, never
on elapsed time.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest

from snakepit_celery import signals
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.errors import CircuitOpenError, ConfigError, RetryExhaustedError
from snakepit_celery.executor import (
    aexecute_async,
    aexecute_batch,
    aexecute_with_circuit_breaker,
    aexecute_with_protection,
    aexecute_with_retry,
    aexecute_with_timeout,
    execute_async,
    execute_batch,
    execute_with_circuit_breaker,
    execute_with_protection,
    execute_with_retry,
    execute_with_timeout,
)
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.testing import disabled, set_testing

T = TypeVar("T")

FAST = RetryPolicy(max_attempts=3, backoff=[0.001, 0.001, 0.001])
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


@pytest.fixture(autouse=True)
def _not_testing() -> Iterator[None]:
    set_testing(False)
    yield
    set_testing(False)


class Recorder:
    """Collects the retry signals sent during one test."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, dict[str, Any]]] = []

    def attempt(self, sender: Any, **kw: Any) -> None:
        self.events.append(("attempt", sender, kw))

    def success(self, sender: Any, **kw: Any) -> None:
        self.events.append(("success", sender, kw))

    def exhausted(self, sender: Any, **kw: Any) -> None:
        self.events.append(("exhausted", sender, kw))

    def names(self) -> list[str]:
        return [name for name, _, _ in self.events]

    def of(self, name: str) -> list[dict[str, Any]]:
        return [kw for event, _, kw in self.events if event == name]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    signals.retry_attempt.connect(rec.attempt, weak=False)
    signals.retry_success.connect(rec.success, weak=False)
    signals.retry_exhausted.connect(rec.exhausted, weak=False)
    yield rec
    signals.retry_attempt.disconnect(rec.attempt)
    signals.retry_success.disconnect(rec.success)
    signals.retry_exhausted.disconnect(rec.exhausted)


class Flaky:
    """Raises the given errors in turn, then returns ``value``."""

    def __init__(self, *errors: BaseException, value: Any = "ok") -> None:
        self.errors = list(errors)
        self.value = value
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


class AsyncFlaky(Flaky):
    async def run(self) -> Any:
        return self()


class StubBreaker:
    """A breaker refusing the first ``refusals`` calls with ``retry_after``."""

    def __init__(self, refusals: int, retry_after: float) -> None:
        self.refusals = refusals
        self.retry_after = retry_after
        self.refused = 0
        self.admitted = 0

    def _admit(self) -> None:
        if self.refused < self.refusals:
            self.refused += 1
            raise CircuitOpenError("stub", self.retry_after)
        self.admitted += 1

    def call(self, fn: Callable[[], T], /) -> T:
        self._admit()
        return fn()

    async def acall(self, fn: Callable[[], Awaitable[T]], /) -> T:
        self._admit()
        return await fn()


def memory_breaker(**kwargs: Any) -> CircuitBreaker:
    return CircuitBreaker(f"exec-{uuid.uuid4().hex[:8]}", store="memory://", **kwargs)


# -- execute_with_timeout ------------------------------------------------------------


def test_timeout_returns_the_result_when_fast_enough() -> None:
    assert execute_with_timeout(lambda: 42, timeout=5.0) == 42


def test_timeout_raises_timeout_error_when_too_slow_and_abandons_the_thread() -> None:
    release = threading.Event()
    finished = threading.Event()

    def slow() -> str:
        release.wait(5.0)
        finished.set()
        return "late"

    with pytest.raises(TimeoutError, match="abandoned"):
        execute_with_timeout(slow, timeout=0.01)
    release.set()
    assert finished.wait(5.0)  # the abandoned thread ran to its end


def test_timeout_re_raises_the_functions_own_error() -> None:
    with pytest.raises(KeyError, match="missing"):
        execute_with_timeout(Flaky(KeyError("missing")), timeout=5.0)


def test_timeout_re_raises_a_timeout_error_raised_by_the_function() -> None:
    with pytest.raises(TimeoutError, match="upstream"):
        execute_with_timeout(Flaky(TimeoutError("upstream")), timeout=5.0)


def test_timeout_runs_the_function_in_the_callers_context() -> None:
    token = request_id.set("r-1")
    try:
        assert execute_with_timeout(request_id.get, timeout=5.0) == "r-1"
    finally:
        request_id.reset(token)


@pytest.mark.parametrize("timeout", [-1, "5", None, float("nan")])
def test_timeout_must_be_a_non_negative_number(timeout: Any) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        execute_with_timeout(lambda: 1, timeout=timeout)


# -- execute_with_retry --------------------------------------------------------------


def test_retry_returns_at_once_when_the_first_attempt_succeeds(recorder: Recorder) -> None:
    fn = Flaky()
    assert execute_with_retry(fn, FAST) == "ok"
    assert fn.calls == 1
    assert recorder.names() == ["success"]
    assert recorder.of("success")[0]["attempts"] == 1


def test_retry_retries_retriable_errors_until_success(recorder: Recorder) -> None:
    fn = Flaky(TimeoutError(), ConnectionRefusedError())
    assert execute_with_retry(fn, FAST) == "ok"
    assert fn.calls == 3
    assert recorder.names() == ["attempt", "attempt", "success"]
    assert [kw["attempt"] for kw in recorder.of("attempt")] == [1, 2]
    assert [kw["delay"] for kw in recorder.of("attempt")] == [0.001, 0.001]
    success = recorder.of("success")[0]
    assert success["attempts"] == 3
    assert success["total_duration"] >= 0


def test_retry_signals_are_sent_by_the_policy(recorder: Recorder) -> None:
    execute_with_retry(Flaky(TimeoutError()), FAST)
    assert all(sender is FAST for _, sender, _ in recorder.events)


def test_retry_re_raises_a_non_retriable_error_after_one_call(recorder: Recorder) -> None:
    fn = Flaky(ValueError("bad input"))
    with pytest.raises(ValueError, match="bad input"):
        execute_with_retry(fn, FAST)
    assert fn.calls == 1
    assert recorder.names() == []


def test_retry_raises_retry_exhausted_when_attempts_run_out(recorder: Recorder) -> None:
    last = TimeoutError("third")
    fn = Flaky(TimeoutError("first"), TimeoutError("second"), last)
    with pytest.raises(RetryExhaustedError) as info:
        execute_with_retry(fn, FAST)
    assert fn.calls == 3
    assert info.value.attempts == 3
    assert info.value.last_error is last
    assert info.value.__cause__ is last
    assert recorder.names() == ["attempt", "attempt", "exhausted"]
    exhausted = recorder.of("exhausted")[0]
    assert exhausted["attempts"] == 3
    assert exhausted["last_error"] is last


def test_retry_with_one_attempt_never_retries() -> None:
    fn = Flaky(TimeoutError())
    with pytest.raises(RetryExhaustedError):
        execute_with_retry(fn, max_attempts=1)
    assert fn.calls == 1


def test_retry_builds_the_policy_from_keyword_arguments(recorder: Recorder) -> None:
    fn = Flaky(KeyError("k"))
    assert execute_with_retry(fn, max_attempts=2, backoff=[0.002], retriable_errors=[KeyError])
    assert recorder.of("attempt")[0]["delay"] == 0.002
    assert recorder.events[0][1] == RetryPolicy(
        max_attempts=2, backoff=[0.002], retriable_errors=[KeyError]
    )


def test_retry_keyword_arguments_override_the_policy() -> None:
    fn = Flaky(TimeoutError(), TimeoutError(), TimeoutError())
    assert execute_with_retry(fn, FAST, max_attempts=4) == "ok"
    assert fn.calls == 4


def test_retry_rejects_unknown_keyword_arguments_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="did you mean 'max_attempts'"):
        execute_with_retry(lambda: 1, max_atempts=3)


def test_retry_never_retries_keyboard_interrupt() -> None:
    fn = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        execute_with_retry(fn, FAST, retriable_errors="all")
    assert fn.calls == 1


def test_retry_waits_out_a_circuit_open_error_it_retries(recorder: Recorder) -> None:
    fn = Flaky(CircuitOpenError("inner", retry_after=0.004))
    execute_with_retry(fn, FAST, retriable_errors="all")
    assert recorder.of("attempt")[0]["delay"] == 0.004


def test_retry_sleeps_the_policy_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("snakepit_celery.executor.retrying.time.sleep", slept.append)
    execute_with_retry(Flaky(TimeoutError(), TimeoutError()), backoff=[1.5, 2.5])
    assert slept == [1.5, 2.5]


def test_testing_mode_makes_retries_instant(
    monkeypatch: pytest.MonkeyPatch, recorder: Recorder
) -> None:
    slept: list[float] = []
    monkeypatch.setattr("snakepit_celery.executor.retrying.time.sleep", slept.append)
    with disabled():
        execute_with_retry(Flaky(TimeoutError()), backoff=[60.0])
    assert slept == []
    assert recorder.of("attempt")[0]["delay"] == 0.0


# -- circuit breaker and protection -------------------------------------------------------


def test_circuit_breaker_helper_calls_through_the_breaker() -> None:
    breaker = memory_breaker(failure_threshold=1, reset_timeout=60.0)
    assert execute_with_circuit_breaker(breaker, lambda: 7) == 7
    with pytest.raises(TimeoutError):
        execute_with_circuit_breaker(breaker, Flaky(TimeoutError()))
    fn = Flaky()
    with pytest.raises(CircuitOpenError):
        execute_with_circuit_breaker(breaker, fn)
    assert fn.calls == 0


def test_protection_retries_a_refusal_no_sooner_than_retry_after(recorder: Recorder) -> None:
    breaker = StubBreaker(refusals=2, retry_after=0.003)
    fn = Flaky()
    assert execute_with_protection(breaker, fn, FAST) == "ok"
    assert (breaker.refused, breaker.admitted, fn.calls) == (2, 1, 1)
    assert [kw["delay"] for kw in recorder.of("attempt")] == [0.003, 0.003]


def test_protection_uses_the_backoff_when_longer_than_retry_after(recorder: Recorder) -> None:
    breaker = StubBreaker(refusals=1, retry_after=0.001)
    execute_with_protection(breaker, Flaky(), backoff=[0.005])
    assert recorder.of("attempt")[0]["delay"] == 0.005


def test_protection_retries_refusals_even_when_kinds_exclude_them() -> None:
    breaker = StubBreaker(refusals=1, retry_after=0.001)
    assert execute_with_protection(breaker, Flaky(), FAST, retriable_errors=()) == "ok"


def test_protection_gives_up_on_a_breaker_that_stays_open(recorder: Recorder) -> None:
    breaker = StubBreaker(refusals=10, retry_after=0.001)
    with pytest.raises(RetryExhaustedError) as info:
        execute_with_protection(breaker, Flaky(), FAST)
    assert isinstance(info.value.last_error, CircuitOpenError)
    assert breaker.refused == 3
    assert recorder.names() == ["attempt", "attempt", "exhausted"]


def test_protection_does_not_retry_non_retriable_errors() -> None:
    breaker = StubBreaker(refusals=0, retry_after=0.0)
    fn = Flaky(ValueError("bad"))
    with pytest.raises(ValueError, match="bad"):
        execute_with_protection(breaker, fn, FAST)
    assert fn.calls == 1


def test_protection_waits_out_a_real_open_breaker_then_probes() -> None:
    breaker = memory_breaker(failure_threshold=1, reset_timeout=0.02)
    fn = Flaky(TimeoutError("down"))
    policy = RetryPolicy(max_attempts=6, backoff=[0.001])
    assert execute_with_protection(breaker, fn, policy) == "ok"
    assert fn.calls == 2  # one failure opened it; the half-open probe succeeded
    assert breaker.state == "closed"


def test_protection_with_a_real_breaker_on_redis(redis_url: str, key_prefix: str) -> None:
    from snakepit_celery.store import store_from_url

    store = store_from_url(redis_url, key_prefix=key_prefix)
    breaker = CircuitBreaker("exec-redis", failure_threshold=1, reset_timeout=0.02, store=store)
    fn = Flaky(ConnectionRefusedError())
    assert execute_with_protection(breaker, fn, max_attempts=6, backoff=[0.001]) == "ok"
    assert fn.calls == 2


def _protect_sync(breaker: CircuitBreaker, fn: AsyncFlaky, policy: RetryPolicy) -> Any:
    return execute_with_protection(breaker, fn, policy)


def _protect_async(breaker: CircuitBreaker, fn: AsyncFlaky, policy: RetryPolicy) -> Any:
    return asyncio.run(aexecute_with_protection(breaker, fn.run, policy))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("protect", [_protect_sync, _protect_async], ids=["sync", "async"])
def test_protection_waits_for_a_busy_probe_no_longer_than_reset_timeout(
    recorder: Recorder,
    redis_url: str,
    key_prefix: str,
    protect: Callable[[CircuitBreaker, AsyncFlaky, RetryPolicy], Any],
) -> None:
    from snakepit_celery.store import store_from_url

    def breaker() -> CircuitBreaker:  # the default probe lease is 30 s
        store = store_from_url(redis_url, key_prefix=key_prefix)
        return CircuitBreaker("busy-probe", failure_threshold=1, reset_timeout=0.05, store=store)

    mine, prober = breaker(), breaker()
    mine.record_failure()
    release = threading.Event()
    probing = threading.Event()

    def probe() -> None:
        with prober:  # admitted as the half-open probe; ends when the caller is refused
            probing.set()
            release.wait(10.0)

    while mine.state != "half_open":
        threading.Event().wait(0.01)
    thread = threading.Thread(target=probe)
    thread.start()
    assert probing.wait(5.0)

    def end_probe(sender: Any, **kw: Any) -> None:
        release.set()

    signals.retry_attempt.connect(end_probe, weak=False)
    fn = AsyncFlaky()
    try:
        assert protect(mine, fn, RetryPolicy(max_attempts=50, backoff=[0.001])) == "ok"
    finally:
        signals.retry_attempt.disconnect(end_probe)
        release.set()
        thread.join(10.0)
    delays = [kw["delay"] for kw in recorder.of("attempt")]
    assert delays and max(delays) == 0.05
    assert fn.calls == 1


# -- execute_batch --------------------------------------------------------------------


def test_batch_keeps_input_order() -> None:
    gates = [threading.Event() for _ in range(3)]

    def item(i: int) -> Callable[[], int]:
        def run() -> int:
            if i < 2:
                gates[i + 1].wait(5.0)  # item 0 finishes after 1, 1 after 2
            gates[i].set()
            return i * 10

        return run

    assert execute_batch([item(i) for i in range(3)], timeout=10.0) == [0, 10, 20]


def test_batch_returns_exception_instances_for_failed_items() -> None:
    error = KeyError("x")
    results = execute_batch([lambda: 1, Flaky(error), lambda: 3], timeout=10.0)
    assert results[0] == 1
    assert results[1] is error
    assert results[2] == 3


def test_batch_marks_unfinished_items_with_timeout_error_instances() -> None:
    release = threading.Event()
    try:
        results = execute_batch([lambda: "fast", lambda: release.wait(5.0)], timeout=0.05)
    finally:
        release.set()
    assert results[0] == "fast"
    assert isinstance(results[1], TimeoutError)


def test_batch_runs_at_most_max_concurrency_items_at_once() -> None:
    lock = threading.Lock()
    running = 0
    peak = 0

    def item() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        threading.Event().wait(0.005)
        with lock:
            running -= 1

    results = execute_batch([item] * 8, timeout=10.0, max_concurrency=2)
    assert results == [None] * 8
    assert peak <= 2


def test_batch_with_concurrency_one_runs_in_input_order() -> None:
    order: list[int] = []

    def item(i: int) -> Callable[[], None]:
        return lambda: order.append(i)

    execute_batch([item(i) for i in range(5)], max_concurrency=1)
    assert order == [0, 1, 2, 3, 4]


def test_batch_items_not_started_by_the_timeout_never_start() -> None:
    release = threading.Event()
    started: list[int] = []

    def blocker() -> None:
        started.append(0)
        release.wait(5.0)

    try:
        results = execute_batch(
            [blocker, lambda: started.append(1)], timeout=0.02, max_concurrency=1
        )
    finally:
        release.set()
    assert all(isinstance(r, TimeoutError) for r in results)
    assert started == [0]


def test_batch_of_nothing_is_empty() -> None:
    assert execute_batch([]) == []


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_batch_max_concurrency_must_be_a_positive_integer(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_concurrency"):
        execute_batch([lambda: 1], max_concurrency=value)


# -- execute_async -----------------------------------------------------------------------


def test_async_returns_a_future_with_the_result() -> None:
    future = execute_async(lambda: "done")
    assert isinstance(future, Future)
    assert future.result(timeout=5.0) == "done"


def test_async_future_carries_the_exception() -> None:
    future = execute_async(Flaky(KeyError("k")))
    assert isinstance(future.exception(timeout=5.0), KeyError)


# -- asyncio twins ---------------------------------------------------------------------


def test_aexecute_with_timeout_returns_or_cancels() -> None:
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(5.0)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def fast() -> int:
        return 5

    async def main() -> None:
        assert await aexecute_with_timeout(fast, timeout=5.0) == 5
        with pytest.raises(TimeoutError):
            await aexecute_with_timeout(slow, timeout=0.01)
        assert cancelled.is_set()

    asyncio.run(main())


def test_aexecute_with_retry_retries_then_succeeds(recorder: Recorder) -> None:
    fn = AsyncFlaky(TimeoutError(), value="async-ok")
    assert asyncio.run(aexecute_with_retry(fn.run, FAST)) == "async-ok"
    assert fn.calls == 2
    assert recorder.names() == ["attempt", "success"]


def test_aexecute_with_retry_exhausts(recorder: Recorder) -> None:
    fn = AsyncFlaky(TimeoutError(), TimeoutError())
    with pytest.raises(RetryExhaustedError) as info:
        asyncio.run(aexecute_with_retry(fn.run, max_attempts=2, backoff=[0.001]))
    assert info.value.attempts == 2
    assert recorder.names() == ["attempt", "exhausted"]


def test_aexecute_with_retry_re_raises_non_retriable() -> None:
    fn = AsyncFlaky(ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        asyncio.run(aexecute_with_retry(fn.run, FAST))
    assert fn.calls == 1


def test_aexecute_with_circuit_breaker_uses_the_breaker() -> None:
    breaker = memory_breaker(failure_threshold=1, reset_timeout=60.0)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await aexecute_with_circuit_breaker(breaker, AsyncFlaky(TimeoutError()).run)
        fn = AsyncFlaky()
        with pytest.raises(CircuitOpenError):
            await aexecute_with_circuit_breaker(breaker, fn.run)
        assert fn.calls == 0

    asyncio.run(main())


def test_aexecute_with_protection_waits_out_refusals(recorder: Recorder) -> None:
    breaker = StubBreaker(refusals=1, retry_after=0.003)
    fn = AsyncFlaky()
    assert asyncio.run(aexecute_with_protection(breaker, fn.run, FAST)) == "ok"
    assert (breaker.refused, fn.calls) == (1, 1)
    assert recorder.of("attempt")[0]["delay"] == 0.003


def test_aexecute_with_protection_on_a_real_breaker() -> None:
    breaker = memory_breaker(failure_threshold=1, reset_timeout=0.02)
    fn = AsyncFlaky(TimeoutError())
    result = asyncio.run(aexecute_with_protection(breaker, fn.run, max_attempts=6, backoff=[0.001]))
    assert result == "ok"
    assert fn.calls == 2


def test_aexecute_batch_orders_results_and_reports_errors_and_timeouts() -> None:
    async def value(v: int) -> int:
        await asyncio.sleep(0.001 * (3 - v))
        return v

    async def fail() -> None:
        raise KeyError("k")

    async def hang() -> None:
        await asyncio.sleep(5.0)

    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: value(1),
        fail,
        lambda: value(2),
        hang,
    ]
    results = asyncio.run(aexecute_batch(calls, timeout=0.2))
    assert results[0] == 1
    assert isinstance(results[1], KeyError)
    assert results[2] == 2
    assert isinstance(results[3], TimeoutError)


def test_aexecute_batch_respects_max_concurrency() -> None:
    running = 0
    peak = 0

    async def item() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    results = asyncio.run(aexecute_batch([item] * 6, max_concurrency=2))
    assert results == [None] * 6
    assert peak == 2


def test_aexecute_async_returns_a_task() -> None:
    async def work() -> str:
        return "t"

    async def main() -> str:
        task = aexecute_async(work)
        assert isinstance(task, asyncio.Task)
        return await task

    assert asyncio.run(main()) == "t"
