"""``max_restarts`` holds while the store is down (issue 14, item 2).

The crash count travels in the message's header, so a poison task stops
after ``max_restarts + 1`` runs with the store dead (fail-open); fail-closed,
it is retried while the store is down and runs again once it is back. Real
nodes; the store is a private redis-server the test stops.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from chaos_helpers import ChaosFleet, chaos_conf

from snakepit_celery.testing import wait_until
from snakepit_celery.testing.redis_server import EmbeddedRedis, find_redis_server_binary

MAX_RESTARTS = 2
BARRIER: dict[str, Any] = {
    "enabled": True,
    "retry": "idempotent",
    "max_restarts": MAX_RESTARTS,
    "backoff": [0.05],
}


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    binary = find_redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    server = EmbeddedRedis(binary).start()
    try:
        yield server
    finally:
        server.stop()


def fleet_on(redis_base_url: str, store: EmbeddedRedis, fail_open: bool) -> ChaosFleet:
    redis_url = f"{redis_base_url}/{1 + os.getpid() % 14}"
    key_prefix = f"spstoredown-{uuid.uuid4().hex[:10]}"
    extra = {"snakepit_store_url": f"{store.url}/0", "snakepit_fail_open": fail_open}
    fleet = ChaosFleet(redis_url, key_prefix, chaos_conf(redis_url, key_prefix, BARRIER, extra))
    fleet.start_all(1)
    return fleet


def status(fleet: ChaosFleet, task_id: str) -> str | None:
    meta = fleet.states([task_id])[task_id]
    return None if meta is None else str(meta["status"])


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_poison_task_stops_after_max_restarts_with_the_store_dead(
    redis_base_url: str, private_redis: EmbeddedRedis
) -> None:
    fleet = fleet_on(redis_base_url, private_redis, fail_open=True)
    try:
        private_redis.stop()
        task_id = fleet.send("chaos.poison", 0.0)
        wait_until(lambda: status(fleet, task_id) == "FAILURE", 60, what="poison task FAILURE")
        time.sleep(2.0)  # no further run
        meta = fleet.states([task_id])[task_id] or {}
        assert meta["result"]["exc_type"] == "WorkerCrashedError", meta
        assert fleet.executions()[task_id] == MAX_RESTARTS + 1, fleet.logs()
    finally:
        fleet.close()


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_fail_closed_retries_while_the_store_is_down_then_stops_the_poison_task(
    redis_base_url: str, private_redis: EmbeddedRedis
) -> None:
    fleet = fleet_on(redis_base_url, private_redis, fail_open=False)
    try:
        private_redis.stop(keep_data=True)
        task_id = fleet.send("chaos.poison", 0.0)
        wait_until(lambda: fleet.executions()[task_id] == 1, 30, what="first run")
        time.sleep(6.0)
        assert status(fleet, task_id) == "RETRY", fleet.logs()
        assert fleet.executions()[task_id] == 1, fleet.logs()
        private_redis.start()
        wait_until(lambda: status(fleet, task_id) == "FAILURE", 60, what="poison task FAILURE")
        time.sleep(2.0)
        assert fleet.executions()[task_id] == MAX_RESTARTS + 1, fleet.logs()
    finally:
        fleet.close()
