"""Warm-shutdown give-back: the messages a node returns unstarted are no crashes.

On a warm shutdown, once the pool has finished (nothing starts any more) and
before the broker connection closes (when kombu restores the unacknowledged
messages), the node marks the crash-barrier messages it gives back unstarted
(``Store.ledger_release``). Each comes back ``redelivered``, and the mark
tells the crash-ledger gate that this delivery was not lost with a crash. A
cold shutdown marks nothing: the tasks it killed did start.

A node whose main process stops with an error (Celery's "Unrecoverable
error", or a ``SystemExit`` raised while it handled a message) may have
been killed by a message it holds: each message it gives back unstarted
counts a death (``died``), and one that more than ``max_restarts`` dying
nodes held is quarantined instead (``REASON_KILLED_NODES``), its task ended
FAILURE ``WorkerCrashedError`` and its message acknowledged, so it kills no
further node. A death is not a crash: the task never ran, and a message that
dying nodes held fewer times runs normally on its next delivery. Shutdowns
asked for (signals, ``celery control shutdown``) count nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from celery.exceptions import WorkerShutdown, WorkerTerminate

from snakepit_celery.celery.bootsteps.in_flight import (
    active_requests,
    barrier_enabled,
    channel_deliveries,
    held_deliveries,
)
from snakepit_celery.celery.poison import quarantine_delivered
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.errors import StoreUnavailableError, WorkerCrashedError
from snakepit_celery.quarantine import REASON_KILLED_NODES
from snakepit_celery.store import report_store_error

__all__ = ["release_unstarted", "stopping_error"]

logger = logging.getLogger(__name__)


class _Unstarted(NamedTuple):
    task_id: str
    task: SnakepitTask
    #: The kombu message, where the channel or the request still has it.
    message: Any


def stopping_error() -> BaseException | None:
    """The error the worker stops with, when a shutdown runs while Celery handles one.

    Celery's ``WorkController.start`` stops the worker from its ``except``
    clauses; a shutdown asked for (``WorkerShutdown`` from a signal or a
    remote control, ``WorkerTerminate``, Ctrl-C, ``SystemExit(0)``) is none.
    """
    error = sys.exc_info()[1]
    if error is None or isinstance(error, WorkerShutdown | WorkerTerminate | KeyboardInterrupt):
        return None
    if isinstance(error, SystemExit) and error.code in (None, 0):
        return None
    return error


def release_unstarted(
    node: str,
    consumer: Any,
    reserved: Sequence[Any] = (),
    *,
    died: BaseException | None = None,
) -> list[str]:
    """Mark the crash-barrier messages this node gives back unstarted; returns their ids.

    ``reserved``: Celery's reserved requests as the shutdown began. ``died``:
    the error the node stops with (``stopping_error()``), which counts a death
    against each message and quarantines those past ``max_restarts`` deaths
    (left out of the ids returned).
    """
    released = []
    for unstarted in _unstarted_snakepit_messages(consumer, reserved):
        task_id, task = unstarted.task_id, unstarted.task
        barrier = task.snakepit_runtime.barrier
        try:
            deaths = barrier.ledger_release(task_id, died=died is not None)
        except StoreUnavailableError as exc:
            report_store_error(exc, node=node, task_id=task_id)
            continue
        if died is not None and deaths > barrier.config.max_restarts:
            _stop_killer(node, consumer, unstarted, deaths, died)
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


def _stop_killer(
    node: str, consumer: Any, unstarted: _Unstarted, deaths: int, died: BaseException
) -> None:
    """Quarantine a message that ``deaths`` dying nodes held, end its task, acknowledge it."""
    max_restarts = unstarted.task.snakepit_runtime.barrier.config.max_restarts
    failure = WorkerCrashedError(
        "unknown",
        worker_id=node,
        message=(
            f"task {unstarted.task_id} was held by {deaths} node(s) whose main process "
            f"stopped with an error (max_restarts={max_restarts}), the last one with "
            f"{type(died).__name__}: {died}; not run"
        ),
    )
    logger.error("%s", failure, extra={"node": node, "task_id": unstarted.task_id})
    if unstarted.message is None:
        return  # AMQP without the request's message: the broker redelivers it
    quarantine_delivered(
        consumer.app,
        node,
        unstarted.message,
        reason=REASON_KILLED_NODES,
        failure=failure,
        crashes=deaths,
    )
    try:
        unstarted.message.ack()
    except Exception:
        logger.exception("could not acknowledge quarantined task %s", unstarted.task_id)


def _unstarted_snakepit_messages(consumer: Any, reserved: Sequence[Any]) -> list[_Unstarted]:
    """The crash-barrier messages this node holds unacknowledged and unstarted.

    Redis and the other kombu virtual transports expose every unacknowledged
    delivery of the channel (tasks waiting for their ETA included); other
    transports (AMQP) fall back on ``reserved``, Celery's reserved requests
    as the shutdown began. Requests the pool accepted are left out: they started.
    """
    started = {str(request.id) for request in active_requests()}
    unstarted = []
    for task_id, name, message in _held_messages(consumer, reserved):
        task = consumer.app.tasks.get(name)
        if task_id in started or not isinstance(task, SnakepitTask):
            continue
        if barrier_enabled(task):
            unstarted.append(_Unstarted(task_id, task, message))
    return unstarted


def _held_messages(consumer: Any, reserved: Sequence[Any]) -> list[tuple[str, str, Any]]:
    """(task id, task name, kombu message) of every message the consumer holds unacknowledged.

    ``reserved``: Celery's reserved requests as the shutdown began (the
    consumer clears its own list when it closes); used where the channel does
    not expose its deliveries, less those the pool accepted or acknowledged.
    """
    held = held_deliveries(consumer)
    if held is None:
        return [
            (str(request.id), str(request.name), getattr(request, "message", None))
            for request in reserved
            if request.time_start is None and not request.acknowledged
        ]
    delivered = {str(tag): m for tag, m in tuple((channel_deliveries(consumer) or {}).items())}
    return [(d.task_id, d.name, delivered.get(d.tag)) for d in held]
