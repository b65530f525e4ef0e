"""``celery snakepit status`` shows each GPU's free memory and health from the node's heartbeat."""

from __future__ import annotations

from celery import Celery

from snakepit_celery.celery.app_context import app_group
from snakepit_celery.store import Store
from tests.support.cli import app, run, store

#: The fixtures this module takes from tests.support.cli (named here so linters see them used).
__all__ = ["app", "store"]


def test_status_shows_gpu_free_memory_and_health(app: Celery, store: Store) -> None:
    devices = [
        {"kind": "cuda", "index": 0, "uuid": "GPU-0", "name": "A100", "health": "hardware"},
        {
            "kind": "cuda",
            "index": 1,
            "uuid": "GPU-1",
            "name": "A100",
            "health": "ok",
            "memory_free_mb": 30000,
            "memory_total_mb": 81920,
        },
    ]
    store.node_register(
        "gpu@host",
        {"identity": {"accelerator": "cuda"}, "devices": devices, "queues": []},
        ttl=60,
        group=app_group(app),
    )
    result = run(app, "status")
    assert "cuda:0 (A100) [health hardware]" in result.output
    assert "cuda:1 (A100) [30000/81920 MB free, health ok]" in result.output


def test_untaint_by_gpu_uuid_lifts_a_sticky_gpu_health_taint(app: Celery, store: Store) -> None:
    details = {"kind": "device", "node": "gpu@host", "device": "cuda:0", "uuid": "GPU-0"}
    details |= {"gpu_health": "hardware", "sticky": True, "reason": "GPU health: xid (Xid 79)"}
    store.taint_set(
        "default", "device:gpu@host:GPU-0", duration=10 * 365 * 86400.0, details=details
    )
    result = run(app, "untaint", "--node", "gpu@host", "--device", "GPU-0")
    assert result.exit_code == 0 and "cleared 1 taint(s)" in result.output
    assert store.taint_list("default") == []
