"""A dead node's tasks move on within seconds, with kombu's default visibility timeout.

Real worker nodes are SIGKILLed (parent and pool children, as a power loss
or the OOM killer would) with kombu's default one-hour visibility timeout:

- an idempotent task runs again on a live node within ``MOVE_ON`` seconds of
  the death, exactly once more;
- with ``start_marks``, a non-idempotent message the dead node had prefetched
  but never started runs normally on a live node (without, it ends
  ``WorkerCrashedError`` unrun);
- a node frozen long enough to be declared dead (SIGSTOP of the whole node)
  is fenced when it wakes up: it exits without running on, and the final
  state its tasks were given stays.

The long run (``MANY_KILLS`` kills, the p99 of the issue) is ``slow``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.bootsteps.fence import FENCED_EXIT_CODE
from snakepit_celery.store import RedisStore
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.workers import WorkerNode
from tests.support.chaos import ChaosFleet

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

BARRIER: dict[str, Any] = {"enabled": True, "max_restarts": 2, "taint_duration": 1.0}
#: From a node's death to its idempotent task running again on a live node (s).
MOVE_ON = 5.0
FEW_KILLS = 2
MANY_KILLS = 10


def make_fleet(redis_base_url: str, label: str, barrier: dict[str, Any]) -> ChaosFleet:
    """A chaos fleet on kombu's default visibility timeout (one hour)."""
    fleet = ChaosFleet.create(redis_base_url, label, barrier)
    options = {"global_keyprefix": f"{fleet.key_prefix}:"}
    fleet.conf["broker_transport_options"] = options
    fleet.client.conf.broker_transport_options = options
    return fleet


@pytest.fixture
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    fleet = make_fleet(redis_base_url, "spdeath", BARRIER)
    yield fleet
    print(fleet.logs())
    fleet.close()


@pytest.fixture(params=[True, False], ids=["start_marks", "no_start_marks"])
def marked_fleet(redis_base_url: str, request: pytest.FixtureRequest) -> Iterator[ChaosFleet]:
    fleet = make_fleet(redis_base_url, "spmarks", {**BARRIER, "start_marks": request.param})
    yield fleet
    print(fleet.logs())
    fleet.close()


def record_of(fleet: ChaosFleet, node: str) -> dict[str, Any]:
    """The node's live registry record ({} when it has none)."""
    store = RedisStore(fleet.redis_url, key_prefix=fleet.key_prefix)
    try:
        records = store.node_list(group=app_group(fleet.client))
        return next((r for r in records if r["node"] == node), {})
    finally:
        store.close()


def running_on(fleet: ChaosFleet, task_id: str) -> str | None:
    """The node whose record lists ``task_id`` in flight (and so its message, if held)."""
    for name in fleet.nodes:
        if task_id in (record_of(fleet, name).get("in_flight") or []):
            return name
    return None


def kill_and_time_rerun(fleet: ChaosFleet) -> float:
    """Run an idempotent task, SIGKILL its node mid-task; seconds until it runs again."""
    task_id = fleet.send("chaos.idempotent", 2.0)
    doomed = wait_until(
        lambda: running_on(fleet, task_id), 30, interval=0.05, what=f"{task_id} in flight"
    )
    fleet.nodes[doomed].kill()
    killed_at = time.monotonic()
    wait_until(lambda: fleet.executions()[task_id] >= 2, 30, interval=0.02, what="the re-run")
    took = time.monotonic() - killed_at
    wait_until(lambda: not fleet.unfinished([task_id]), 30, interval=0.1, what=f"{task_id} end")
    assert (fleet.states([task_id])[task_id] or {})["status"] == "SUCCESS"
    time.sleep(0.5)
    assert fleet.executions()[task_id] == 2
    fleet.start(doomed).wait_ready(60)
    return took


def rerun_delays(fleet: ChaosFleet, kills: int) -> list[float]:
    fleet.start_all(2)
    delays = [kill_and_time_rerun(fleet) for _ in range(kills)]
    print("re-run after the kill (s):", ", ".join(f"{d:.2f}" for d in delays))
    return delays


