"""GPU-aware routing across real workers on real Redis (hardware overridden per node)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.errors import DeviceNotAvailableError
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.testing import wait_until
from tests.support.fleet import CPU_HARDWARE, Fleet, cuda_hardware, fleet_fixture

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RESULT_TIMEOUT = 20.0


@pytest.fixture
def fleet(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(redis_url, key_prefix, tmp_path)


@pytest.fixture
def two_nodes(fleet: Fleet) -> Fleet:
    """One CPU-only node and one CUDA node with one GPU."""
    fleet.start("cpu@test", CPU_HARDWARE)
    fleet.start("cuda@test", cuda_hardware(1))
    return fleet


def run(fleet: Fleet, name: str, *args: Any) -> dict[str, Any]:
    result = fleet.app.tasks[name].apply_async(args)
    value: dict[str, Any] = result.get(timeout=RESULT_TIMEOUT)
    return value


def barrier(fleet: Fleet) -> CrashBarrier:
    return CrashBarrier(CrashBarrierConfig(enabled=True), pool="default", store=fleet.store)


def test_cuda_tasks_land_only_on_the_cuda_node(two_nodes: Fleet) -> None:
    results = [run(two_nodes, "worker_app.only_cuda") for _ in range(6)]
    assert {r["node"] for r in results} == {"cuda@test"}
    assert {r["queue"] for r in results} == {two_nodes.queue("cuda")}


def test_tasks_without_device_use_the_default_queue(two_nodes: Fleet) -> None:
    assert run(two_nodes, "worker_app.plain")["queue"] == "celery"


def test_tainted_device_reroutes_to_the_next_preference(two_nodes: Fleet) -> None:
    assert run(two_nodes, "worker_app.prefer_cuda")["queue"] == two_nodes.queue("cuda")
    barrier(two_nodes).taint_device("cuda@test", "cuda:0")
    two_nodes.router().invalidate()
    results = [run(two_nodes, "worker_app.prefer_cuda") for _ in range(4)]
    assert {r["queue"] for r in results} == {two_nodes.queue("cpu")}


def test_task_rerouted_off_a_tainted_gpu_runs_on_the_cpu_even_on_the_gpu_node(
    two_nodes: Fleet,
) -> None:
    before = run(two_nodes, "worker_app.device_used")
    assert (before["node"], before["device"]) == ("cuda@test", "cuda:0")
    barrier(two_nodes).taint_device("cuda@test", "cuda:0")
    two_nodes.router().invalidate()
    results = [run(two_nodes, "worker_app.device_used") for _ in range(6)]
    assert {r["queue"] for r in results} == {two_nodes.queue("cpu")}
    assert {r["device"] for r in results} == {"cpu"}


@pytest.mark.parametrize("pool", ["threads", "prefork", "solo"])
def test_tainted_device_releases_its_queues_on_the_node(fleet: Fleet, pool: str) -> None:
    fleet.start("cuda@test", cuda_hardware(1), pool=pool, concurrency=1)
    barrier(fleet).taint_device("cuda@test", "cuda:0")

    def released() -> bool:
        queues = (fleet.node("cuda@test") or {}).get("queues", [])
        return fleet.queue("cpu") in queues and fleet.queue("cuda") not in queues

    wait_until(released, 15, what="cuda@test to release snakepit.cuda")
    queues = (fleet.node("cuda@test") or {})["queues"]
    assert fleet.queue("node.cuda@test.cuda.0") not in queues
    assert fleet.queue("cpu") in queues
    assert run(fleet, "worker_app.prefer_cuda")["queue"] == fleet.queue("cpu")


def test_device_queues_come_back_when_the_taint_is_cleared(two_nodes: Fleet) -> None:
    crash_barrier = barrier(two_nodes)
    crash_barrier.taint_device("cuda@test", "cuda:0")
    released = [two_nodes.queue("cpu"), two_nodes.queue("node.cuda@test"), "celery"]
    wait_until(
        lambda: (two_nodes.node("cuda@test") or {}).get("queues") == released, 15, what="release"
    )
    crash_barrier.clear_taint(node="cuda@test")
    wait_until(
        lambda: two_nodes.queue("cuda") in (two_nodes.node("cuda@test") or {}).get("queues", []),
        15,
        what="queues to come back",
    )
    two_nodes.router().invalidate()
    assert run(two_nodes, "worker_app.only_cuda")["node"] == "cuda@test"


def test_cuda_only_task_fails_at_send_time_when_its_device_is_tainted(two_nodes: Fleet) -> None:
    barrier(two_nodes).taint_device("cuda@test", "cuda:0")
    two_nodes.router().invalidate()
    with pytest.raises(DeviceNotAvailableError) as info:
        two_nodes.app.tasks["worker_app.only_cuda"].apply_async()
    assert "worker_app.only_cuda" in str(info.value)


def test_tainted_node_stops_consuming_while_another_node_is_live(two_nodes: Fleet) -> None:
    barrier(two_nodes).taint_worker("cuda@test")
    wait_until(
        lambda: (two_nodes.node("cuda@test") or {}).get("queues") == [],
        15,
        what="cuda@test to release all queues",
    )
    two_nodes.router().invalidate()
    results = [run(two_nodes, "worker_app.prefer_cuda") for _ in range(3)]
    assert {r["node"] for r in results} == {"cpu@test"}


def test_tainted_node_keeps_consuming_when_it_is_the_only_node(fleet: Fleet) -> None:
    fleet.start("cuda@test", cuda_hardware(1))
    barrier(fleet).taint_worker("cuda@test")
    wait_until(
        lambda: (fleet.node("cuda@test") or {}).get("tainted") is True, 15, what="taint seen"
    )
    fleet.router().invalidate()
    assert run(fleet, "worker_app.only_cuda")["node"] == "cuda@test"


def test_dead_node_is_skipped_once_its_heartbeat_expires(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    cuda = fleet.start("cuda@test", cuda_hardware(1))
    cuda.stop(signal.SIGKILL)
    assert fleet.node("cuda@test") is not None  # a killed node cannot say goodbye
    wait_until(lambda: fleet.node("cuda@test") is None, 15, what="the heartbeat to expire")
    fleet.router().invalidate()
    assert run(fleet, "worker_app.prefer_cuda")["node"] == "cpu@test"
    with pytest.raises(DeviceNotAvailableError):
        fleet.app.tasks["worker_app.only_cuda"].apply_async()


def test_explicit_device_index_goes_to_that_device_queue(fleet: Fleet) -> None:
    fleet.start("big@test", cuda_hardware(2))
    result = fleet.app.tasks["worker_app.plain"].apply_async(device="cuda:1")
    assert result.get(timeout=RESULT_TIMEOUT)["queue"] == fleet.queue("node.big@test.cuda.1")
