"""Helpers for the worker, routing and event integration tests: real Redis, real workers.

``make_app(redis_url, key_prefix)`` builds the Celery app both the test and
its worker subprocesses use (``tests/apps/worker_app.py`` builds it from env).
Every Redis key of a test, broker and store alike, starts with the test's key
prefix, so tests running side by side on one Redis never see each other's
queues. ``worker_node()`` starts ``celery worker`` with an overridden hardware
identity (``SNAKEPIT_HARDWARE``) and stops it within bounded time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TypeVar

from celery import Celery

from snakepit_celery.celery.app_context import app_group, namespace
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.workers import WorkerNode, stop_all
from tests.support import ROOT

T = TypeVar("T")

CPU_HARDWARE: dict[str, Any] = {
    "accelerator": "cpu",
    "cpu": {
        "cores": 2,
        "threads": 2,
        "model": "Test CPU",
        "features": ["avx", "avx2", "sse4_2"],
        "memory_total_mb": 4096,
    },
    "cuda": None,
    "mps": None,
    "rocm": None,
    "platform": "linux-x86_64",
}


def cuda_hardware(gpus: int = 1) -> dict[str, Any]:
    """A CUDA host with ``gpus`` fake A100s (UUIDs ``GPU-test-<i>``)."""
    devices = [
        {
            "id": i,
            "name": "NVIDIA A100-SXM4-80GB",
            "memory_total_mb": 81920,
            "memory_free_mb": 81000,
            "compute_capability": "8.0",
            "uuid": f"GPU-test-{i:04d}",
        }
        for i in range(gpus)
    ]
    return {
        **CPU_HARDWARE,
        "accelerator": "cuda",
        "cuda": {
            "version": "12.4",
            "driver_version": "550.54.15",
            "cudnn_version": None,
            "devices": devices,
        },
    }


def write_hardware(path: Path, hardware: dict[str, Any]) -> Path:
    """Write an override file (``detect().as_dict()`` shape) and return its path."""
    path.write_text(json.dumps(hardware))
    return path


def make_app(redis_url: str, key_prefix: str, namespace: str | None = None) -> Celery:
    """The test app: broker, result backend and store on ``redis_url``, all under ``key_prefix``.

    ``namespace`` (``snakepit_key_prefix``) defaults to ``key_prefix``; two apps
    with one ``key_prefix`` and their own namespaces share the broker database.
    """
    app = Celery("worker_app", broker=redis_url, backend=redis_url, set_as_current=False)
    isolated = {"global_keyprefix": f"{key_prefix}:"}
    app.conf.broker_transport_options = isolated
    app.conf.result_backend_transport_options = isolated
    app.conf.snakepit_store_url = redis_url
    app.conf.snakepit_key_prefix = namespace or key_prefix
    app.conf.broker_connection_retry_on_startup = True
    app.conf.worker_prefetch_multiplier = 1

    def _where(request: Any) -> dict[str, Any]:
        return {
            "node": request.hostname,
            "queue": (request.delivery_info or {}).get("routing_key"),
        }

    @app.task(bind=True, name="worker_app.prefer_cuda", shared=False, device=["cuda", "cpu"])
    def prefer_cuda(self: Any) -> dict[str, Any]:
        return _where(self.request)

    @app.task(
        bind=True,
        name="worker_app.device_used",
        shared=False,
        base=SnakepitTask,
        device=["cuda", "cpu"],
    )
    def device_used(self: Any, *, device: Any) -> dict[str, Any]:
        return {**_where(self.request), "device": str(device)}

    @app.task(bind=True, name="worker_app.only_cuda", shared=False, device="cuda")
    def only_cuda(self: Any) -> dict[str, Any]:
        return _where(self.request)

    @app.task(bind=True, name="worker_app.plain", shared=False)
    def plain(self: Any) -> dict[str, Any]:
        return _where(self.request)

    @app.task(bind=True, name="worker_app.emit", shared=False)
    def emit(
        self: Any,
        name: str,
        fields: dict[str, Any],
        error: str | None = None,
        detached: bool = False,
    ) -> str:
        """Send snakepit signal ``name`` from the task, or from a thread outside any task."""
        import threading

        from snakepit_celery.signals import ALL_SIGNALS

        if error is not None:
            fields = {**fields, "last_error": RuntimeError(error)}

        def send() -> None:
            ALL_SIGNALS[name].send(sender=None, **fields)

        if detached:
            thread = threading.Thread(target=send)
            thread.start()
            thread.join(10)
        else:
            send()
        return str(self.request.id)

    @app.task(bind=True, name="worker_app.sleep", shared=False)
    def sleep(self: Any, seconds: float) -> dict[str, Any]:
        time.sleep(seconds)
        return _where(self.request)

    install(app)
    return app


class Fleet:
    """The workers of one test (all stopped at teardown) and the test's own app and store."""

    def __init__(self, redis_url: str, key_prefix: str, tmp_path: Path) -> None:
        from snakepit_celery.store import store_from_url

        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.tmp_path = tmp_path
        self.app = make_app(redis_url, key_prefix)
        self.store = store_from_url(redis_url, key_prefix=key_prefix)
        self.workers: list[WorkerNode] = []

    def hardware(self, name: str, hardware: dict[str, Any]) -> Path:
        return write_hardware(self.tmp_path / f"{name}.json", hardware)

    def start(
        self, name: str, hardware: dict[str, Any], *, wait: bool = True, **kwargs: Any
    ) -> WorkerNode:
        """Start a worker node with ``hardware``; by default wait until it is registered."""
        path = self.hardware(name.replace("@", "_"), hardware)
        worker = worker_node(
            name, self.redis_url, self.key_prefix, self.tmp_path, hardware=path, **kwargs
        ).start()
        self.workers.append(worker)
        if wait:
            self.wait_registered(worker)
        return worker

    def wait_registered(self, worker: WorkerNode, timeout: float = 30.0) -> dict[str, Any]:
        def registered() -> dict[str, Any] | None:
            if not worker.alive():
                raise AssertionError(f"worker {worker.name} exited:\n{worker.logs()[-3000:]}")
            return self.node(worker.name)

        return wait_until(registered, timeout, what=f"node {worker.name} to register")

    def nodes(self) -> list[dict[str, Any]]:
        """The registry records of the live nodes of the test's app."""
        return self.store.node_list(group=app_group(self.app))

    def node(self, name: str) -> dict[str, Any] | None:
        """The registry record of node ``name``, or None."""
        return next((r for r in self.nodes() if r["node"] == name), None)

    def queue(self, rest: str) -> str:
        """A snakepit queue of the test's namespace: ``queue("cpu")`` is ``<key_prefix>.cpu``."""
        return f"{namespace(self.app)}.{rest}"

    def router(self) -> Any:
        """The device router installed on the test's app."""
        from snakepit_celery.celery.router import SnakepitRouter

        return next(r for r in self.app.conf.task_routes if isinstance(r, SnakepitRouter))

    def close(self) -> None:
        stop_all(self.workers)
        client = self.app.broker_connection().default_channel.client
        keys = list(client.scan_iter(match=f"{self.key_prefix}*", count=500))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        self.app.close()


