"""``max_restarts`` holds while the store is down; an unusable store stops startup (issue 14).

The crash count travels in the message's header, so a poison task stops
after ``max_restarts + 1`` runs with the store dead (fail-open); fail-closed,
or re-run on RabbitMQ, it is retried while the store is down and runs again
once it is back. Real nodes; the store is a private redis-server the test
stops.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import pytest
from celery import Celery

from snakepit_celery.celery.app_context import check_store
from snakepit_celery.errors import ConfigError
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.redis_server import EmbeddedRedis
from tests.support.chaos import ChaosFleet, chaos_conf
from tests.support.rabbitmq import amqp_conf

MAX_RESTARTS = 2
BARRIER: dict[str, Any] = {
    "enabled": True,
    "retry": "idempotent",
    "max_restarts": MAX_RESTARTS,
    "backoff": [0.05],
}


def fleet_on(
    redis_base_url: str,
    store: EmbeddedRedis,
    fail_open: bool,
    broker: dict[str, Any] | None = None,
) -> ChaosFleet:
    redis_url = f"{redis_base_url}/{1 + os.getpid() % 14}"
    key_prefix = f"spstoredown-{uuid.uuid4().hex[:10]}"
    extra = {
        "snakepit_store_url": f"{store.url}/0",
        "snakepit_fail_open": fail_open,
        **(broker or {}),
    }
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
@pytest.mark.parametrize("broker", ["redis-fail-closed", "rabbitmq-fail-open"])
def test_a_crashed_task_waits_for_the_store_then_stops_after_max_restarts(
    redis_base_url: str, private_redis: EmbeddedRedis, broker: str
) -> None:
    """Fail-closed, tasks retry while the store is down; so does a re-run on RabbitMQ.

    RabbitMQ cannot publish the re-run with the acknowledgement of the crashed
    delivery in one transaction. Should the node die between the two, the
    original comes back beside the re-published message; run on their headers
    while the store is down, each would count only its own crashes. So the
    re-run, marked a copy, waits for the store (fail-open too), and the count
    is whole once it answers.
    """
    if broker == "redis-fail-closed":
        fleet = fleet_on(redis_base_url, private_redis, fail_open=False)
    else:
        fleet = fleet_on(redis_base_url, private_redis, fail_open=True, broker=amqp_conf())
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


# -- a store URL that can never work is a startup error ------------------------------------


def app_with_store(redis_url: str, store_url: str) -> Celery:
    app = Celery("store_check", broker=redis_url, set_as_current=False)
    app.conf.snakepit_store_url = store_url
    return app


def test_store_refusing_the_credentials_is_a_config_error_naming_the_setting(
    redis_url: str,
) -> None:
    store_url = redis_url.replace("redis://", "redis://nobody:wrong@", 1)
    with pytest.raises(ConfigError, match="snakepit_store_url") as raised:
        check_store(app_with_store(redis_url, store_url))
    assert "wrong" not in str(raised.value)


def test_store_that_does_not_answer_yet_is_no_startup_error(redis_url: str) -> None:
    check_store(app_with_store(redis_url, "redis://127.0.0.1:1/0"))


@pytest.mark.integration
def test_worker_refuses_to_start_with_a_store_refusing_the_credentials(
    redis_base_url: str,
) -> None:
    redis_url = f"{redis_base_url}/{1 + os.getpid() % 14}"
    key_prefix = f"spstorebad-{uuid.uuid4().hex[:10]}"
    store_url = redis_url.replace("redis://", "redis://nobody:wrong@", 1)
    conf = chaos_conf(redis_url, key_prefix, BARRIER, {"snakepit_store_url": store_url})
    fleet = ChaosFleet(redis_url, key_prefix, conf)
    try:
        node = fleet.start(fleet.node_name(0))
        assert node.wait_exit(60) == 1
        assert "snakepit_store_url" in node.logs()
    finally:
        fleet.close()
