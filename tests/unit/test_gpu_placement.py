"""Placement by free GPU memory: the pure decision, the router's reservations, the option."""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

import pytest
from celery import Celery

from snakepit_celery import snakepit_task
from snakepit_celery.celery.router import SnakepitRouter
from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.placement import gpu_room, place_by_memory
from snakepit_celery.policy.routing import Pref, parse_prefs
from snakepit_celery.policy.snapshot import FleetSnapshot
from snakepit_celery.store.memory import MemoryStore


def gpu(index: int, uuid: str, free: int | None, total: int = 81920) -> dict[str, Any]:
    device: dict[str, Any] = {"kind": "cuda", "index": index, "uuid": uuid, "name": "A100"}
    if free is not None:
        device.update(memory_free_mb=free, memory_total_mb=total)
    return device


def fleet(**extra: Any) -> FleetSnapshot:
    nodes = (
        {"node": "a", "devices": [gpu(0, "GPU-a0", 10000), gpu(1, "GPU-a1", 20000)]},
        {"node": "b", "devices": [gpu(0, "GPU-b0", 30000)]},
    )
    return FleetSnapshot(nodes, **extra)


CUDA = (Pref("cuda"),)


def test_the_gpu_with_the_most_room_that_covers_the_need_wins() -> None:
    placed = place_by_memory(CUDA, fleet(), 15000)
    assert placed is not None
    assert (placed.decision.queue, placed.gpu, placed.room_mb) == (
        "snakepit.node.b.cuda.0",
        "GPU-b0",
        30000,
    )


def test_reservations_reduce_the_room() -> None:
    placed = place_by_memory(CUDA, fleet(reserved={"GPU-b0": 25000}), 15000)
    assert placed is not None and placed.gpu == "GPU-a1"


def test_equal_room_is_broken_by_node_name() -> None:
    snapshot = FleetSnapshot(
        (
            {"node": "x", "devices": [gpu(0, "GPU-x", 5000)]},
            {"node": "y", "devices": [gpu(0, "GPU-y", 5000)]},
        )
    )
    first = place_by_memory(CUDA, snapshot, 100)
    assert first is not None and first.decision.node == "y"


def test_tainted_gpus_and_nodes_offer_no_room() -> None:
    taints = frozenset({"device:b:GPU-b0", "worker:a"})
    assert gpu_room(fleet(taints=taints), Pref("cuda")) == []


def test_no_room_anywhere_waits_in_the_kinds_shared_queue() -> None:
    placed = place_by_memory(CUDA, fleet(), 50000)
    assert placed is not None and placed.decision.waiting and placed.gpu is None
    assert placed.decision.queue == "snakepit.cuda"


def test_no_room_on_gpus_falls_to_the_next_preference() -> None:
    assert place_by_memory(parse_prefs(["cuda", "cpu"]), fleet(), 50000) is None


def test_gpus_without_memory_figures_leave_routing_to_the_device_router() -> None:
    snapshot = FleetSnapshot(({"node": "c", "devices": [gpu(0, "GPU-c", None)]},))
    assert place_by_memory(CUDA, snapshot, 1) is None


def test_explicit_index_is_placed_only_on_that_index() -> None:
    placed = place_by_memory((Pref("cuda", 1),), fleet(), 100)
    assert placed is not None and placed.decision.queue == "snakepit.node.a.cuda.1"


# -- the router ------------------------------------------------------------------------------


def router(snapshot: FleetSnapshot, store: MemoryStore) -> SnakepitRouter:
    def reserve(gpu_id: str, mb: int, capacity: int) -> bool:
        return store.gpu_reserve(gpu_id, uuid4().hex, mb=mb, capacity_mb=capacity, ttl=30)

    return SnakepitRouter(lambda: snapshot, reserve=reserve)


def test_two_senders_racing_for_the_last_room_do_not_both_get_it() -> None:
    store = MemoryStore()
    snapshot = fleet()
    first, second = router(snapshot, store), router(snapshot, store)  # two processes
    a = first(name="t", options={"device": "cuda", "gpu_memory": 20000})
    b = second(name="t", options={"device": "cuda", "gpu_memory": 20000})
    assert a == {"queue": "snakepit.node.b.cuda.0"}
    assert b == {"queue": "snakepit.node.a.cuda.1"}
    c = second(name="t", options={"device": "cuda", "gpu_memory": 20000})
    assert c == {"queue": "snakepit.cuda"}  # no room left: waits
    assert store.gpu_reservations() == {"GPU-b0": 20000, "GPU-a1": 20000}


