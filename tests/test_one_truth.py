"""One truth per health pool: its configuration is stored with its state.

The first configuration recorded with a pool's crashes wins; every process,
the CLI and the metrics judge the pool by it, and a process built with other
numbers is warned once and says so (``config_conflict``).
"""

from __future__ import annotations

import logging

import pytest
from celery import Celery
from cli_helpers import app, run_json  # noqa: F401 - the ``app`` fixture

from snakepit_celery.health import HealthMonitor
from snakepit_celery.store import Store, store_from_url


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
    with caplog.at_level(logging.WARNING, logger="snakepit_celery.health"):
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
