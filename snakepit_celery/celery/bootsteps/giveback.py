"""Warm-shutdown give-back: the messages a node returns unstarted are no crashes.

On a warm shutdown, once the pool has finished (nothing starts any more) and
before the broker connection closes (when kombu restores the unacknowledged
messages), the node marks the crash-barrier messages it gives back unstarted
(``Store.ledger_release``). Each comes back ``redelivered``, and the mark
tells the crash-ledger gate that this delivery was not lost with a crash. A
cold shutdown marks nothing: the tasks it killed did start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from snakepit_celery.celery.bootsteps.in_flight import (
    active_requests,
    barrier_enabled,
    held_deliveries,
)
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.store import report_store_error

__all__ = ["release_unstarted"]

logger = logging.getLogger(__name__)


def release_unstarted(node: str, consumer: Any, reserved: Sequence[Any] = ()) -> list[str]:
    """Mark the crash-barrier messages this node gives back unstarted; returns their ids.

    ``reserved``: Celery's reserved requests as the shutdown began.
    """
    released = []
    for task_id, task in _unstarted_snakepit_messages(consumer, reserved):
        try:
            task.snakepit_runtime.barrier.ledger_release(task_id)
        except StoreUnavailableError as exc:
            report_store_error(exc, node=node, task_id=task_id)
            continue
        released.append(task_id)
    if released:
        logger.info(
            "node %s gives back %d unstarted task(s): %s",
            node,
            len(released),
            ", ".join(released),
            extra={"node": node, "task_ids": released},
        )
    return released


def _unstarted_snakepit_messages(
    consumer: Any, reserved: Sequence[Any]
) -> list[tuple[str, SnakepitTask]]:
    """(task id, task) of the crash-barrier messages this node holds unacknowledged, unstarted.

    Redis and the other kombu virtual transports expose every unacknowledged
    delivery of the channel (tasks waiting for their ETA included); other
    transports (AMQP) fall back on ``reserved``, Celery's reserved requests
    as the shutdown began. Requests the pool accepted are left out: they started.
    """
    started = {str(request.id) for request in active_requests()}
    unstarted = []
    for task_id, name in _held_messages(consumer, reserved):
        task = consumer.app.tasks.get(name)
        if task_id in started or not isinstance(task, SnakepitTask):
            continue
        if barrier_enabled(task):
            unstarted.append((task_id, task))
    return unstarted


def _held_messages(consumer: Any, reserved: Sequence[Any]) -> list[tuple[str, str]]:
    """(task id, task name) of every message the consumer holds unacknowledged.

    ``reserved``: Celery's reserved requests as the shutdown began (the
    consumer clears its own list when it closes); used where the channel does
    not expose its deliveries, less those the pool accepted or acknowledged.
    """
    held = held_deliveries(consumer)
    if held is None:
        return [
            (str(request.id), str(request.name))
            for request in reserved
            if request.time_start is None and not request.acknowledged
        ]
    return [(delivery.task_id, delivery.name) for delivery in held]
