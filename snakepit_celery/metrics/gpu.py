"""The GPU health counter: ``snakepit_gpu_health_findings`` by node, class and Xid.

Fed by ``signals.gpu_health`` (one count per finding the node's NVML watch
acted on; recoveries are counted with action ``recovered``).
``enable_gpu_metrics()`` creates the counter once and connects it; the GPU
watch step calls it on nodes whose process metrics are on.
"""

from __future__ import annotations

import threading
from typing import Any

from snakepit_celery import signals
from snakepit_celery.metrics.client import prometheus

__all__ = ["enable_gpu_metrics"]

_DISPATCH_UID = "snakepit-gpu-metrics"
_counter: list[Any] = []
_lock = threading.Lock()


def _count(sender: Any = None, **fields: Any) -> None:
    xid = fields.get("xid")
    _counter[0].labels(
        str(fields.get("node") or "unknown"),
        str(fields.get("health_class") or "unknown"),
        "" if xid is None else str(xid),
        str(fields.get("action") or "unknown"),
    ).inc()


def enable_gpu_metrics() -> None:
    """Count every ``gpu_health`` signal of this process from now on (idempotent)."""
    with _lock:
        if not _counter:
            _counter.append(
                prometheus().Counter(
                    "snakepit_gpu_health_findings",
                    "GPU health findings of this node's NVML watch, by class, Xid and action.",
                    ["node", "health_class", "xid", "action"],
                )
            )
        signals.gpu_health.connect(_count, weak=False, dispatch_uid=_DISPATCH_UID)
