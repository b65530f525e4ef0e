"""HealthMonitor semantics, on MemoryStore and on real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from snakepit_celery.errors import ConfigError, StoreUnavailableError
from snakepit_celery.health import HealthMonitor, HealthStats, WorkerHealth
from snakepit_celery.store import Store, set_fail_open, store_from_url
from snakepit_celery.testing import wait_until
from tests.support.breakers import record_signals


@pytest.fixture
def store(each_store: Store) -> Store:
    return each_store


@pytest.fixture
def pool(key_prefix: str) -> str:
    return f"pool-{key_prefix}"


def test_defaults_match_the_api() -> None:
    monitor = HealthMonitor()
    assert (monitor.pool, monitor.max_crashes, monitor.crash_window) == ("default", 10, 60.0)
    assert (monitor.check_interval, monitor.max_worker_crashes) == (30.0, 3)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_crashes", 0),
        ("crash_window", 0),
        ("check_interval", -1.0),
        ("max_worker_crashes", 0),
        ("pool", ""),
    ],
)
def test_invalid_settings_raise_config_error(setting: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        HealthMonitor(**{setting: value})
    assert info.value.setting == setting


def test_repr_reads_like_the_config() -> None:
    monitor = HealthMonitor("gpu", max_crashes=4, store="memory://")
    assert repr(monitor) == (
        "HealthMonitor(pool='gpu', max_crashes=4, crash_window=60.0, check_interval=30.0, "
        "max_worker_crashes=3, store='memory://')"
    )


def test_results_as_dict_are_json_safe() -> None:
    stats = HealthStats("default", 15, 3, 2, 10, 60.0, True)
    assert json.loads(json.dumps(stats.as_dict()))["crash_window"] == 60.0
    assert WorkerHealth(False, 5, 1703836800.0).as_dict() == {
        "healthy": False,
        "crash_count": 5,
        "last_crash_time": 1703836800.0,
    }


def test_unknown_worker_is_healthy_with_no_crashes(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, store=store)
    assert monitor.worker_health("w-unknown") == WorkerHealth(True, 0, None)


def test_record_crash_counts_for_the_worker_with_store_time(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, store=store)
    before = store.now()
    monitor.record_crash("w1", reason="segfault", exit_code=139)
    health = monitor.worker_health("w1")
    assert health.crash_count == 1
    assert health.last_crash_time is not None
    assert before - 1.0 <= health.last_crash_time <= store.now() + 1.0


def test_worker_is_unhealthy_at_max_worker_crashes(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, max_worker_crashes=2, store=store)
    monitor.record_crash("w1")
    assert monitor.worker_health("w1").healthy is True
    monitor.record_crash("w1")
    assert monitor.worker_health("w1").healthy is False
    assert monitor.worker_health("w2").healthy is True


def test_pool_is_unhealthy_at_max_crashes_in_the_window(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, max_crashes=3, store=store)
    for worker in ("w1", "w2"):
        monitor.record_crash(worker)
    assert monitor.is_healthy() is True
    monitor.record_crash("w3")
    assert monitor.is_healthy() is False


def test_stats_report_lifetime_and_windowed_counts(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, max_crashes=5, store=store)
    for worker in ("w1", "w1", "w2"):
        monitor.record_crash(worker)
    assert monitor.stats() == HealthStats(
        pool=pool,
        total_crashes=3,
        crashes_in_window=3,
        workers_with_crashes=2,
        max_crashes=5,
        crash_window=60.0,
        is_healthy=True,
    )


def test_crashes_leave_the_rolling_window_but_stay_in_the_total(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, max_crashes=2, crash_window=1.0, store=store)
    monitor.record_crash("w1")
    monitor.record_crash("w1")
    assert monitor.is_healthy() is False
    assert wait_until(monitor.is_healthy, timeout=5.0)
    stats = monitor.stats()
    assert (stats.total_crashes, stats.crashes_in_window, stats.workers_with_crashes) == (2, 0, 0)
    assert monitor.worker_health("w1").crash_count == 0


def test_record_crash_sends_worker_crash_signal(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, store=store)
    with record_signals(pool) as log:
        monitor.record_crash("w7", reason="oom", exit_code=137)
    assert log.events == [("worker_crash", {"pool": pool, "worker_id": "w7", "reason": "oom"})]


def test_pools_are_independent(store: Any, pool: str) -> None:
    HealthMonitor(pool, store=store).record_crash("w1")
    assert HealthMonitor(f"{pool}-other", store=store).stats().total_crashes == 0


def test_crash_storm_keeps_entries_bounded(store: Any, pool: str) -> None:
    monitor = HealthMonitor(pool, max_crashes=1, store=store)
    storm = monitor.max_entries + 500
    for i in range(storm):
        monitor.record_crash(f"w{i % 50}")
    stats = monitor.stats()
    assert stats.total_crashes == storm
    assert stats.crashes_in_window <= monitor.max_entries


def test_crash_storm_keeps_redis_keys_small(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    store = store_from_url(redis_url, key_prefix=key_prefix)
    monitor = HealthMonitor("storm", max_crashes=1, store=store)
    for i in range(monitor.max_entries + 1000):
        monitor.record_crash(f"w{i}", reason="segfault")
    keys = list(redis_client.scan_iter(match=f"{key_prefix}:*"))
    assert keys
    for key in keys:
        kind = redis_client.type(key).decode()
        size = {
            "zset": redis_client.zcard,
            "hash": redis_client.hlen,
            "list": redis_client.llen,
            "set": redis_client.scard,
        }.get(kind, lambda _key: 1)(key)
        assert size <= 2 * monitor.max_entries + 10, (key, kind, size)


# -- an unreachable store ----------------------------------------------------------


@pytest.fixture
def dead_store(key_prefix: str) -> Any:
    return store_from_url("redis://127.0.0.1:1/0", key_prefix=key_prefix)


@pytest.fixture
def fail_closed() -> Iterator[None]:
    set_fail_open(False)
    yield
    set_fail_open(True)


def test_unreachable_store_fails_open(dead_store: Any) -> None:
    monitor = HealthMonitor("dead", store=dead_store)
    monitor.record_crash("w1")
    assert monitor.is_healthy() is True
    assert monitor.stats().total_crashes == 0


@pytest.mark.usefixtures("fail_closed")
def test_unreachable_store_raises_when_fail_open_is_off(dead_store: Any) -> None:
    monitor = HealthMonitor("dead", store=dead_store)
    with pytest.raises(StoreUnavailableError):
        monitor.record_crash("w1")
    with pytest.raises(StoreUnavailableError):
        monitor.is_healthy()
