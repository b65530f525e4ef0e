"""The orphan reaper: a task whose whole node died gets a final state.

A task that is not idempotent is acknowledged when it starts (or, under the
crash barrier, once its node's record lists it: ``test_ack_on_record.py``);
when its whole node is then SIGKILLed (parent and pool children) no message
comes back and no pool parent is left to store ``WorkerCrashedError``. The node's last heartbeat
lists it in flight; once that record has expired (plus a grace), a live
node's reaper claims it and ends the task FAILURE with ``WorkerCrashedError``
naming the dead node. Idempotent tasks are left to their message, which comes
back by itself; a task that already has a final state is never overwritten.

The first tests drive ``OrphanReaper.reap()`` in this process against real Redis
(result backend and store); the last ones kill real worker nodes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery, chord

from snakepit_celery import hardware
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.bootsteps.queues import QueueReconciler
from snakepit_celery.celery.bootsteps.reaper import REAP_GRACE, OrphanReaper
from snakepit_celery.celery.bootsteps.registry import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TTL,
    REAP_EVERY,
    NodeRegistry,
)
from snakepit_celery.errors import WorkerCrashedError
from snakepit_celery.health import HealthMonitor
from snakepit_celery.store import Store, redis_nodes, store_from_url
from snakepit_celery.testing import wait_until
from tests.support.chaos import ChaosFleet
from tests.support.reaping import BARRIER, SHORT_TTL, reaper_app

pytestmark = pytest.mark.timeout(150)

#: Longest time from a node's death to its orphans' FAILURE: its record expires
#: HEARTBEAT_TTL after its last beat, is claimable REAP_GRACE later, and a live
#: node reaps every REAP_EVERY heartbeats; plus slack for a busy machine.
REAP_BOUND = HEARTBEAT_TTL + REAP_GRACE + REAP_EVERY * HEARTBEAT_INTERVAL + 10.0


def entry(name: str, *, early_ack: bool = True, crash_barrier: bool = True) -> dict[str, Any]:
    return {"name": name, "early_ack": early_ack, "crash_barrier": crash_barrier}


# -- in process: OrphanReaper.reap() ---------------------------------------------------------


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    """An app whose result backend and store live under the test's key prefix."""
    yield from reaper_app(
        redis_url, key_prefix, {"reap.once": {}, "reap.idem": {"idempotent": True}}
    )


@pytest.fixture
def store(redis_store: Store) -> Store:
    return redis_store


@pytest.fixture
def agent(app: Celery, store: Store) -> OrphanReaper:
    """The live node that reaps (no grace, so a test only waits out the dead record's TTL)."""
    return OrphanReaper(app, "reaper@test", store, grace=0.0)


def dead_node(store: Store, name: str, tasks: dict[str, dict[str, Any]], group: str) -> None:
    """A node of ``group`` whose last heartbeat listed ``tasks`` in flight, and that then died."""
    record = {"in_flight": sorted(tasks), "in_flight_tasks": tasks, "incarnation": "x"}
    store.node_register(name, record, ttl=SHORT_TTL, group=group)
    time.sleep(SHORT_TTL + 0.1)


