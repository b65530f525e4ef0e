"""Helpers for the GPU health and placement worker tests: fake-NVML GPU nodes on real Redis.

``gpu_node()`` starts ``celery -A tests.apps.gpu_app worker`` with a hardware
override (``tests.support.fleet.cuda_hardware``) and a fake NVML scenario file
(``tests.support.fake_nvml``) the test can change while the worker runs.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery import Celery

from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.testing.workers import WorkerNode
from tests.support.fake_nvml import scenario, write_scenario
from tests.support.fleet import ROOT, Fleet, cuda_hardware


def add_gpu_tasks(app: Celery) -> None:
    """The GPU tasks of the tests, on ``app`` (the test process and the workers alike)."""

    @app.task(bind=True, name="gpu_app.on_gpu", shared=False, base=SnakepitTask, device="cuda")
    def on_gpu(self: Any, *, device: Any) -> dict[str, Any]:
        delivery = self.request.delivery_info or {}
        return {
            "node": self.request.hostname,
            "queue": delivery.get("routing_key"),
            "device": str(device),
            "uuid": getattr(device, "uuid", None),
            "pid": os.getpid(),
        }

    @app.task(
        bind=True,
        name="gpu_app.oom_once",
        shared=False,
        base=SnakepitTask,
        device="cuda",
        gpu_memory=10000,
        retry_policy=RetryPolicy(max_attempts=2, backoff=(0.1,), retriable_errors=("gpu_oom",)),
    )
    def oom_once(self: Any, hold: float, *, device: Any) -> dict[str, Any]:
        """Runs out of GPU memory on its first attempt (after ``hold`` s), succeeds after."""
        if self.request.retries == 0:
            time.sleep(hold)
            raise RuntimeError("CUDA out of memory. Tried to allocate 12.00 GiB")
        delivery = self.request.delivery_info or {}
        return {"device": str(device), "queue": delivery.get("routing_key")}

    @app.task(bind=True, name="gpu_app.hold", shared=False, base=SnakepitTask, device="cuda")
    def hold(self: Any, seconds: float, *, device: Any) -> dict[str, Any]:
        time.sleep(seconds)
        return {"device": str(device), "uuid": getattr(device, "uuid", None), "pid": os.getpid()}


def gpu_node(
    fleet: Fleet,
    name: str,
    *,
    gpus: int = 2,
    free_mb: list[int] | None = None,
    concurrency: int = 1,
    env: dict[str, str] | None = None,
    uuid_prefix: str = "GPU-test",
    pool: str = "threads",
) -> tuple[WorkerNode, Path]:
    """Start a fake-NVML CUDA node with ``gpus`` GPUs; returns it and its scenario file.

    GPU ``i`` has UUID ``<uuid_prefix>-<i:04d>`` in both the hardware override and NVML.
    """
    slug = name.replace("@", "_")
    data = scenario(gpus, free_mb)
    hardware = cuda_hardware(gpus)
    for i, (gpu, device) in enumerate(zip(data["gpus"], hardware["cuda"]["devices"], strict=True)):
        gpu["uuid"] = device["uuid"] = f"{uuid_prefix}-{i:04d}"
    nvml = write_scenario(fleet.tmp_path / f"{slug}-nvml.json", data)
    hardware_path = fleet.hardware(slug, hardware)
    worker = WorkerNode(
        "tests.apps.gpu_app",
        name,
        concurrency=concurrency,
        env={
            "WORKER_APP_REDIS_URL": fleet.redis_url,
            "WORKER_APP_KEY_PREFIX": fleet.key_prefix,
            "PYTHONPATH": str(ROOT),
            "SNAKEPIT_HARDWARE": str(hardware_path),
            "SNAKEPIT_FAKE_NVML": str(nvml),
            **(env or {}),
        },
        cwd=str(ROOT),
        pool=pool,
        flags=("--without-mingle", "--without-gossip"),
        log_path=fleet.tmp_path / f"{slug}.log",
    ).start()
    fleet.workers.append(worker)
    fleet.wait_registered(worker)
    return worker, nvml