@pytest.mark.slow  # timed: measured in make bench (bench_node_death); the re-run is in test_reaper
def test_idempotent_task_of_a_killed_node_runs_again_within_seconds(fleet: ChaosFleet) -> None:
    delays = rerun_delays(fleet, FEW_KILLS)
    assert max(delays) < MOVE_ON


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_idempotent_tasks_move_on_within_seconds_over_many_kills(fleet: ChaosFleet) -> None:
    delays = sorted(rerun_delays(fleet, MANY_KILLS))
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    assert p99 < MOVE_ON


def test_prefetched_message_with_start_marks_runs_normally_after_its_node_died(
    marked_fleet: ChaosFleet,
) -> None:
    """Without start marks it ends ``WorkerCrashedError`` unrun: its lost delivery is a crash."""
    fleet = marked_fleet
    start_marks = fleet.conf["snakepit_crash_barrier"]["start_marks"]
    doomed = fleet.start(fleet.node_name(0), concurrency=1).wait_ready(60)
    running = fleet.send("chaos.once", 60.0)
    waiting = fleet.send("chaos.once", 0.1)
    wait_until(
        lambda: running_on(fleet, running) and held_by(fleet, doomed, waiting),
        30,
        interval=0.05,
        what="one task running, one prefetched",
    )
    fleet.start(fleet.node_name(1)).wait_ready(60)
    doomed.kill()
    wait_until(lambda: not fleet.unfinished([running, waiting]), 30, interval=0.1, what="ends")
    states = fleet.states([running, waiting])
    assert (states[running] or {})["result"]["exc_type"] == "WorkerCrashedError"
    if start_marks:
        assert (states[waiting] or {})["status"] == "SUCCESS"
        assert fleet.executions()[waiting] == 1
    else:
        assert (states[waiting] or {})["result"]["exc_type"] == "WorkerCrashedError"
        assert fleet.executions()[waiting] == 0


def held_by(fleet: ChaosFleet, node: WorkerNode, task_id: str) -> bool:
    return task_id in {str(item[1]) for item in record_of(fleet, node.name).get("held") or []}


def test_node_frozen_until_declared_dead_is_fenced_when_it_wakes(fleet: ChaosFleet) -> None:
    frozen = fleet.start(fleet.node_name(0), concurrency=1).wait_ready(60)
    task_id = fleet.send("chaos.once", 60.0)
    wait_until(lambda: running_on(fleet, task_id) == frozen.name, 30, what="on the frozen node")
    fleet.start(fleet.node_name(1)).wait_ready(60)  # started after: the task cannot go there
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not fleet.unfinished([task_id]), 30, interval=0.1, what="the reaper")
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    assert frozen.process is not None
    assert frozen.process.wait(timeout=30) == FENCED_EXIT_CODE
    assert "declared dead" in frozen.logs()
    meta = fleet.states([task_id])[task_id] or {}
    assert meta["result"]["exc_type"] == "WorkerCrashedError"
    assert fleet.executions()[task_id] == 1


def test_a_fenced_node_leaves_its_message_to_the_node_that_took_it_again(
    fleet: ChaosFleet,
) -> None:
    """The reaper restored the frozen node's message and a live node took it again under the
    same delivery tag (it waits for its countdown there): the fenced node gives back nothing
    (it used to restore a second copy)."""
    frozen = fleet.start(fleet.node_name(0), concurrency=1).wait_ready(60)
    task_id = str(fleet.client.send_task("chaos.idempotent", args=(0.1,), countdown=12).id)
    wait_until(lambda: held_by(fleet, frozen, task_id), 30, interval=0.05, what="held")
    other = fleet.start(fleet.node_name(1)).wait_ready(60)
    os.killpg(frozen.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: held_by(fleet, other, task_id), 30, interval=0.05, what="taken again")
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    assert frozen.process is not None
    assert frozen.process.wait(timeout=30) == FENCED_EXIT_CODE
    logs = frozen.logs()
    assert "fenced: 0 unrestored message(s) given back" in logs
    assert "was taken again" in logs
    wait_until(lambda: not fleet.unfinished([task_id]), 60, interval=0.1, what=f"{task_id} end")
    assert (fleet.states([task_id])[task_id] or {})["status"] == "SUCCESS"
    assert fleet.executions()[task_id] == 1
