"""GPU health and placement across real workers on real Redis, NVML faked at the boundary."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snakepit_celery.testing import wait_until
from tests.support.fake_nvml import XID_EVENT, add_event, write_scenario
from tests.support.fleet import Fleet, fleet_fixture, make_app
from tests.support.gpu import gpu_node

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RESULT_TIMEOUT = 20.0
GPU0, GPU1 = "GPU-test-0000", "GPU-test-0001"


@pytest.fixture
def fleet(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(redis_url, key_prefix, tmp_path)


def device_taints(fleet: Fleet) -> list[str]:
    return [t.member for t in fleet.store.taint_list("default") if t.member.startswith("device:")]


def test_xid_79_taints_that_gpu_only_and_a_queued_cuda_task_runs_on_the_other(
    fleet: Fleet,
) -> None:
    worker, nvml = gpu_node(fleet, "gpu@xid", gpus=2, concurrency=1)
    first = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    assert (first["device"], first["uuid"]) == ("cuda:0", GPU0)
    busy = fleet.app.tasks["worker_app.sleep"].apply_async((2.0,), queue=fleet.queue("cuda"))
    queued = fleet.app.send_task("gpu_app.on_gpu", kwargs={}, device="cuda")
    time.sleep(0.3)
    sent = time.monotonic()
    add_event(nvml, GPU0, XID_EVENT, 79)
    wait_until(lambda: device_taints(fleet), 5, what="the GPU taint")
    assert time.monotonic() - sent < 1.5  # one event wait + one store write, on a loaded box
    assert device_taints(fleet) == [f"device:gpu@xid:{GPU0}"]

    def released() -> bool:
        record = fleet.node("gpu@xid") or {}
        return fleet.queue("node.gpu@xid.cuda.0") not in record.get("queues", ())

    wait_until(released, 5, what="the tainted GPU's queue to be released")
    record = fleet.node("gpu@xid") or {}
    assert fleet.queue("node.gpu@xid.cuda.1") in record["queues"]
    health = {d["uuid"]: d.get("health") for d in record["devices"]}
    assert health == {GPU0: "hardware", GPU1: "ok"}
    busy.get(timeout=RESULT_TIMEOUT)
    result: dict[str, Any] = queued.get(timeout=RESULT_TIMEOUT)
    assert (result["device"], result["uuid"]) == ("cuda:1", GPU1)
    assert worker.alive()


def test_transient_finding_expires_and_the_gpu_returns_after_a_passing_probe(
    fleet: Fleet,
) -> None:
    worker, nvml = gpu_node(
        fleet, "gpu@transient", gpus=2, env={"SNAKEPIT_GPU_HEALTH": '{"base": 1.0}'}
    )
    add_event(nvml, GPU1, XID_EVENT, 4242)  # unknown Xid: blamed on the GPU, transient
    wait_until(lambda: device_taints(fleet), 5, what="the GPU taint")
    taint = fleet.store.taint_list("default")[0]
    assert taint.details["gpu_health"] == "transient"
    wait_until(lambda: not device_taints(fleet), 20, what="the GPU to come back")

    def consumed_again() -> bool:
        record = fleet.node("gpu@transient") or {}
        return fleet.queue("node.gpu@transient.cuda.1") in record.get("queues", ())

    wait_until(consumed_again, 10, what="its queue to come back")
    assert worker.alive()


def memory_reported(fleet: Fleet, node: str) -> bool:
    record = fleet.node(node) or {}
    return all("memory_free_mb" in d for d in record.get("devices", ())) and bool(record)


def test_gpu_memory_routes_to_the_node_with_room_and_racers_do_not_share_the_last_room(
    fleet: Fleet,
) -> None:
    gpu_node(fleet, "gpu@small", gpus=1, free_mb=[12000], uuid_prefix="GPU-small")
    gpu_node(fleet, "gpu@big", gpus=1, free_mb=[30000], uuid_prefix="GPU-big")
    for node in ("gpu@small", "gpu@big"):
        wait_until(lambda node=node: memory_reported(fleet, node), 15, what=f"{node} memory")
    other = make_app(fleet.redis_url, fleet.key_prefix)  # a second sender (its own router)
    try:
        first = fleet.app.send_task("gpu_app.on_gpu", device="cuda", gpu_memory=20000)
        second = other.send_task("gpu_app.on_gpu", device="cuda", gpu_memory=20000)
        small = fleet.app.send_task("gpu_app.on_gpu", device="cuda", gpu_memory=11000)
        results = [r.get(timeout=RESULT_TIMEOUT) for r in (first, second, small)]
    finally:
        other.close()
    assert results[0]["queue"] == fleet.queue("node.gpu@big.cuda.0")
    assert results[0]["uuid"] == "GPU-big-0000"
    assert results[1]["queue"] == fleet.queue("cuda")  # lost the race: waits for room
    assert results[2]["queue"] == fleet.queue(
        "node.gpu@small.cuda.0"
    )  # big has 10000 left: too little
    assert fleet.store.gpu_reservations() == {"GPU-big-0000": 20000, "GPU-small-0000": 11000}


def test_child_that_ran_on_a_gpu_with_a_finding_is_recycled_after_its_result(
    fleet: Fleet,
) -> None:
    worker, nvml = gpu_node(fleet, "gpu@prefork", gpus=2, pool="prefork")
    before = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    held = fleet.app.send_task("gpu_app.hold", args=(2.0,), device="cuda")
    time.sleep(1.0)
    add_event(nvml, before["uuid"], XID_EVENT, 13)  # application Xid: recycle, no taint
    result = held.get(timeout=RESULT_TIMEOUT)  # the result is stored first
    assert result["pid"] == before["pid"]
    after = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    assert after["pid"] != before["pid"]
    assert device_taints(fleet) == []
    assert worker.alive()


def test_child_on_a_healthy_gpu_is_kept_when_another_gpu_has_a_finding(fleet: Fleet) -> None:
    worker, nvml = gpu_node(fleet, "gpu@keep", gpus=2, pool="prefork")
    before = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    held = fleet.app.send_task("gpu_app.hold", args=(1.5,), device="cuda")
    time.sleep(0.8)
    other = GPU1 if before["uuid"] == GPU0 else GPU0
    add_event(nvml, other, XID_EVENT, 13)
    held.get(timeout=RESULT_TIMEOUT)
    after = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    assert after["pid"] == before["pid"]
    assert worker.alive()


def test_child_holding_more_gpu_memory_than_the_limit_is_recycled(fleet: Fleet) -> None:
    worker, nvml = gpu_node(
        fleet,
        "gpu@memcap",
        gpus=1,
        pool="prefork",
        env={"SNAKEPIT_MAX_GPU_MEMORY_PER_CHILD": "1000"},
    )
    first = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    second = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    assert second["pid"] == first["pid"]  # holds nothing: kept
    time.sleep(1.0)  # its after-task check is done
    data = json.loads(nvml.read_text())
    data["processes"] = [{"pid": first["pid"], "uuid": GPU0, "mb": 4000}]
    write_scenario(nvml, data)
    third = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    assert third["pid"] == first["pid"]  # its result is stored, then the child goes
    fourth = fleet.app.send_task("gpu_app.on_gpu", device="cuda").get(timeout=RESULT_TIMEOUT)
    assert fourth["pid"] != first["pid"]
    assert worker.alive()


def test_out_of_memory_retry_lands_on_the_other_gpu_with_more_room(fleet: Fleet) -> None:
    gpu_node(fleet, "gpu@oom", gpus=2, free_mb=[20000, 50000])
    wait_until(lambda: memory_reported(fleet, "gpu@oom"), 15, what="GPU memory in the record")
    # Someone else holds GPU 1's room for 2 s: the first attempt goes to GPU 0.
    assert fleet.store.gpu_reserve(GPU1, "other", mb=45000, capacity_mb=50000, ttl=2.0)
    result = fleet.app.send_task("gpu_app.oom_once", args=(2.5,), device="cuda", gpu_memory=10000)
    value: dict[str, Any] = result.get(timeout=RESULT_TIMEOUT)
    assert value == {"device": "cuda:1", "queue": fleet.queue("node.gpu@oom.cuda.1")}