def test_per_call_header_overrides_the_tasks_gpu_memory() -> None:
    store = MemoryStore()
    route = router(fleet(), store)
    task = type("T", (), {"device": "cuda", "gpu_memory": 50000, "name": "t"})()
    assert route(name="t", options={}, task=task) == {"queue": "snakepit.cuda"}
    headers = {"headers": {"gpu_memory": 100}}
    assert route(name="t", options=headers, task=task) == {"queue": "snakepit.node.b.cuda.0"}


@pytest.mark.parametrize("bad", [0, -5, "lots", True, float("inf")])
def test_bad_per_call_gpu_memory_is_a_config_error(bad: Any) -> None:
    with pytest.raises(ConfigError, match="gpu_memory"):
        router(fleet(), MemoryStore())(name="t", options={"device": "cuda", "gpu_memory": bad})


@pytest.mark.parametrize("bad", [0, -1, "8GB", [1], False])
def test_bad_gpu_memory_is_a_config_error_at_declaration(bad: Any) -> None:
    app = Celery(set_as_current=False)
    with pytest.raises(ConfigError, match="gpu_memory"):
        snakepit_task(app=app, device="cuda", gpu_memory=bad)(lambda: None)


def test_gpu_memory_option_is_kept_on_the_task() -> None:
    app = Celery(set_as_current=False)

    @snakepit_task(app=app, device="cuda", gpu_memory=2048)
    def train() -> None: ...

    assert train.gpu_memory == 2048


# -- the store --------------------------------------------------------------------------------


def test_store_reserves_only_within_capacity(each_store: Any) -> None:
    assert each_store.gpu_reserve("GPU-1", "r1", mb=600, capacity_mb=1000, ttl=30)
    assert not each_store.gpu_reserve("GPU-1", "r2", mb=600, capacity_mb=1000, ttl=30)
    assert each_store.gpu_reserve("GPU-2", "r3", mb=600, capacity_mb=1000, ttl=30)
    assert each_store.gpu_reservations() == {"GPU-1": 600, "GPU-2": 600}


def test_store_reservations_expire(each_store: Any) -> None:
    assert each_store.gpu_reserve("GPU-1", "r1", mb=600, capacity_mb=1000, ttl=0.05)
    time.sleep(0.1)
    assert each_store.gpu_reservations() == {}
    assert each_store.gpu_reserve("GPU-1", "r2", mb=900, capacity_mb=1000, ttl=30)


# -- out-of-memory retries -------------------------------------------------------------------


class RunningTask:
    """A task whose request is current, running on GPU ``GPU-a0``."""

    name = "t"
    device = "cuda"
    gpu_memory = 8000
    request = type("Request", (), {"id": "task-1", "task": "t"})()
    resolved_device = type("Device", (), {"uuid": "GPU-a0"})()


def test_oom_retry_is_recognised_only_while_an_oom_is_handled() -> None:
    from snakepit_celery.celery.oom_retry import oom_retry_gpu

    assert oom_retry_gpu(RunningTask()) is None  # no error being handled
    try:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except RuntimeError:
        assert oom_retry_gpu(RunningTask()) == "GPU-a0"
    try:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")
    except RuntimeError:
        assert oom_retry_gpu(RunningTask()) is None


def test_oom_retry_goes_to_a_gpu_with_more_room_than_the_failed_one() -> None:
    store = MemoryStore()
    route = router(fleet(), store)
    options: dict[str, Any] = {"routing_key": "snakepit.node.a.cuda.0", "exchange": "x"}
    try:
        raise RuntimeError("torch.OutOfMemoryError: CUDA out of memory")
    except RuntimeError:
        moved = route(name="t", options=options, task=RunningTask())
    assert moved == {"queue": "snakepit.node.b.cuda.0"}
    assert "routing_key" not in options and "exchange" not in options
