"""One truth per health pool: its configuration is stored with its state.

The first configuration recorded with a pool's crashes wins; every process,
the CLI and the metrics judge the pool by it, and a process built with other
numbers is warned once and says so (``config_conflict``).
"""

from __future__ import annotations

import logging

import pytest
from celery import Celery

from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.health import HealthMonitor
from snakepit_celery.store import Store, store_from_url
from tests.support.cli import app, run_json  # noqa: F401 - the ``app`` fixture


@pytest.fixture(params=["memory", "redis"])
def any_store(request: pytest.FixtureRequest, redis_store: Store) -> Store:
    return store_from_url("memory://") if request.param == "memory" else redis_store


def test_a_pool_is_judged_by_the_configuration_stored_with_it(any_store: Store) -> None:
    worker = HealthMonitor("strict", max_crashes=3, crash_window=120.0, store=any_store)
    for _ in range(3):
        worker.record_crash("w1")
    defaults = HealthMonitor("strict", store=any_store)  # max_crashes=10, crash_window=60
    assert defaults.is_healthy() is False
    stats = defaults.stats()
    assert (stats.max_crashes, stats.crash_window, stats.config_conflict) == (3, 120.0, True)
    assert worker.stats().config_conflict is False


def test_the_first_configuration_recorded_wins(any_store: Store) -> None:
    HealthMonitor("first", max_crashes=2, store=any_store).record_crash("w1")
    HealthMonitor("first", max_crashes=50, store=any_store).record_crash("w2")
    assert HealthMonitor("first", max_crashes=50, store=any_store).stats().max_crashes == 2


def test_a_worker_limit_follows_the_stored_configuration(any_store: Store) -> None:
    HealthMonitor("workers", max_worker_crashes=1, store=any_store).record_crash("w1")
    assert HealthMonitor("workers", store=any_store).worker_health("w1").healthy is False


def test_a_conflict_is_logged_once(any_store: Store, caplog: pytest.LogCaptureFixture) -> None:
    HealthMonitor("logged", max_crashes=4, store=any_store).record_crash("w1")
    other = HealthMonitor("logged", max_crashes=9, store=any_store)
    with caplog.at_level(logging.WARNING, logger="snakepit_celery.breaker.stored_config"):
        other.stats()
        other.is_healthy()
    warnings = [r for r in caplog.records if "judged by its stored configuration" in r.message]
    assert len(warnings) == 1


def test_the_cli_shows_a_pool_by_its_stored_numbers(app: Celery, redis_store: Store) -> None:  # noqa: F811
    monitor = HealthMonitor("gpu", max_crashes=3, store=redis_store)
    for _ in range(3):
        monitor.record_crash("gpu0@host")
    code, data = run_json(app, "status", "--pool", "gpu")
    pool = {h["pool"]: h for h in data["health"]}["gpu"]
    assert code == 1
    assert (pool["is_healthy"], pool["max_crashes"], pool["config_conflict"]) == (False, 3, True)


# -- breakers ------------------------------------------------------------------------------


def test_a_breaker_is_judged_by_the_configuration_stored_with_it(any_store: Store) -> None:
    worker = CircuitBreaker("model", failure_threshold=2, reset_timeout=120, store=any_store)
    worker.record_failure()
    worker.record_failure()
    defaults = CircuitBreaker("model", store=any_store)  # failure_threshold=5, reset_timeout=30
    stats = defaults.stats()
    assert (stats.state, stats.failure_threshold, stats.config_conflict) == ("open", 2, True)
    assert defaults.allow_call() is False
    assert worker.stats().config_conflict is False


def test_the_stored_threshold_opens_the_breaker_for_everyone(any_store: Store) -> None:
    CircuitBreaker("strict-br", failure_threshold=1, store=any_store).record_success()
    lenient = CircuitBreaker("strict-br", failure_threshold=50, store=any_store)
    lenient.record_failure()
    assert lenient.state == "open"


def test_a_reset_forgets_the_stored_configuration(any_store: Store) -> None:
    CircuitBreaker("reset-br", failure_threshold=1, store=any_store).record_failure()
    CircuitBreaker("reset-br", store=any_store).reset()
    fresh = CircuitBreaker("reset-br", failure_threshold=3, store=any_store)
    fresh.record_failure()
    assert fresh.stats().failure_threshold == 3
    assert fresh.state == "closed"


def test_breakers_json_shows_the_stored_numbers_and_the_conflict(
    app: Celery,  # noqa: F811
    redis_store: Store,
) -> None:
    breaker = CircuitBreaker(
        "model-server", failure_threshold=2, reset_timeout=120, store=redis_store
    )
    breaker.record_failure()
    breaker.record_failure()
    _, data = run_json(app, "breakers", "--breaker", "model-server")
    shown = {b["name"]: b for b in data}["model-server"]
    assert (shown["state"], shown["failure_threshold"], shown["config_conflict"]) == (
        "open",
        2,
        True,
    )
