"""Two apps sharing one store never act on each other's nodes or tasks (issue 14, item 3).

App A and app B have their own brokers and result backends (two Redis
databases) and the same ``snakepit_store_url`` and key prefix; or one broker
database and their own namespaces, which their queue names carry. Real nodes.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery.celery.app_context import app_group, app_store, namespace
from snakepit_celery.celery.bootsteps.reaper import REAP_GRACE
from snakepit_celery.celery.bootsteps.registry import HEARTBEAT_INTERVAL, HEARTBEAT_TTL
from snakepit_celery.celery.router import fleet_snapshot
from snakepit_celery.policy.routing import cpu_queue
from snakepit_celery.store import store_from_url
from snakepit_celery.testing import wait_until
from tests.support.chaos import ChaosFleet, chaos_conf
from tests.support.fleet import CPU_HARDWARE, make_app, worker_node, write_hardware

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


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_namespaces_on_one_broker_database_consume_only_their_own_queues(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    """Two namespaces, one broker database: each app's device-routed tasks reach its own node."""
    apps = {ns: make_app(redis_url, key_prefix, f"{key_prefix}-{ns}") for ns in ("a", "b")}
    hardware = write_hardware(tmp_path / "cpu.json", CPU_HARDWARE)
    nodes = [
        worker_node(
            f"{ns}@iso",
            redis_url,
            key_prefix,
            tmp_path,
            hardware=hardware,
            env={"WORKER_APP_NAMESPACE": namespace(app)},
        )
        for ns, app in apps.items()
    ]
    try:
        for node in nodes:
            node.start().wait_ready(60)
        for ns, app in apps.items():

            def registered(app: Any = app) -> bool:
                snapshot = fleet_snapshot(app_store(app), ("default",), app_group(app))
                return bool(snapshot.nodes)

            wait_until(registered, 30, what=f"{ns}'s node registered")
        for ns, app in apps.items():
            sent = [app.tasks["worker_app.prefer_cuda"].apply_async() for _ in range(6)]
            results = [result.get(timeout=20) for result in sent]
            assert {r["node"] for r in results} == {f"{ns}@iso"}
            assert {r["queue"] for r in results} == {cpu_queue(prefix=namespace(app))}
    finally:
        for node in nodes:
            node.stop()
        for app in apps.values():
            app.close()