def worker_node(
    name: str,
    redis_url: str,
    key_prefix: str,
    log_dir: Path,
    *,
    hardware: Path | None = None,
    pool: str = "threads",
    concurrency: int = 2,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> WorkerNode:
    """``celery -A tests.apps.worker_app worker`` for node ``name``, its log in ``log_dir``."""
    node_env = {
        "WORKER_APP_REDIS_URL": redis_url,
        "WORKER_APP_KEY_PREFIX": key_prefix,
        "PYTHONPATH": str(ROOT),
        **(env or {}),
    }
    if hardware is not None:
        node_env["SNAKEPIT_HARDWARE"] = str(hardware)
    return WorkerNode(
        "tests.apps.worker_app",
        name,
        concurrency=concurrency,
        env=node_env,
        extra_args=args,
        cwd=str(ROOT),
        pool=pool,
        flags=("--without-mingle", "--without-gossip"),
        log_path=log_dir / f"{name.replace('@', '_')}.log",
    )


def fleet_fixture(redis_url: str, key_prefix: str, tmp_path: Path) -> Any:
    """Generator behind the ``fleet`` fixture of the worker test modules."""
    from snakepit_celery.store import set_default_store

    fleet = Fleet(redis_url, key_prefix, tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()
        set_default_store(None)
