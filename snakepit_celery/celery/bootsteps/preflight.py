"""Preflight: hardware detection and the lock-file check, before the worker starts.

A broken hardware override (``snakepit_hardware`` / ``SNAKEPIT_HARDWARE``) or a
host that does not match ``snakepit_lock_file`` logs one critical line with
the reason and stops the worker with exit code 1, before it forks pool
processes or connects to the broker.
"""

from __future__ import annotations

import logging
import os

from celery import Celery
from celery.exceptions import WorkerShutdown

from snakepit_celery import hardware, lockfile
from snakepit_celery.celery.app_context import settings_for
from snakepit_celery.celery.perdevice import NODE_MARKER_ENV
from snakepit_celery.errors import ConfigError, LockMismatchError

__all__ = ["check_lock_file", "preflight"]

logger = logging.getLogger(__name__)


def check_lock_file(path: str, node: str) -> None:
    """Refuse to start when the lock file does not match this host.

    Logs one critical line with the reason and raises ``WorkerShutdown(1)``,
    which stops the worker with exit code 1.
    """
    try:
        lockfile.validate(path)
    except (LockMismatchError, ConfigError) as exc:
        reason = getattr(exc, "reason", "unusable_lock_file")
        logger.critical(
            "snakepit: node %s refuses to start: %s (lock file %s)",
            node,
            exc,
            path,
            extra={"node": node, "lock_file": path, "reason": reason},
        )
        raise WorkerShutdown(1) from exc


def preflight(app: Celery, node: str) -> hardware.HardwareInfo:
    """Detect this host's hardware and check the lock file; refuse to start on a problem.

    A broken hardware override or a lock-file mismatch logs one critical line
    with the reason and raises ``WorkerShutdown(1)`` (the worker exits 1).
    """
    settings = settings_for(app)
    own_override = os.environ.get(NODE_MARKER_ENV) and os.environ.get("SNAKEPIT_HARDWARE")
    try:
        if own_override:  # a --per-device node: its own file wins over the app's setting
            hardware.configure(own_override)
        elif settings.hardware:
            hardware.configure(settings.hardware)
        info = hardware.detect()
    except ConfigError as exc:
        logger.critical("snakepit: node %s refuses to start: %s", node, exc, extra={"node": node})
        raise WorkerShutdown(1) from exc
    if settings.lock_file:
        check_lock_file(str(settings.lock_file), node)
    return info
