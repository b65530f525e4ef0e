"""The worker bootstep against real Redis: node record, heartbeat, lock file, clean exit."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import (
    CPU_HARDWARE,
    Fleet,
    cuda_hardware,
    fleet_fixture,
    wait_until,
    worker_node,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def fleet(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    yield from fleet_fixture(redis_url, key_prefix, tmp_path)


def lock_for_cuda(path: Path, gpus: int) -> Path:
    """A lock file pinning a CUDA host with ``gpus`` GPUs (upstream shape)."""
    lock = {
        "generated_at": "2025-01-01T00:00:00Z",
        "hardware": {
            "platform": "linux-x86_64",
            "accelerator": "cuda",
            "cpu_features": ["avx"],
            "gpu_count": gpus,
        },
        "dependencies": {},
        "compatibility": {"cuda_required": True, "min_gpu_count": gpus, "cpu_features": ["avx"]},
    }
    path.write_text(json.dumps(lock))
    return path


def test_node_record_describes_the_worker(fleet: Fleet) -> None:
    worker = fleet.start("cuda@test", cuda_hardware(2))
    record = fleet.node("cuda@test")
    assert record is not None
    assert worker.process is not None
    assert record["pid"] == worker.process.pid
    assert record["worker_pids"] == [worker.process.pid]  # threads pool: tasks run in it
    assert record["state"] == "running"
    assert record["tainted"] is False
    assert record["identity"] == {
        "platform": "linux-x86_64",
        "accelerator": "cuda",
        "cpu_features": ["avx", "avx2", "sse4_2"],
        "gpu_count": 2,
    }
    assert [(d["kind"], d["index"], d["uuid"]) for d in record["devices"]] == [
        ("cuda", 0, "GPU-test-0000"),
        ("cuda", 1, "GPU-test-0001"),
    ]
    assert record["hostname"]
    assert record["in_flight"] == []


def test_node_consumes_the_snakepit_queues_of_its_hardware(fleet: Fleet) -> None:
    fleet.start("cuda@test", cuda_hardware(1))
    record = fleet.node("cuda@test") or {}
    assert record["queues"] == [
        fleet.queue("cpu"),
        fleet.queue("cuda"),
        fleet.queue("node.cuda@test"),
        fleet.queue("node.cuda@test.cuda.0"),
        "celery",
    ]


def test_cpu_node_has_no_devices(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    record = fleet.node("cpu@test") or {}
    assert record["devices"] == []
    assert record["identity"]["accelerator"] == "cpu"
    assert fleet.queue("cuda") not in record["queues"]


def test_heartbeat_keeps_refreshing_the_record(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    time.sleep(3.0)  # longer than one heartbeat interval, shorter than the TTL
    record = fleet.node("cpu@test")
    assert record is not None
    assert record["heartbeat_age"] < 2.5


def test_running_task_ids_travel_in_the_heartbeat(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    result = fleet.app.tasks["worker_app.sleep"].apply_async((6.0,), queue="celery")
    wait_until(
        lambda: result.id in (fleet.node("cpu@test") or {}).get("in_flight", []),
        10,
        what="the running task in the heartbeat",
    )
    result.get(timeout=20)


def test_clean_shutdown_removes_the_node_at_once(fleet: Fleet) -> None:
    worker = fleet.start("cpu@test", CPU_HARDWARE)
    assert worker.stop(signal.SIGTERM) == 0
    assert fleet.node("cpu@test") is None
    assert "left the fleet" in worker.logs()


def test_node_registry_lists_several_nodes(fleet: Fleet) -> None:
    fleet.start("cpu@test", CPU_HARDWARE)
    fleet.start("cuda@test", cuda_hardware(1))
    assert [r["node"] for r in fleet.nodes()] == ["cpu@test", "cuda@test"]


def test_worker_refuses_to_start_on_a_lock_file_mismatch(fleet: Fleet) -> None:
    lock = lock_for_cuda(fleet.tmp_path / "snakepit.lock", gpus=1)
    worker = fleet.start(
        "cpu@test", CPU_HARDWARE, wait=False, env={"SNAKEPIT_LOCK_FILE": str(lock)}
    )
    assert worker.wait_exit(timeout=60) == 1
    lines = [line for line in worker.logs().splitlines() if "refuses to start" in line]
    assert len(lines) == 1
    assert "accelerator_mismatch" in lines[0]
    assert fleet.node("cpu@test") is None


def test_worker_refuses_too_few_gpus(fleet: Fleet) -> None:
    lock = lock_for_cuda(fleet.tmp_path / "snakepit.lock", gpus=4)
    worker = fleet.start(
        "cuda@test", cuda_hardware(1), wait=False, env={"SNAKEPIT_LOCK_FILE": str(lock)}
    )
    assert worker.wait_exit(timeout=60) == 1
    assert "insufficient_gpus" in worker.logs()


def test_worker_starts_when_the_lock_file_matches(fleet: Fleet) -> None:
    lock = lock_for_cuda(fleet.tmp_path / "snakepit.lock", gpus=1)
    fleet.start("cuda@test", cuda_hardware(1), env={"SNAKEPIT_LOCK_FILE": str(lock)})
    assert fleet.node("cuda@test") is not None


def test_worker_refuses_a_broken_hardware_override(fleet: Fleet) -> None:
    bad = fleet.tmp_path / "bad.json"
    bad.write_text("{not json")
    worker = worker_node(
        "cpu@test", fleet.redis_url, fleet.key_prefix, fleet.tmp_path, hardware=bad
    ).start()
    fleet.workers.append(worker)
    assert worker.wait_exit(timeout=60) == 1
    assert "not valid JSON" in worker.logs()
    assert os.fspath(bad) in worker.logs()
