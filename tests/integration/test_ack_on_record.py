"""Acknowledged on record: no task that is not idempotent is left without a final state.

Celery acknowledges a task that is not idempotent when it starts. If its whole
node dies before the node's registry record lists the task in flight, no
message comes back and the orphan reaper has nothing to go on. Under an
enabled crash barrier such a task is acknowledged *on record* instead: the
node acks it once its record lists it (or when it ends). Killed before that,
its message comes back and the crash-ledger gate ends it ``WorkerCrashedError``
without running it again; killed after, the reaper does.

A warm shutdown gives the messages a node prefetched but never started back
to the broker; the node marks them in the crash ledger first, so they run
elsewhere as if nothing happened instead of being taken for crashes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from snakepit_celery.celery.bootsteps.ack import ack_on_record_tasks
from snakepit_celery.celery.bootsteps.reaper import REAP_GRACE
from snakepit_celery.celery.bootsteps.registry import HEARTBEAT_TTL, REAP_EVERY
from snakepit_celery.celery.task import SnakepitTask, snakepit_task
from snakepit_celery.testing import wait_until
from tests.support.chaos import VISIBILITY_TIMEOUT, ChaosFleet
from tests.support.rabbitmq import AMQP_URL, require_rabbitmq

pytestmark = pytest.mark.timeout(150)

BARRIER: dict[str, Any] = {"enabled": True, "max_restarts": 2, "taint_duration": 1.0}
#: Longest wait for a final state after a node was killed: the message comes back after
#: the visibility timeout, the reaper needs the record's TTL, grace and a reap round.
END_BOUND = max(VISIBILITY_TIMEOUT, HEARTBEAT_TTL + REAP_GRACE + REAP_EVERY * 2.0) + 20.0


def noop() -> None:
    """Body of the in-process test tasks (never run: only their options matter)."""


# -- which tasks -------------------------------------------------------------------------------


def make_app(barrier: dict[str, Any], **conf: Any) -> Celery:
    app = Celery("ack_on_record_test", set_as_current=False)
    app.conf.update(
        snakepit_store_url="memory://", snakepit_crash_barrier=barrier, task_always_eager=False
    )
    app.conf.update(conf)
    snakepit_task(app=app, name="t.once", shared=False)(noop)
    snakepit_task(app=app, name="t.idem", idempotent=True, shared=False)(noop)
    snakepit_task(app=app, name="t.early", acks_late=False, shared=False)(noop)
    snakepit_task(app=app, name="t.late", acks_late=True, shared=False)(noop)
    snakepit_task(app=app, name="t.off", crash_barrier={"enabled": False}, shared=False)(noop)
    app.task(name="t.plain", shared=False)(noop)
    return app


def ours(names: list[str]) -> list[str]:
    """The test app's own tasks (a finalized app also gets every shared task of the run)."""
    return [name for name in names if name.startswith("t.")]


def test_only_barrier_tasks_that_are_not_idempotent_and_chose_no_ack_are_acked_on_record() -> None:
    app = make_app(BARRIER)
    assert ours(ack_on_record_tasks(app)) == ["t.once"]
    once = app.tasks["t.once"]
    assert isinstance(once, SnakepitTask)
    assert once.acks_late is True and once.ack_on_record is True
    assert app.tasks["t.early"].acks_late is False
    assert not app.tasks["t.idem"].ack_on_record
    assert ours(ack_on_record_tasks(app)) == [], "a second call changes nothing"


def test_nothing_is_acked_on_record_without_the_crash_barrier() -> None:
    assert ours(ack_on_record_tasks(make_app({"enabled": False}))) == []


def test_an_app_that_acks_late_keeps_acking_late() -> None:
    app = make_app(BARRIER, task_acks_late=True)
    assert ours(ack_on_record_tasks(app)) == []
    assert not app.tasks["t.once"].ack_on_record


# -- real nodes --------------------------------------------------------------------------------


