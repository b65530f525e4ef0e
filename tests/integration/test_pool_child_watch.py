"""A dead pool child is noticed in well under a second, always (prefork).

Celery's prefork parent can miss a child's death until its 5 s
``maintain_pool`` timer (the child's sentinel fd closes a moment before the
child can be reaped). ``PoolChildWatch`` looks at the children every
``CHILD_WATCH_INTERVAL`` seconds and runs the pool's maintenance as soon as
one exited. The first tests drive ``maintain_if_child_died`` with stand-ins
for billiard's pool; the last one kills the pool child of a real node.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery.celery.bootsteps.children import maintain_if_child_died, pool_processes
from snakepit_celery.testing import wait_until
from tests.support.chaos import ChaosFleet

BARRIER: dict[str, Any] = {"enabled": True, "max_restarts": 0, "taint_duration": 1.0}
KILLS = 3
#: From the kill of a pool child to its task's FAILURE in the result backend (s).
NOTICE_BOUND = 1.0


class Child:
    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        self.pid = 0


class Processes:
    """Stands in for billiard's pool: its ``_pool`` of children and ``maintain_pool``."""

    def __init__(self, *exitcodes: int | None) -> None:
        self._pool = [Child(code) for code in exitcodes]
        self.maintained = 0

    def maintain_pool(self) -> None:
        self.maintained += 1


class TaskPool:
    def __init__(self, processes: Any) -> None:
        self._pool = processes


def test_pool_is_maintained_when_a_child_exited() -> None:
    processes = Processes(None, -9)
    assert maintain_if_child_died(TaskPool(processes)) is True
    assert processes.maintained == 1


def test_pool_with_live_children_is_left_alone() -> None:
    processes = Processes(None, None)
    assert maintain_if_child_died(TaskPool(processes)) is False
    assert processes.maintained == 0


def test_pool_without_child_processes_is_left_alone() -> None:
    assert pool_processes(TaskPool(None)) == []
    assert maintain_if_child_died(TaskPool(None)) is False
    assert maintain_if_child_died(None) is False


@pytest.fixture
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    fleet = ChaosFleet.create(redis_base_url, "spchild", BARRIER)
    yield fleet
    fleet.close()


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_killed_pool_child_fails_its_task_within_a_second(fleet: ChaosFleet) -> None:
    node = fleet.start(fleet.node_name(0), concurrency=1).wait_ready(60)
    for _ in range(KILLS):
        took, meta = kill_child_mid_task(fleet, node)
        assert took < NOTICE_BOUND, f"FAILURE {took:.2f}s after the kill"
        assert meta["result"]["exc_type"] == "WorkerCrashedError"
        wait_until(lambda: len(fleet.pool_children(node)) == 1, 30, what="a fresh child")


def kill_child_mid_task(fleet: ChaosFleet, node: Any) -> tuple[float, dict[str, Any]]:
    """SIGKILL the node's only pool child mid-task: seconds until FAILURE, and the state."""
    task_id = fleet.send("chaos.once", 60.0)
    wait_until(lambda: fleet.executions()[task_id] == 1, 30, interval=0.05, what="the start")
    [child] = fleet.pool_children(node)
    killed_at = time.monotonic()
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: not fleet.unfinished([task_id]), 10, interval=0.01, what="FAILURE")
    return time.monotonic() - killed_at, fleet.states([task_id])[task_id] or {}
