"""Helpers of the ``celery snakepit`` command-line tests: the app they run against,
its fixtures, and the state they make with the real objects.

``make_app(store_url, key_prefix)`` builds one per test (``tests/apps/cli_app.py``
builds one at import for ``celery -A``). Its tasks carry the options the CLI
discovers breakers and pools from. Test modules import the fixtures ``app``,
``store`` and ``gpu_host`` from here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from snakepit_celery import hardware
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.cli import snakepit
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task
from snakepit_celery.health import HealthMonitor
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.store import Store, set_default_store, set_fail_open
from tests.support import ROOT

CELERY = Path(sys.executable).with_name("celery")


def make_app(store_url: str | None = None, key_prefix: str | None = None) -> Celery:
    """An installed app: ``charge`` uses breaker ``payments``, ``infer`` its own in pool ``gpu``."""
    broker = store_url or os.environ.get("SNAKEPIT_STORE_URL", "redis://127.0.0.1:6379/0")
    app = Celery("cli_app", broker=broker, backend=broker, set_as_current=False)
    if store_url:
        app.conf.snakepit_store_url = store_url
    if key_prefix:
        app.conf.snakepit_key_prefix = key_prefix
    app.conf.snakepit_breaker = {"failure_threshold": 2, "reset_timeout": 60.0}
    install(app)

    @snakepit_task(app=app, name="cli_app.charge", breaker="payments", shared=False)
    def charge(amount: int) -> int:
        return amount

    @snakepit_task(app=app, name="cli_app.infer", breaker=True, pool="gpu", shared=False)
    def infer(batch: list[Any]) -> int:
        return len(batch)

    return app


GPU_HOST = {
    "accelerator": "cuda",
    "platform": "linux-x86_64",
    "cpu": {
        "cores": 8,
        "threads": 16,
        "model": "Test CPU",
        "features": ["avx", "avx2"],
        "memory_total_mb": 65536,
    },
    "cuda": {
        "version": "12.4",
        "driver_version": "550.54.15",
        "cudnn_version": None,
        "devices": [
            {
                "id": i,
                "name": "NVIDIA A100-SXM4-80GB",
                "memory_total_mb": 81920,
                "memory_free_mb": 81000,
                "compute_capability": "8.0",
                "uuid": f"GPU-0000000{i}-aaaa-bbbb-cccc-dddddddddddd",
            }
            for i in range(2)
        ],
    },
    "mps": None,
    "rocm": None,
}


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    """An installed app on this test's keys; install()'s process-wide defaults are undone after."""
    yield make_app(redis_url, key_prefix)
    set_default_store(None)
    set_fail_open(True)


@pytest.fixture
def store(redis_store: Store) -> Store:
    return redis_store


@pytest.fixture
def gpu_host(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "gpu-host.json"
    path.write_text(json.dumps(GPU_HOST))
    yield path
    hardware.configure(None)


def run(app: Celery, *args: str) -> Result:
    """Invoke ``celery -A app snakepit <args>`` in-process, the way Celery's group does."""
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(snakepit, list(args), obj=obj, catch_exceptions=False)


def run_json(app: Celery, *args: str) -> tuple[int, Any]:
    result = run(app, *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def register_node(
    store: Store, node: str, *, group: str, accelerator: str = "cpu", gpus: int = 0
) -> None:
    """Register ``node`` in ``group`` (the app's, ``app_group``) as a live worker would."""
    devices = [
        {"kind": "cuda", "index": i, "name": "NVIDIA A100", "uuid": f"GPU-{i}"} for i in range(gpus)
    ]
    store.node_register(
        node,
        {
            "identity": {
                "platform": "linux-x86_64",
                "accelerator": accelerator,
                "cpu_features": ["avx2"],
                "gpu_count": gpus,
            },
            "devices": devices,
            "queues": ["snakepit.cpu", f"snakepit.node.{node}"],
        },
        ttl=60.0,
        group=group,
    )


def open_breaker(store: Store, name: str) -> None:
    breaker = CircuitBreaker(name, failure_threshold=2, reset_timeout=60.0, store=store)
    breaker.record_failure()
    breaker.record_failure()


def crash_pool(store: Store, pool: str, times: int) -> None:
    monitor = HealthMonitor(pool, store=store)
    for i in range(times):
        monitor.record_crash(f"worker-{i % 3}", reason="segfault")


def barrier(store: Store, pool: str = "default") -> CrashBarrier:
    return CrashBarrier(CrashBarrierConfig(taint_duration=120.0), pool=pool, store=store)


def taint_worker_and_device(store: Store) -> None:
    crash = barrier(store)
    crash.taint_worker("cpu@host-a", crash.crash_info(139))
    crash.taint_device("gpu0@host-b", "cuda:0", crash.crash_info(139))


def celery_cli(redis_url: str, key_prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SNAKEPIT_STORE_URL": redis_url,
        "SNAKEPIT_KEY_PREFIX": key_prefix,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(
        [str(CELERY), "-A", "tests.apps.cli_app", "snakepit", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
