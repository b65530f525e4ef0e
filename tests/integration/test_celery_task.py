"""@snakepit_task in real prefork workers: retries through Celery, final states, the breaker.

Every test starts its own worker node(s) (``tests/support/harness.py``) on the
shared Redis, under a key prefix of its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.errors import RetryExhaustedError
from snakepit_celery.store import store_from_url
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.monitor import CommandLog
from tests.support.harness import Harness, StateLog, harness_fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CRASH_BARRIER_ON = {"snakepit_crash_barrier": {"enabled": True}}


@pytest.fixture
def harness(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Harness]:
    yield from harness_fixture(redis_url, key_prefix, tmp_path)


def test_flaky_task_retries_twice_through_celery_then_succeeds(harness: Harness) -> None:
    harness.worker("flaky")
    result = harness.client.send_task(
        "spt.flaky", args=(harness.key("runs"), 2, harness.key("log")), task_id="flaky-1"
    )
    states = StateLog(harness, result.id)
    try:
        assert result.get(timeout=30) == 3
        wait_until(lambda: "SUCCESS" in states.states, 5, what="SUCCESS published")
    finally:
        states.close()
    assert [s for s in states.states if s in ("RETRY", "SUCCESS")] == ["RETRY", "RETRY", "SUCCESS"]
    assert harness.redis.lrange(harness.key("log"), 0, -1) == [b"0", b"1", b"2"]


def test_exhausted_retries_end_failure_with_retry_exhausted_error(harness: Harness) -> None:
    harness.worker("exhausted")
    result = harness.send("unavailable", harness.key("runs"))
    harness.wait_state(result, {"FAILURE"})
    assert isinstance(result.result, RetryExhaustedError)
    assert result.result.attempts == 3
    assert "ConnectionError" in str(result.result.last_error)
    assert harness.count("runs") == 3


def test_non_retriable_error_fails_once_with_the_same_exception(harness: Harness) -> None:
    harness.worker("nonretriable")
    result = harness.send("bad_input", harness.key("runs"))
    harness.wait_state(result, {"FAILURE"})
    assert type(result.result) is ValueError
    assert str(result.result) == "bad input: 42"
    assert harness.count("runs") == 1


def test_shared_breaker_opens_over_two_nodes_defers_then_closes_on_recovery(
    harness: Harness,
) -> None:
    breaker_conf = {
        "snakepit_breaker": {"failure_threshold": 5, "reset_timeout": 2.0, "max_staleness": 0.2}
    }
    harness.worker("left", conf=breaker_conf, queues="celery,left")
    harness.worker("right", conf=breaker_conf, queues="celery,right")
    flag, runs, nodes = harness.key("flag"), harness.key("runs"), harness.key("nodes")
    harness.redis.set(flag, "down")
    failing = [
        harness.send("downstream", flag, runs, nodes, queue="left" if i % 2 else "right")
        for i in range(5)
    ]
    for result in failing:
        harness.wait_state(result, {"FAILURE"})
        assert isinstance(result.result, ConnectionError)
    assert len(harness.redis.smembers(nodes)) == 2
    store = store_from_url(harness.redis_url, key_prefix=harness.key_prefix)
    breaker = CircuitBreaker("downstream", reset_timeout=2.0, store=store)
    assert breaker.state == "open"
    time.sleep(0.3)  # every process's local view of the closed breaker is now stale

    deferred = [harness.send("downstream", flag, runs, nodes) for _ in range(3)]
    for result in deferred:
        assert harness.wait_state(result, {"RETRY", "SUCCESS", "FAILURE"}) == "RETRY"
    assert harness.count("runs") == 5
    harness.redis.set(flag, "up")
    for result in deferred:
        assert result.get(timeout=30) == "ok"
    assert breaker.state == "closed"
    assert harness.count("runs") == 8


def test_first_delivery_costs_no_store_round_trip(harness: Harness) -> None:
    harness.worker("hotpath", conf=CRASH_BARRIER_ON)
    names = ("noop", "noop_idempotent", "plain_noop")
    for name in names:  # warm up: imports, connections, script loading
        harness.send(name).get(timeout=30)
    db = harness.redis.connection_pool.connection_kwargs.get("db", 0)
    monitor = CommandLog(harness.redis_url, int(db))
    try:
        results = [harness.send(name) for _ in range(10) for name in names]
        for result in results:
            result.get(timeout=30)
    finally:
        monitor.close()
    assert monitor.matching(f"{harness.key_prefix}:celery-task-meta-"), "MONITOR saw nothing"
    store_commands = [
        command
        for command in monitor.matching(f"{harness.key_prefix}:{{")
        if "{nodes" not in command and "{taint:" not in command
    ]
    assert store_commands == []


def test_breaker_successes_are_batched_not_one_round_trip_per_task(harness: Harness) -> None:
    harness.worker("batched")
    harness.send("noop_breaker").get(timeout=30)
    db = harness.redis.connection_pool.connection_kwargs.get("db", 0)
    monitor = CommandLog(harness.redis_url, int(db))
    try:
        results = [harness.send("noop_breaker") for _ in range(30)]
        for result in results:
            result.get(timeout=30)
    finally:
        monitor.close()
    breaker_commands = monitor.matching(f"{harness.key_prefix}:{{br:")
    assert len(breaker_commands) < len(results)
