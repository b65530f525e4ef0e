"""A store outage under a breaker (a private redis-server stopped mid-run).

Only an unknown state fails open: a breaker this process knows to be open
stays open locally until its reset timeout, and calls admitted while the
store could not be asked are never written as successes once it is back.
"""

from __future__ import annotations

from typing import Any

import pytest

from snakepit_celery.breaker import BreakerState, CircuitBreaker, shared
from snakepit_celery.errors import CircuitOpenError
from snakepit_celery.store import store_from_url
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.redis_server import EmbeddedRedis

pytestmark = [pytest.mark.usefixtures("open_failing"), pytest.mark.timeout(60)]


class ServiceDownError(Exception):
    """The failure the protected function raises."""


def _breaker(server: EmbeddedRedis, **kwargs: Any) -> CircuitBreaker:
    kwargs.setdefault("failure_threshold", 2)
    kwargs.setdefault("reset_timeout", 60.0)
    store = store_from_url(server.url, key_prefix="outage")
    return CircuitBreaker("outage", store=store, max_staleness=0, **kwargs)


def _trip(breaker: CircuitBreaker) -> None:
    def down() -> None:
        raise ServiceDownError("down")

    for _ in range(breaker.failure_threshold):
        with pytest.raises(ServiceDownError):
            breaker.call(down)
    assert breaker.state == BreakerState.OPEN


def _admitted(breaker: CircuitBreaker) -> bool:
    try:
        return breaker.call(lambda: True)
    except CircuitOpenError:
        return False


def test_a_breaker_this_process_opened_stays_open_while_the_store_is_down(
    private_redis: EmbeddedRedis,
) -> None:
    breaker = _breaker(private_redis)
    _trip(breaker)
    private_redis.stop()
    called = []
    with pytest.raises(CircuitOpenError) as refused:
        breaker.call(lambda: called.append(1))
    assert called == []
    assert 0 < refused.value.retry_after <= 60.0
    assert breaker.allow_call() is False
    assert breaker.state == BreakerState.OPEN


def test_a_refusal_teaches_a_process_that_the_breaker_is_open(
    private_redis: EmbeddedRedis,
) -> None:
    _trip(_breaker(private_redis))
    other = _breaker(private_redis)
    assert not _admitted(other)
    private_redis.stop()
    with pytest.raises(CircuitOpenError):
        other.call(pytest.fail)


def test_a_breaker_whose_state_is_unknown_fails_open(private_redis: EmbeddedRedis) -> None:
    _trip(_breaker(private_redis))
    stranger = _breaker(private_redis)  # never heard from the store
    private_redis.stop()
    assert stranger.call(lambda: "ran") == "ran"


def test_known_open_ends_at_the_reset_timeout(private_redis: EmbeddedRedis) -> None:
    breaker = _breaker(private_redis, reset_timeout=0.5)
    _trip(breaker)
    private_redis.stop()
    assert not _admitted(breaker)
    assert wait_until(lambda: _admitted(breaker), timeout=10.0)


def test_calls_admitted_while_the_store_was_down_are_never_recorded(
    private_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shared, "STORE_RETRY_INTERVAL", 30.0)  # outlives the restart
    blind = _breaker(private_redis, failure_threshold=1, reset_timeout=0.3)
    assert blind.call(lambda: "up") == "up"
    blind.flush()
    private_redis.stop(keep_data=True)
    assert blind.call(lambda: "down") == "down"  # unknown state: fails open
    private_redis.start()
    watcher = _breaker(private_redis, failure_threshold=1, reset_timeout=0.3)
    watcher.record_failure()  # another process opens it; the service is down
    assert wait_until(lambda: watcher.state == BreakerState.HALF_OPEN, timeout=10.0)
    for _ in range(5):
        blind.call(lambda: None)  # still not asking the store: uncounted
    blind.flush()
    stats = watcher.stats()
    assert (stats.state, stats.success_count) == (BreakerState.HALF_OPEN, 1)
