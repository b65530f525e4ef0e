"""Generator functions behind a breaker: the outcome of the iteration is what counts.

A generator function returns at once; its body runs while it is iterated. The
breaker admits the call when the iteration starts and records its end:
exhausted (or closed early by the consumer) is a success, an exception
raised out of it a failure. On MemoryStore and on real Redis.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Generator
from typing import Any

import pytest

from snakepit_celery.breaker import BreakerState, CircuitBreaker
from snakepit_celery.errors import CircuitOpenError
from snakepit_celery.store import Store
from snakepit_celery.testing import wait_until
from tests.support.breakers import record_signals


class ServiceDownError(Exception):
    """The failure the protected generator raises."""


@pytest.fixture
def breaker(each_store: Store, key_prefix: str) -> CircuitBreaker:
    return CircuitBreaker(
        f"gen-{key_prefix}", failure_threshold=1, reset_timeout=0.2, store=each_store
    )


def half_open(breaker: CircuitBreaker) -> CircuitBreaker:
    breaker.record_failure()
    assert wait_until(lambda: breaker.state == BreakerState.HALF_OPEN, timeout=5.0)
    return breaker


def test_a_failing_generator_reopens_a_half_open_breaker(breaker: CircuitBreaker) -> None:
    @breaker
    def rows() -> Generator[int]:
        raise ServiceDownError("still down")
        yield 1

    half_open(breaker)
    with record_signals(breaker.name) as log:
        stream = rows()
        with pytest.raises(ServiceDownError):
            next(stream)
    assert breaker.state == BreakerState.OPEN
    assert log.names() == ["half_open", "opened"]


def test_a_failure_midway_through_the_iteration_counts(breaker: CircuitBreaker) -> None:
    @breaker
    def rows() -> Generator[int]:
        yield 1
        raise ServiceDownError("connection lost")

    half_open(breaker)
    with pytest.raises(ServiceDownError):
        list(rows())
    assert breaker.state == BreakerState.OPEN


def test_an_exhausted_generator_is_a_success_and_keeps_its_values(
    breaker: CircuitBreaker,
) -> None:
    @breaker
    def echo() -> Generator[int, int, str]:
        got = yield 1
        yield got * 10
        return "done"

    half_open(breaker)
    stream = echo()
    assert next(stream) == 1
    assert breaker.stats().half_open_calls == 1  # admitted as the probe, still running
    assert stream.send(4) == 40
    with pytest.raises(StopIteration) as end:
        next(stream)
    assert end.value.value == "done"
    assert breaker.state == BreakerState.CLOSED


def test_a_generator_closed_early_by_its_consumer_is_a_success(breaker: CircuitBreaker) -> None:
    closed = []

    @breaker
    def endless() -> Generator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.append(True)

    half_open(breaker)
    stream = endless()
    assert next(stream) == 1
    stream.close()
    assert closed == [True]
    assert breaker.state == BreakerState.CLOSED


def test_an_open_breaker_refuses_when_the_iteration_starts(breaker: CircuitBreaker) -> None:
    ran = []

    @breaker
    def rows() -> Generator[int]:
        ran.append(True)
        yield 1

    breaker.record_failure()
    stream = rows()
    with pytest.raises(CircuitOpenError):
        next(stream)
    assert ran == []


def test_call_with_a_generator_function_counts_the_iteration(breaker: CircuitBreaker) -> None:
    def rows() -> Generator[int]:
        raise ServiceDownError("down")
        yield 1

    half_open(breaker)
    with pytest.raises(ServiceDownError):
        list(breaker.call(rows))
    assert breaker.state == BreakerState.OPEN


def test_call_with_a_partial_returning_a_generator_counts_the_iteration(
    breaker: CircuitBreaker,
) -> None:
    def rows(limit: int) -> Generator[int]:
        yield from range(limit)
        raise ServiceDownError("down")

    half_open(breaker)
    stream = breaker.call(functools.partial(rows, 2))
    assert breaker.stats().half_open_calls == 1  # admitted at the call
    with pytest.raises(ServiceDownError):
        list(stream)
    assert breaker.state == BreakerState.OPEN


# -- async generators ---------------------------------------------------------------------


def test_a_failing_async_generator_reopens_a_half_open_breaker(breaker: CircuitBreaker) -> None:
    @breaker
    async def rows() -> AsyncGenerator[int]:
        await asyncio.sleep(0)
        raise ServiceDownError("still down")
        yield 1

    async def consume() -> list[int]:
        return [row async for row in rows()]

    half_open(breaker)
    with pytest.raises(ServiceDownError):
        asyncio.run(consume())
    assert breaker.state == BreakerState.OPEN


def test_an_exhausted_async_generator_is_a_success_and_passes_asend_and_athrow(
    breaker: CircuitBreaker,
) -> None:
    seen: list[Any] = []

    @breaker
    async def echo() -> AsyncGenerator[int, int]:
        got = yield 1
        seen.append(got)
        try:
            yield 2
        except KeyError as exc:
            seen.append(exc)
            yield 3

    async def consume() -> list[int]:
        stream = echo()
        items = [await anext(stream), await stream.asend(5), await stream.athrow(KeyError("k"))]
        with pytest.raises(StopAsyncIteration):
            await anext(stream)
        return items

    half_open(breaker)
    assert asyncio.run(consume()) == [1, 2, 3]
    assert seen[0] == 5
    assert isinstance(seen[1], KeyError)
    assert breaker.state == BreakerState.CLOSED


def test_an_async_generator_closed_early_is_a_success(breaker: CircuitBreaker) -> None:
    closed = []

    @breaker
    async def endless() -> AsyncGenerator[int]:
        try:
            while True:
                yield 1
        finally:
            closed.append(True)

    async def consume() -> None:
        stream = endless()
        assert await anext(stream) == 1
        await stream.aclose()

    half_open(breaker)
    asyncio.run(consume())
    assert closed == [True]
    assert breaker.state == BreakerState.CLOSED
