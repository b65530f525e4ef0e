"""Around each task: recycle a pool child after the task when its GPU went bad.

Two reasons, both checked on ``task_postrun`` in prefork pool children only:
the task ran on a GPU the node's health watch had a finding on while it ran
(``HealthNotice``: the child's CUDA context may be poisoned), or the process
holds more GPU memory than ``snakepit_max_gpu_memory_per_child`` (NVML
per-process usage; the device-memory twin of ``worker_max_memory_per_child``).
Either raises ``ChildRecycled``, the crash path's way out of a child. Before
each task (any pool) a changed notice also makes the task choose its device
on a kind's shared queue again, away from a GPU tainted since.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import signals as celery_signals

from snakepit_celery.celery.app_context import settings_for
from snakepit_celery.celery.crash import ChildRecycled
from snakepit_celery.hardware.gpu_health import process_gpu_memory_mb
from snakepit_celery.hardware.gpu_notice import notice_version, read_notice

__all__ = [
    "connect_child_recycling",
    "forget_devices_on_notice",
    "recycle_after_finding",
    "recycle_over_gpu_memory",
]

logger = logging.getLogger(__name__)

_child = {"pool": False}
_started: dict[str, float] = {}
#: Task name -> the health notice version its device choices were made under.
_notice_seen: dict[str, int] = {}


def _mark_pool_child(**_: Any) -> None:
    _child["pool"] = True


def _note_start(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    if _child["pool"] and task_id is not None:
        _started[task_id] = time.time()
    if sender is not None:
        forget_devices_on_notice(sender)


def forget_devices_on_notice(task: Any) -> None:
    """Drop ``task``'s per-queue device choices when the node's health notice changed.

    A task taken from a kind's shared queue (``snakepit.cuda``) then picks a
    healthy GPU again instead of the one chosen before a taint. One ``stat``.
    """
    version = notice_version()
    name = str(getattr(task, "name", ""))
    if _notice_seen.get(name, 0) != version:
        _notice_seen[name] = version
        if getattr(task, "_snakepit_devices", None):
            task._snakepit_devices = None


def recycle_after_finding(task: Any, task_id: str, state: str | None) -> None:
    """Raise ``ChildRecycled`` when ``task`` ran on a GPU that had a finding since it started.

    Called after the result is stored (``task_postrun``) in pool children only.
    """
    started = _started.pop(task_id, None)
    if started is None:
        return
    notice = read_notice(newer_than=started)
    if notice is None:
        return
    try:
        device = task.resolved_device
    except Exception:
        return
    uuid = getattr(device, "uuid", None)
    if uuid is None or notice.recycle.get(uuid, 0.0) < started:
        return
    error = f"GPU {uuid} had a health finding during the task"
    logger.error("recycling worker process %d: %s", os.getpid(), error)
    raise ChildRecycled(task_id, str(state or "SUCCESS"), error)


def recycle_over_gpu_memory(limit_mb: int | None, task_id: str, state: str | None) -> None:
    """Raise ``ChildRecycled`` when this process holds more GPU memory than ``limit_mb``.

    ``max_gpu_memory_per_child``: the device-memory twin of Celery's
    ``worker_max_memory_per_child``, checked after each task (result stored).
    """
    if limit_mb is None:
        return
    used = process_gpu_memory_mb(os.getpid())
    if used is None or used <= limit_mb:
        return
    error = f"holds {used} MB of GPU memory, over max_gpu_memory_per_child={limit_mb}"
    logger.warning("recycling worker process %d: %s", os.getpid(), error)
    raise ChildRecycled(task_id, str(state or "SUCCESS"), error)


def _postrun(
    sender: Any = None, task_id: str | None = None, state: str | None = None, **_: Any
) -> None:
    if _child["pool"] and task_id is not None and sender is not None:
        recycle_after_finding(sender, task_id, state)
        recycle_over_gpu_memory(_memory_limit(sender), task_id, state)


def _memory_limit(task: Any) -> int | None:
    """``snakepit_max_gpu_memory_per_child`` of the task's app (None for an app without one)."""
    try:
        return settings_for(task.app).max_gpu_memory_per_child
    except Exception:
        return None


def connect_child_recycling() -> None:
    """Connect the pool-child checks to Celery's signals (idempotent)."""
    celery_signals.worker_process_init.connect(
        _mark_pool_child, weak=False, dispatch_uid="snakepit-gpu-child"
    )
    celery_signals.task_prerun.connect(_note_start, weak=False, dispatch_uid="snakepit-gpu-start")
    celery_signals.task_postrun.connect(_postrun, weak=False, dispatch_uid="snakepit-gpu-recycle")