@pytest.fixture
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    fleet = ChaosFleet.create(
        redis_base_url, "spack", BARRIER, extra={"worker_prefetch_multiplier": 4}
    )
    yield fleet
    fleet.close()


def started(fleet: ChaosFleet, task_id: str, timeout: float = 30.0) -> None:
    """Return as soon as ``task_id`` logged its execution (polled every 2 ms)."""
    wait_until(lambda: fleet.executions()[task_id] > 0, timeout, interval=0.002, what=task_id)


def ended(fleet: ChaosFleet, task_id: str, timeout: float) -> dict[str, Any]:
    wait_until(lambda: not fleet.unfinished([task_id]), timeout, interval=0.2, what=task_id)
    return fleet.states([task_id])[task_id] or {}


@pytest.mark.integration
def test_running_task_is_acknowledged_once_recorded_not_when_it_ends(fleet: ChaosFleet) -> None:
    node = fleet.start(fleet.node_name(0)).wait_ready(60)
    task_id = fleet.send("chaos.once", 8.0)
    started(fleet, task_id)
    wait_until(lambda: task_id not in fleet.unacked(), 5, interval=0.05, what="the ack")
    assert fleet.unfinished([task_id]), "acknowledged while still running"
    assert "acknowledged on record" in node.logs() and "chaos.once" in node.logs()
    # It outlives the visibility timeout: acknowledged, it is not delivered a second time.
    assert VISIBILITY_TIMEOUT < 8.0
    assert ended(fleet, task_id, 30)["status"] == "SUCCESS"
    assert fleet.executions()[task_id] == 1


@pytest.mark.integration
def test_node_killed_as_the_task_starts_leaves_it_failed_not_lost(fleet: ChaosFleet) -> None:
    doomed = fleet.start(fleet.node_name(0)).wait_ready(60)
    task_id = fleet.send("chaos.once", 30.0)
    started(fleet, task_id)
    doomed.kill()
    killed_at = time.monotonic()
    fleet.start(fleet.node_name(1)).wait_ready(60)
    meta = ended(fleet, task_id, END_BOUND)
    path = "gate" if "not run again" in fleet.logs(0) else "reaper"
    print(f"failed {time.monotonic() - killed_at:.1f}s after the kill, by the {path}")
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "WorkerCrashedError"
    assert fleet.executions()[task_id] == 1


@pytest.fixture(params=["redis", "amqp"])
def broker_fleet(request: pytest.FixtureRequest, redis_base_url: str) -> Iterator[ChaosFleet]:
    """A fleet on Redis, or on RabbitMQ (127.0.0.1:5672, skipped when it does not answer)."""
    extra: dict[str, Any] = {"worker_prefetch_multiplier": 4}
    if request.param == "amqp":
        require_rabbitmq()
        extra |= {"broker_url": AMQP_URL, "task_default_queue": f"chaos-{uuid.uuid4().hex[:8]}"}
    fleet = ChaosFleet.create(redis_base_url, "spack", BARRIER, extra=extra)
    yield fleet
    fleet.close()


@pytest.mark.integration
def test_warm_shutdown_gives_prefetched_tasks_back_to_run_once_elsewhere(
    broker_fleet: ChaosFleet,
) -> None:
    fleet = broker_fleet
    first = fleet.start(fleet.node_name(0), concurrency=1).wait_ready(60)
    long_id = fleet.send("chaos.once", 3.0)
    started(fleet, long_id)
    waiting = [fleet.send("chaos.once", 0.1) for _ in range(2)]
    wait_until(lambda: all(f"[{t}] received" in first.logs() for t in waiting), 10, what="prefetch")
    assert first.stop(timeout=30) == 0
    assert "gives back 2 unstarted task(s)" in first.logs(), first.logs()
    fleet.start(fleet.node_name(1)).wait_ready(60)
    for task_id in [long_id, *waiting]:
        assert ended(fleet, task_id, 30)["status"] == "SUCCESS", fleet.logs()
    assert [fleet.executions()[t] for t in [long_id, *waiting]] == [1, 1, 1]