def test_orphan_of_a_dead_node_ends_failure_naming_it(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    dead_node(store, "dead@test", {"t-orphan": entry("reap.once")}, app_group(agent.app))
    assert agent.reap() == ["t-orphan"]
    result = app.AsyncResult("t-orphan")
    assert result.state == "FAILURE"
    error = result.result
    assert isinstance(error, WorkerCrashedError)
    assert error.worker_id == "dead@test"
    assert error.classification == "unknown"
    assert "dead@test was lost" in str(error)


def test_orphan_is_counted_as_a_crash_in_the_ledger_and_health_monitor(
    store: Store, agent: OrphanReaper
) -> None:
    dead_node(store, "dead@test", {"t-orphan": entry("reap.once")}, app_group(agent.app))
    agent.reap()
    ledger = store.ledger_get("t-orphan")
    assert ledger is not None
    assert ledger.crashes == 1
    assert HealthMonitor(store=store).worker_health("dead@test").crash_count == 1


def test_task_with_a_final_state_is_not_overwritten(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    app.backend.mark_as_done("t-done", 42)
    dead_node(store, "dead@test", {"t-done": entry("reap.once")}, app_group(agent.app))
    assert agent.reap() == []
    assert app.AsyncResult("t-done").get(timeout=5) == 42


def test_late_acknowledged_task_is_left_to_its_message(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    tasks = {"t-idem": entry("reap.idem", early_ack=False)}
    dead_node(store, "dead@test", tasks, app_group(agent.app))
    assert agent.reap() == []
    assert app.AsyncResult("t-idem").state == "PENDING"


def test_task_without_crash_barrier_keeps_celerys_behaviour(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    dead_node(
        store, "dead@test", {"t-plain": entry("celery.plain", crash_barrier=False)}, app_group(app)
    )
    assert agent.reap() == []
    assert app.AsyncResult("t-plain").state == "PENDING"


class Dispatcher:
    """Stands in for the consumer's event dispatcher: records what is sent."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, kind: str, **fields: Any) -> None:
        self.sent.append((kind, fields))


def test_reaped_orphan_is_announced_as_task_failed_on_the_event_loop(
    store: Store, agent: OrphanReaper
) -> None:
    dead_node(store, "dead@test", {"t-orphan": entry("reap.once")}, app_group(agent.app))
    agent.reap()
    dispatcher = Dispatcher(enabled=True)
    agent.send_events(dispatcher)
    [(kind, fields)] = dispatcher.sent
    assert (kind, fields["uuid"], fields["dead_node"]) == ("task-failed", "t-orphan", "dead@test")
    agent.send_events(dispatcher)
    assert len(dispatcher.sent) == 1


def test_a_dead_node_is_reaped_by_one_live_node_only(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    other = OrphanReaper(app, "other@test", store, grace=0.0)
    dead_node(store, "dead@test", {"t-orphan": entry("reap.once")}, app_group(agent.app))
    assert agent.reap() + other.reap() == ["t-orphan"]


def test_a_claim_whose_reaper_died_before_reaping_is_reaped_by_another_node(
    app: Celery, store: Store, agent: OrphanReaper, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's reply lost with the store (seen in a chaos run) is the same case."""
    monkeypatch.setattr(redis_nodes, "REAP_RECLAIM", 0.5)
    dead_node(store, "dead@test", {"t-orphan": entry("reap.once")}, app_group(agent.app))
    assert [r["node"] for r in store.node_reap(grace=0.0, group=app_group(app))] == ["dead@test"]
    assert agent.reap() == []  # claimed by a reaper that died at once
    time.sleep(0.6)
    assert agent.reap() == ["t-orphan"]
    assert app.AsyncResult("t-orphan").state == "FAILURE"
    agent.reap()  # gives the incarnation back as done
    time.sleep(0.6)
    assert store.node_reap(grace=0.0, group=app_group(app)) == []


def test_live_node_is_not_reaped(app: Celery, store: Store, agent: OrphanReaper) -> None:
    info = hardware.detect()
    queues = QueueReconciler("live@test", info, store)
    live = NodeRegistry("live@test", info, store, queues, group=app_group(app))
    live.register()
    assert store.node_reap(grace=0.0, group=app_group(app)) == []
    assert agent.reap() == []


def test_a_dead_node_of_another_app_is_not_reaped(
    app: Celery, store: Store, agent: OrphanReaper
) -> None:
    dead_node(store, "dead@test", {"t-orphan": entry("reap.once")}, "another-app")
    assert agent.reap() == []
    assert [r["node"] for r in store.node_reap(grace=0.0, group="another-app")] == ["dead@test"]


# -- real nodes, killed for real -------------------------------------------------------------


@pytest.fixture
def fleet(redis_base_url: str) -> Iterator[ChaosFleet]:
    fleet = ChaosFleet.create(redis_base_url, "spreap", BARRIER)
    yield fleet
    if any(node.logs() for node in fleet.nodes.values()):
        print(fleet.logs())
    fleet.close()


def running_on(fleet: ChaosFleet, task_id: str) -> str | None:
    """The node whose registry record lists ``task_id`` in flight, if any."""
    store = store_from_url(fleet.redis_url, key_prefix=fleet.key_prefix)
    return next(
        (
            str(r["node"])
            for r in store.node_list(group=app_group(fleet.client))
            if task_id in (r.get("in_flight") or [])
        ),
        None,
    )


def kill_mid_task(
    fleet: ChaosFleet, task: str, work: float, send: Callable[[], str] | None = None
) -> tuple[str, str, str]:
    """Run ``task`` on one of two nodes and SIGKILL that node (whole group) mid-task.

    ``send`` sends it some other way (returns its id). Returns the dead node,
    the surviving node and the task id.
    """
    names = [fleet.node_name(0), fleet.node_name(1)]
    for name in names:
        fleet.start(name)
    for name in names:
        fleet.nodes[name].wait_ready(60)
    task_id = send() if send is not None else fleet.send(task, work)
    doomed = wait_until(
        lambda: running_on(fleet, task_id), 30, interval=0.2, what=f"{task_id} listed in flight"
    )
    if task == "chaos.once":  # acknowledged on record: killed after that, only the reaper can help
        wait_until(lambda: task_id not in fleet.unacked(), 10, interval=0.05, what="the ack")
    fleet.nodes[doomed].kill()
    return doomed, next(n for n in names if n != doomed), task_id


@pytest.mark.integration
def test_non_idempotent_task_of_a_killed_node_ends_failure_naming_the_node(
    fleet: ChaosFleet,
) -> None:
    doomed, _, task_id = kill_mid_task(fleet, "chaos.once", 60.0)
    killed_at = time.monotonic()
    wait_until(
        lambda: not fleet.unfinished([task_id]), REAP_BOUND, interval=0.2, what=f"{task_id} to end"
    )
    print(f"orphan failed {time.monotonic() - killed_at:.1f}s after its node was killed")
    meta = fleet.states([task_id])[task_id] or {}
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "WorkerCrashedError"
    assert doomed in meta["result"]["exc_message"]
    assert fleet.executions()[task_id] == 1


@pytest.mark.integration
def test_idempotent_task_of_a_killed_node_is_not_failed_but_runs_again(fleet: ChaosFleet) -> None:
    doomed, alive, task_id = kill_mid_task(fleet, "chaos.idempotent", 3.0)
    survivor = fleet.nodes[alive]
    wait_until(lambda: not fleet.unfinished([task_id]), 60, interval=0.2, what=f"{task_id} to end")
    assert (fleet.states([task_id])[task_id] or {})["status"] == "SUCCESS"
    assert fleet.executions()[task_id] == 2
    wait_until(
        lambda: f"node {doomed} is dead" in survivor.logs(),
        REAP_BOUND,
        interval=0.2,
        what="the reaper",
    )
    assert "marked FAILURE" not in survivor.logs()


@pytest.mark.integration
def test_reaped_task_calls_its_errback_and_fails_its_chord(fleet: ChaosFleet) -> None:
    """The record keeps a task's errbacks and chord: the reaper honours them."""
    client = fleet.client
    doomed_id = str(uuid.uuid4())
    header = [
        client.signature("chaos.once", args=(60.0,)).set(
            task_id=doomed_id, link_error=client.signature("chaos.on_error")
        ),
        client.signature("chaos.once", args=(0.1,)),
    ]

    bodies: list[Any] = []

    def send() -> str:
        bodies.append(chord(header, app=client)(client.signature("chaos.collect")))
        return doomed_id

    _, _, task_id = kill_mid_task(fleet, "chaos.once", 60.0, send=send)
    wait_until(
        lambda: not fleet.unfinished([task_id]), REAP_BOUND, interval=0.2, what=f"{task_id} to end"
    )
    assert (fleet.states([task_id])[task_id] or {})["result"]["exc_type"] == "WorkerCrashedError"
    errbacks = f"{fleet.log_key}:errbacks"
    wait_until(lambda: fleet.redis.lrange(errbacks, 0, -1), 30, interval=0.2, what="the errback")
    assert fleet.redis.lrange(errbacks, 0, -1) == [task_id.encode()]
    body_id = str(bodies[0].id)
    wait_until(lambda: not fleet.unfinished([body_id]), 30, interval=0.2, what="the chord body")
    assert (fleet.states([body_id])[body_id] or {})["result"]["exc_type"] == "ChordError"
