"""Acknowledged on record: crash-barrier tasks that are not idempotent.

Celery acknowledges such a task when it starts; if its whole node then dies
before the node's record lists it in flight, no message comes back and no one
can give it a final state. So the worker makes them ``acks_late`` and the
node acknowledges each (a timer on the event loop, every ``ACK_INTERVAL``
seconds) only once a record the store accepted lists it, or Celery does when
it ends. Killed before, its message comes back and the crash-ledger gate ends
it; after, the orphan reaper does.
"""

from __future__ import annotations

import logging

from celery import Celery

from snakepit_celery.celery.app_context import settings_for
from snakepit_celery.celery.bootsteps.in_flight import active_requests
from snakepit_celery.celery.bootsteps.registry import NodeRegistry
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.errors import SnakepitError

__all__ = ["ACK_INTERVAL", "AckOnRecord", "ack_on_record_tasks"]

logger = logging.getLogger(__name__)

#: Seconds between two looks, on the event loop, for ``ack_on_record`` tasks the record lists.
ACK_INTERVAL = 0.1


def ack_on_record_tasks(app: Celery) -> list[str]:
    """Make the app's crash-barrier tasks that are not idempotent ``ack_on_record``; their names.

    Called by the worker before its pool starts. Tasks with their own
    ``acks_late``, and apps with ``task_acks_late``, keep theirs.
    """
    if app.conf.task_acks_late:
        return []
    barrier = settings_for(app).crash_barrier
    names = []
    for name, task in sorted(app.tasks.items()):
        if not isinstance(task, SnakepitTask) or task.idempotent or task.ack_on_record:
            continue
        if type(task)._acks_late_option is not None:
            continue
        try:
            enabled = barrier.merged(task.crash_barrier).enabled
        except SnakepitError as exc:
            logger.warning("task %s: %s", name, exc)
            continue
        if enabled:
            task.acks_late = True
            task.ack_on_record = True
            names.append(name)
    return names


class AckOnRecord:
    """Acknowledges the ``ack_on_record`` tasks that the node's stored record lists."""

    def __init__(self, registry: NodeRegistry) -> None:
        self.registry = registry

    def ack_recorded(self) -> int:
        """Acknowledge the ``ack_on_record`` tasks the store's record lists (event loop only).

        From here on the orphan reaper gives such a task a final state if this
        node dies; before, its message would come back. Returns how many.
        """
        recorded = self.registry.recorded_in_flight
        if not recorded:
            return 0
        acked = 0
        for request in active_requests():
            if (
                getattr(request.task, "ack_on_record", False)
                and not request.acknowledged
                and str(request.id) in recorded
            ):
                request.acknowledge()
                acked += 1
        return acked
