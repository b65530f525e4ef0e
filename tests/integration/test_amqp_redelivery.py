"""On RabbitMQ a copy of a running task waits for it, and a copy of a dead run takes over at once.

RabbitMQ has no visibility timeout: it redelivers a message as soon as the
consumer's connection drops, whether the node died or only lost the
connection while its task runs on. Real nodes on RabbitMQ (quorum queues),
result backend and store on Redis; skipped when RabbitMQ does not answer.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from snakepit_celery.celery.headers import HEADER_CRASHES
from snakepit_celery.celery.ledger_gate import DUPLICATE_RECHECK
from snakepit_celery.testing import wait_until
from tests.support.chaos import ChaosFleet
from tests.support.rabbitmq import amqp_conf

BARRIER = {"enabled": True, "retry": "idempotent", "max_restarts": 2}
WORK = 6.0

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    fleet = ChaosFleet.create(redis_base_url, "spamqp", BARRIER, extra=amqp_conf())
    yield fleet
    fleet.close()


def running_on(fleet: ChaosFleet, task_id: str) -> str:
    """The node that started ``task_id`` (waits for its first start)."""
    wait_until(lambda: fleet.runs().get(task_id), 30, interval=0.05, what=f"{task_id} started")
    return fleet.runs()[task_id][0].node


def copy_of(fleet: ChaosFleet, task_id: str) -> None:
    """Publish another message of ``task_id``, as RabbitMQ redelivers one (crash-tracked)."""
    fleet.client.send_task(
        "chaos.idempotent", args=(WORK,), task_id=task_id, headers={HEADER_CRASHES: 0}
    )


def test_a_copy_delivered_while_the_first_run_lives_waits_and_is_then_dropped(
    fleet: ChaosFleet,
) -> None:
    """The node's first heartbeat after the start leases the run (no visibility timeout)."""
    fleet.start_all(2)
    task_id = fleet.send("chaos.idempotent", WORK)
    running_on(fleet, task_id)
    time.sleep(1.0)  # two heartbeats: the run holds its lease
    copy_of(fleet, task_id)
    wait_until(lambda: not fleet.unfinished([task_id]), WORK + 30, what="the first run")
    time.sleep(DUPLICATE_RECHECK + 1.5)  # the deferred copy came back once more: dropped
    assert fleet.states([task_id])[task_id]["status"] == "SUCCESS"
    assert fleet.executions()[task_id] == 1, fleet.logs()
    assert "duplicate delivery deferred" in fleet.logs(0)
    assert "already ended SUCCESS: not run again" in fleet.logs(0)


def test_the_copy_of_a_run_whose_node_died_runs_within_seconds(fleet: ChaosFleet) -> None:
    """The run holds a live lease (minutes long) when its node is SIGKILLed: the copy
    RabbitMQ redelivers at once sees in the node registry that the holder is gone."""
    fleet.start_all(2)
    task_id = fleet.send("chaos.idempotent", WORK)
    node = running_on(fleet, task_id)
    time.sleep(1.0)  # leased
    fleet.nodes[node].kill()
    killed = time.monotonic()
    wait_until(lambda: fleet.executions()[task_id] == 2, 20, interval=0.05, what="the re-run")
    took = time.monotonic() - killed
    wait_until(lambda: not fleet.unfinished([task_id]), WORK + 30, what="the re-run's end")
    assert fleet.states([task_id])[task_id]["status"] == "SUCCESS"
    runs = fleet.runs()[task_id]
    assert [run.node == node for run in runs] == [True, False], runs
    assert took < 2 * DUPLICATE_RECHECK + 2, f"re-run {took:.1f} s after the death"
