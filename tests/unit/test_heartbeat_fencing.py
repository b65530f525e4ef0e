"""The heartbeat's side of node death: fencing a reaped node, and not reaping after a gap.

A node whose incarnation was reaped (declared dead while it was only paused)
learns it at its next heartbeat: the store refuses the record and the
heartbeat calls ``on_reaped`` (the worker then stops at once: ``fence.py``).
A node reaps others only after its own beats went through without a gap for
a TTL plus the grace, so nodes coming back together from a store outage do
not reap each other. Driven in this process on a ``MemoryStore``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.worker import state as worker_state

from snakepit_celery import hardware
from snakepit_celery.celery.bootsteps.in_flight import HeldDelivery
from snakepit_celery.celery.bootsteps.queues import QueueReconciler
from snakepit_celery.celery.bootsteps.reaper import OrphanReaper
from snakepit_celery.celery.bootsteps.registry import Heartbeat, NodeRegistry
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task
from snakepit_celery.store import MemoryStore

TTL = 0.2


@dataclass(eq=False)
class Running:
    """What the record reads of a running Celery request."""

    id: str
    task: Any
    name: str


def heartbeat(store: MemoryStore, name: str, reaped: list[str], **kwargs: Any) -> Heartbeat:
    info = hardware.detect()
    registry = NodeRegistry(
        name, info, store, QueueReconciler(name, info, store), ttl=TTL, interval=0.05, **kwargs
    )
    reaper = OrphanReaper(Celery("fencing_test", set_as_current=False), name, store, grace=0.0)
    return Heartbeat(registry, reaper, on_reaped=lambda: reaped.append(name))


def test_reaped_node_is_told_at_its_next_heartbeat() -> None:
    store, reaped = MemoryStore(), []
    beat = heartbeat(store, "paused@test", reaped)
    beat.beat()
    time.sleep(TTL + 0.1)  # paused past its TTL ...
    assert [r["node"] for r in store.node_reap(grace=0.0)] == ["paused@test"]
    beat.beat()  # ... and back
    assert reaped == ["paused@test"]
    assert store.node_list() == []


def test_late_heartbeat_of_an_unreaped_node_goes_through() -> None:
    store, reaped = MemoryStore(), []
    beat = heartbeat(store, "slow@test", reaped)
    beat.beat()
    time.sleep(TTL + 0.1)
    beat.beat()
    assert reaped == []
    assert [r["node"] for r in store.node_list()] == ["slow@test"]


def test_node_reaps_only_after_beating_without_a_gap_for_a_ttl_and_grace() -> None:
    store, reaped = MemoryStore(), []
    beat = heartbeat(store, "live@test", reaped)
    assert beat.may_reap() is False
    beat.beat()
    assert beat.may_reap() is False
    time.sleep(TTL + 0.05)
    beat.beat()
    assert beat.may_reap() is True


def test_record_lists_the_delivery_tags_the_node_holds() -> None:
    held = [HeldDelivery("tag-1", "task-1", "app.task")]
    store, reaped = MemoryStore(), []
    beat = heartbeat(store, "n@test", reaped, held=lambda: held)
    assert beat.registry.new_messages_held() is True
    beat.beat()
    [record] = store.node_list()
    assert record["held"] == [["tag-1", "task-1", "app.task"]]
    assert beat.registry.new_messages_held() is False
    held.append(HeldDelivery("tag-2", "task-2", "app.task"))
    assert beat.registry.new_messages_held() is True


def test_a_crash_barrier_task_that_starts_calls_for_a_record_early_acked_or_not() -> None:
    """A reaper tells a running task (its loss a crash) from a prefetched one by the record:
    any crash-barrier task that starts, idempotent (acked late) included, is listed within
    one in-flight poll, not only at the next beat."""
    app = Celery("started_test", set_as_current=False)
    app.conf.snakepit_store_url = "memory://"
    app.conf.snakepit_crash_barrier = {"enabled": True}
    install(app)

    @snakepit_task(app=app, name="started.idem", idempotent=True, shared=False)
    def idem() -> None:
        return None

    store, reaped = MemoryStore(), []
    beat = heartbeat(store, "n@test", reaped)
    beat.beat()
    assert beat.registry.barrier_task_started() is False
    request = Running(id="running-1", task=idem, name="started.idem")
    worker_state.active_requests.add(request)
    try:
        assert beat.registry.barrier_task_started() is True
        beat.beat()
        assert beat.registry.barrier_task_started() is False
        [record] = store.node_list()
        assert record["in_flight"] == ["running-1"]
    finally:
        worker_state.active_requests.discard(request)
        app.close()
