"""Tasks longer than the broker's visibility timeout run once (issue 14, item 1).

Kombu's Redis transport restores a message whose delivery is older than
``visibility_timeout``; a live node keeps its running tasks' messages fresh
from its heartbeat thread, and a copy delivered anyway (or after the result
was stored) never runs. Real nodes, 5 s visibility timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from snakepit_celery.testing import wait_until
from tests.support.chaos import ChaosFleet

BARRIER = {"enabled": True, "retry": "idempotent", "max_restarts": 2}
VISIBILITY = 5.0


@pytest.fixture
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    fleet = ChaosFleet.create(redis_base_url, "splong", BARRIER)
    fleet.conf["broker_transport_options"] = {
        **fleet.conf["broker_transport_options"],
        "visibility_timeout": VISIBILITY,
    }
    fleet.client.conf.update(fleet.conf)
    yield fleet
    fleet.close()


def run_long_tasks(fleet: ChaosFleet, work: float) -> None:
    """Two nodes, one idempotent and one non-idempotent task of ``work`` s: each runs once."""
    for index in range(2):
        fleet.start(fleet.node_name(index), concurrency=2)
    for node in fleet.nodes.values():
        node.wait_ready(60)
    ids = [fleet.send("chaos.idempotent", work), fleet.send("chaos.once", work)]
    deadline = work + 4 * VISIBILITY + 20
    wait_until(lambda: not fleet.unfinished(ids), deadline, interval=0.5, what="long tasks")
    time.sleep(VISIBILITY + 2)  # a restored copy would have started by now
    states = fleet.states(ids)
    assert [(states[i] or {}).get("status") for i in ids] == ["SUCCESS", "SUCCESS"], fleet.logs()
    executions = fleet.executions()
    assert [executions[i] for i in ids] == [1, 1], fleet.logs()


@pytest.mark.integration
def test_tasks_longer_than_the_visibility_timeout_run_once(fleet: ChaosFleet) -> None:
    run_long_tasks(fleet, 12.0)


@pytest.mark.integration
@pytest.mark.slow
def test_tasks_six_times_the_visibility_timeout_run_once(fleet: ChaosFleet) -> None:
    run_long_tasks(fleet, 30.0)
