"""Two apps sharing one store never act on each other's nodes or tasks (issue 14, item 3).

App A and app B have their own brokers and result backends (two Redis
databases) and the same ``snakepit_store_url`` and key prefix. Real nodes.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.bootsteps.reaper import REAP_GRACE
from snakepit_celery.celery.bootsteps.registry import HEARTBEAT_INTERVAL, HEARTBEAT_TTL
from snakepit_celery.store import store_from_url
from snakepit_celery.testing import wait_until
from tests.support.chaos import ChaosFleet, chaos_conf

BARRIER: dict[str, Any] = {
    "enabled": True,
    "retry": "idempotent",
    "max_restarts": 1,
    "backoff": [0.05],
    "taint_duration": 60.0,
}


@pytest.fixture
def two_apps(redis_base_url: str) -> Iterator[tuple[ChaosFleet, ChaosFleet]]:
    db = 1 + os.getpid() % 14
    store_url = f"{redis_base_url}/{db}"
    shared_prefix = f"spiso-{uuid.uuid4().hex[:10]}"
    fleets = []
    for index, broker_db in enumerate((db, 1 + (db % 14))):
        broker_url = f"{redis_base_url}/{broker_db}"
        key_prefix = f"spiso{index}-{uuid.uuid4().hex[:10]}"
        extra = {"snakepit_store_url": store_url, "snakepit_key_prefix": shared_prefix}
        conf = chaos_conf(broker_url, key_prefix, BARRIER, extra)
        fleets.append(ChaosFleet(broker_url, key_prefix, conf))
    try:
        yield fleets[0], fleets[1]
    finally:
        for fleet in fleets:
            fleet.close()
        store = store_from_url(store_url, key_prefix=shared_prefix)
        client = store.client  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{shared_prefix}:*", count=1000))
        if keys:
            client.delete(*keys)


def final(fleet: ChaosFleet, task_id: str, timeout: float) -> dict[str, Any]:
    wait_until(lambda: not fleet.unfinished([task_id]), timeout, interval=0.2, what=task_id)
    return fleet.states([task_id])[task_id] or {}


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_apps_sharing_a_store_never_act_on_each_others_nodes(
    two_apps: tuple[ChaosFleet, ChaosFleet],
) -> None:
    a, b = two_apps
    assert app_group(a.client) != app_group(b.client)
    a_node = a.start(a.node_name(0)).wait_ready(60)
    b.start(b.node_name(0)).wait_ready(60)

    # A's only node crashes (and is tainted): it keeps its queues (B's node is no
    # "other live node"), and A's task is re-published to A's queues, not to B's node.
    poison = a.send("chaos.poison", 0.0)
    failed = final(a, poison, 60)
    assert failed["status"] == "FAILURE"
    assert failed["result"]["exc_type"] == "WorkerCrashedError"
    assert a.executions()[poison] == 2, a.logs()
    assert b.states([poison])[poison] is None
    ok = a.send("chaos.idempotent", 0.0)
    assert final(a, ok, 30)["status"] == "SUCCESS", a.logs()

    # A's node dies with an early-acknowledged task: B's node never reaps it;
    # A's next node does, into A's backend.
    orphan = a.send("chaos.once", 60.0)
    wait_until(lambda: a.executions()[orphan] == 1, 30, what="orphan started")
    wait_until(lambda: orphan not in a.unacked(), 10, what="orphan acknowledged on record")
    a_node.kill()
    b_node = b.nodes[b.node_name(0)]
    time.sleep(HEARTBEAT_TTL + REAP_GRACE + 3 * HEARTBEAT_INTERVAL)  # B's reaper ran meanwhile
    assert a.states([orphan])[orphan] is None
    assert b.states([orphan])[orphan] is None
    assert "reaped" not in b_node.logs()
    a.start(a.node_name(1)).wait_ready(60)
    reaped = final(a, orphan, 40)
    assert reaped["status"] == "FAILURE"
    assert reaped["result"]["exc_type"] == "WorkerCrashedError"
    assert b.states([orphan])[orphan] is None
