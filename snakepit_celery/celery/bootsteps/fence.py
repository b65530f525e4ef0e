"""Fencing: a node that learns it was declared dead stops at once, as if it had died then.

A node paused longer than its heartbeat TTL (GC, a slow disk, a frozen VM)
may have been reaped meanwhile: its tasks failed or moved back to their
queues and run elsewhere. When its next heartbeat is refused (its
incarnation was reaped) the node must not go on with them: it puts back the
messages it still holds that no one restored (only those still
unacknowledged, and not a message the reaper restored and another node took
again under the same tag, whose delivery time is younger than this node's
last stamp of it: never a second copy), kills its pool children and exits with
``FENCED_EXIT_CODE`` without acknowledging or storing anything, so a
supervisor starts a fresh incarnation. Ray's raylet does the same when its
control store marked it dead.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from snakepit_celery.celery.bootsteps.children import pool_processes
from snakepit_celery.celery.bootsteps.in_flight import held_ages, held_deliveries
from snakepit_celery.celery.bootsteps.restore import TAKEN_AGAIN_SLACK, UnackedRestorer

__all__ = ["FENCED_EXIT_CODE", "fence_node"]

logger = logging.getLogger(__name__)

#: Exit code of a fenced node (EX_TEMPFAIL: a supervisor should start it again).
FENCED_EXIT_CODE = 75


def fence_node(node: str, consumer: Any, restorer: UnackedRestorer) -> None:
    """Give back what no one restored, kill the pool children, exit the process (never returns)."""
    try:
        held = held_deliveries(consumer) or []
        ages = held_ages(consumer)
        # A tag the reaper restored and another node took again is that node's now: its
        # entry is younger than this node's last stamp of it, and is left alone.
        restored = [
            tag
            for tag in (delivery.tag for delivery in held)
            if restorer.restore([tag], min_age=max(0.0, ages.get(tag, 0.0) - TAKEN_AGAIN_SLACK))
        ]
        logger.critical(
            "node %s fenced: %d unrestored message(s) given back; killing its pool and exiting",
            node,
            len(restored),
            extra={"node": node},
        )
    except Exception:
        logger.exception("node %s fenced: could not give back its messages", node)
    for child in pool_processes(getattr(consumer, "pool", None)):
        try:
            os.kill(child.pid, signal.SIGKILL)
        except (OSError, TypeError):
            continue
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(FENCED_EXIT_CODE)
