"""Redis restarted under a running fleet: nothing wedges, state stays consistent.

A private ``redis-server`` (``EmbeddedRedis``) is the store, and in one test
the broker too; it is stopped and started again mid-run. With
``snakepit_fail_open`` (the default) breakers and tasks keep running while it
is down, store calls fail fast instead of hanging, and afterwards every
process agrees on the breaker's state: the one saved with the data, or a
fresh closed breaker when the data is gone.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery.breaker import BreakerState, CircuitBreaker
from snakepit_celery.breaker.shared import STORE_RETRY_INTERVAL
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.store import fail_open, set_fail_open, store_from_url
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.redis_server import EmbeddedRedis
from tests.support.chaos import ChaosFleet, chaos_conf

THRESHOLD = 5
#: The default ``max_staleness`` of breakers (s): how long a child may trust "closed".
MAX_STALENESS = 0.25
CALLS_WHILE_DOWN = 20
BARRIER: dict[str, Any] = {"enabled": True, "max_restarts": 1, "backoff": [0.05]}


def _breaker(server: EmbeddedRedis, name: str, **kwargs: Any) -> CircuitBreaker:
    store = store_from_url(server.url, key_prefix="restart")
    return CircuitBreaker(
        name, failure_threshold=THRESHOLD, reset_timeout=60.0, store=store, **kwargs
    )


def _fail(breaker: CircuitBreaker, times: int) -> None:
    def down() -> None:
        raise ConnectionError("downstream is down")

    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(down)


# -- in one process ---------------------------------------------------------------------


@pytest.mark.usefixtures("open_failing")
@pytest.mark.timeout(30)
def test_breaker_admits_calls_while_store_is_down(private_redis: EmbeddedRedis) -> None:
    breaker = _breaker(private_redis, "down", max_staleness=0)
    assert breaker.call(lambda: "up") == "up"
    private_redis.stop(keep_data=True)
    results = [breaker.call(int, i) for i in range(CALLS_WHILE_DOWN)]
    assert results == list(range(CALLS_WHILE_DOWN))


@pytest.mark.usefixtures("open_failing")
@pytest.mark.timeout(30)
def test_function_errors_pass_through_unchanged_while_store_is_down(
    private_redis: EmbeddedRedis,
) -> None:
    breaker = _breaker(private_redis, "down-errors", max_staleness=0)
    private_redis.stop(keep_data=True)
    _fail(breaker, THRESHOLD + 2)


@pytest.mark.timeout(30)
def test_without_fail_open_a_down_store_raises_store_unavailable(
    private_redis: EmbeddedRedis,
) -> None:
    previous = fail_open()
    set_fail_open(False)
    try:
        breaker = _breaker(private_redis, "strict", max_staleness=0)
        private_redis.stop(keep_data=True)
        with pytest.raises(StoreUnavailableError):
            breaker.call(lambda: None)
    finally:
        set_fail_open(previous)


@pytest.mark.usefixtures("open_failing")
@pytest.mark.timeout(30)
def test_open_breaker_is_still_open_for_every_process_after_restart_with_data(
    private_redis: EmbeddedRedis,
) -> None:
    first = _breaker(private_redis, "kept")
    _fail(first, THRESHOLD)
    assert first.state == BreakerState.OPEN
    private_redis.stop(keep_data=True)
    private_redis.start()
    second = _breaker(private_redis, "kept")
    assert first.state == second.state == BreakerState.OPEN
    assert first.stats().failure_count == second.stats().failure_count == THRESHOLD
    assert not first.allow_call()
    assert not second.allow_call()


@pytest.mark.usefixtures("open_failing")
@pytest.mark.timeout(30)
def test_breaker_starts_closed_and_counts_from_zero_after_restart_without_data(
    private_redis: EmbeddedRedis,
) -> None:
    first = _breaker(private_redis, "lost")
    _fail(first, THRESHOLD)
    assert first.state == BreakerState.OPEN
    private_redis.stop()
    private_redis.start()
    second = _breaker(private_redis, "lost")
    assert first.state == second.state == BreakerState.CLOSED
    _fail(second, THRESHOLD - 1)
    assert first.stats().failure_count == THRESHOLD - 1
    _fail(first, 1)
    assert second.state == BreakerState.OPEN


# -- real worker nodes ------------------------------------------------------------------


@pytest.fixture
def fleet_with_private_store(
    redis_base_url: str, private_redis: EmbeddedRedis
) -> Iterator[ChaosFleet]:
    """One node; broker and results on the shared Redis, the store on the private one."""
    redis_url = f"{redis_base_url}/{1 + os.getpid() % 14}"
    key_prefix = f"sprestart-{uuid.uuid4().hex[:10]}"
    conf = chaos_conf(
        redis_url, key_prefix, BARRIER, extra={"snakepit_store_url": f"{private_redis.url}/0"}
    )
    fleet = ChaosFleet(redis_url, key_prefix, conf)
    try:
        fleet.start_all(1)
        yield fleet
    finally:
        fleet.close()


def _outcome(fleet: ChaosFleet, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        meta = fleet.states([task_id])[task_id]
        return meta if meta and meta["status"] in ("SUCCESS", "FAILURE", "RETRY") else None

    return wait_until(final, timeout, what=f"task {task_id} to get a state")


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_tasks_run_while_the_store_is_down_and_share_the_breaker_after_restart(
    fleet_with_private_store: ChaosFleet, private_redis: EmbeddedRedis
) -> None:
    fleet = fleet_with_private_store
    assert _outcome(fleet, fleet.send("chaos.guarded", False))["status"] == "SUCCESS"

    private_redis.stop(keep_data=True)
    while_down = [fleet.send("chaos.guarded", False) for _ in range(5)]
    failing = fleet.send("chaos.guarded", True)
    assert [_outcome(fleet, t)["status"] for t in while_down] == ["SUCCESS"] * 5
    failed = _outcome(fleet, failing)
    assert failed["status"] == "FAILURE"
    assert failed["result"]["exc_type"] == "ConnectionError"

    private_redis.start()
    # A process that saw the store down admits calls uncounted for STORE_RETRY_INTERVAL.
    time.sleep(STORE_RETRY_INTERVAL + 0.2)
    for task_id in [fleet.send("chaos.guarded", True) for _ in range(THRESHOLD)]:
        assert _outcome(fleet, task_id)["status"] == "FAILURE"
    watcher = CircuitBreaker(
        "chaos-guarded", store=store_from_url(f"{private_redis.url}/0", key_prefix=fleet.key_prefix)
    )
    assert watcher.state == BreakerState.OPEN
    time.sleep(2 * MAX_STALENESS)  # every pool child's local view of "closed" has expired
    deferred = fleet.send("chaos.guarded", False)
    assert _outcome(fleet, deferred)["status"] == "RETRY"
    assert fleet.executions()[deferred] == 0


@pytest.fixture
def fleet_on_private_redis(private_redis: EmbeddedRedis) -> Iterator[ChaosFleet]:
    """One node whose broker, result backend and store are all the private Redis."""
    fleet = ChaosFleet.create(private_redis.url, "sprestart", BARRIER, db=0)
    try:
        fleet.start_all(1)
        yield fleet
    finally:
        fleet.close()


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_worker_reconnects_to_a_restarted_broker_without_being_restarted(
    fleet_on_private_redis: ChaosFleet, private_redis: EmbeddedRedis
) -> None:
    fleet = fleet_on_private_redis
    (node,) = fleet.alive()
    assert _outcome(fleet, fleet.send("chaos.once", 0.01))["status"] == "SUCCESS"
    private_redis.stop(keep_data=True)
    private_redis.start()
    task_id = fleet.send("chaos.guarded", False)
    assert _outcome(fleet, task_id, timeout=90)["status"] == "SUCCESS"
    assert fleet.alive() == [node]
    assert node.process is not None and node.process.poll() is None
