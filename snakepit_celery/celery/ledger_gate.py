"""The crash-ledger gate: a message that came back is counted, and stopped past ``max_restarts``.

The first delivery of a message is never recorded (no round trip on the
happy path), so when such an untracked message comes back its lost delivery
counts as one crash, unless its node marked it given back unstarted
(``ledger_release``, on warm shutdown). Conservatively: kombu also restores
messages a SIGKILLed node had prefetched but never started. Once a message is
tracked (re-published after a crash, it carries the crash header) every
delivery is recorded, and the ledger proves its crashes: earlier runs whose
lease ran out, or that a pool parent saw die. A message whose task already
has a final state is not run again (its result was stored, its
acknowledgement lost).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, NoReturn, Protocol

from celery import Celery, states
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore

from snakepit_celery.celery.headers import parse_headers
from snakepit_celery.celery.poison import quarantine_gave_up
from snakepit_celery.celery.runtime import TaskRuntime
from snakepit_celery.errors import WorkerCrashedError

__all__ = [
    "GatedTask",
    "crash_ledger_gate",
    "drop_if_ended",
    "final_state",
    "redelivered",
    "unrecorded_crashes",
]

logger = logging.getLogger(__name__)


class GatedTask(Protocol):
    """What the gate reads of a task."""

    app: Celery
    name: str
    idempotent: bool


def crash_ledger_gate(
    task: GatedTask, runtime: TaskRuntime, request: Any, headers: Mapping[str, Any]
) -> int:
    """Record this run of a message that came back; stop it past ``max_restarts``.

    Returns the task's crashes so far (the ledger's plus the header's).
    Raises ``Ignore`` for a duplicate delivery or a task that already ended,
    ``WorkerCrashedError`` when the barrier allows no further run.
    """
    barrier = runtime.barrier
    worker_id = f"{request.hostname}/{os.getpid()}"
    before = barrier.ledger_start(request.id, worker_id, runtime.lease)
    if before.running_on is not None and before.running_on != worker_id:
        logger.warning(
            "task %s[%s] is still running on %s: duplicate delivery dropped",
            task.name,
            request.id,
            before.running_on,
            extra={"task_id": request.id, "running_on": before.running_on},
        )
        raise Ignore()
    # With start marks the ledger holds every run: a lost delivery is no crash by itself.
    exact = before.released or barrier.config.start_marks
    crashes = unrecorded_crashes(request.delivery_info, headers, exact) + before.crashes
    if crashes == 0:
        if before.released:
            drop_if_ended(task, runtime, request)
        return 0
    if barrier.retry_allowed(bool(task.idempotent), crashes - 1):
        logger.warning(
            "task %s[%s] came back after its worker crashed; running it again (crash %d)",
            task.name,
            request.id,
            crashes,
            extra={"task_id": request.id, "crashes": crashes},
        )
        return crashes
    _give_up(task, runtime, request, crashes)


def _give_up(task: GatedTask, runtime: TaskRuntime, request: Any, crashes: int) -> NoReturn:
    """Close the ledger and raise ``WorkerCrashedError``: the task is not run again."""
    barrier = runtime.barrier
    drop_if_ended(task, runtime, request)
    barrier.ledger_finish(request.id)
    quarantine_gave_up(task, barrier, request, crashes)
    logger.error(
        "task %s[%s] crashed its worker %d time(s) (max_restarts=%d): not run again",
        task.name,
        request.id,
        crashes,
        barrier.config.max_restarts,
        extra={"task_id": request.id, "crashes": crashes},
    )
    raise WorkerCrashedError(
        "unknown",
        message=(
            f"task {request.id} was lost with its worker {crashes} time(s) "
            f"(max_restarts={barrier.config.max_restarts}); not run again"
        ),
    )


def drop_if_ended(task: GatedTask, runtime: TaskRuntime, request: Any) -> None:
    """Raise ``Ignore`` (the message is acknowledged, the state kept) when the task ended.

    One result-backend read, only on the rare paths of the crash-ledger gate.
    """
    state = final_state(task.app, request.id)
    if state is None:
        return
    runtime.barrier.ledger_finish(request.id)
    logger.warning(
        "task %s[%s] came back but already ended %s: not run again",
        task.name,
        request.id,
        state,
        extra={"task_id": request.id, "state": state},
    )
    raise Ignore()


def unrecorded_crashes(
    delivery_info: Mapping[str, Any] | None,
    headers: Mapping[str, Any],
    released: bool = False,
) -> int:
    """Crashes of a message the ledger does not hold: its header's, plus its lost delivery.

    An untracked message (no crash header) that came back lost a delivery no
    ledger recorded; that counts as one crash, unless its node gave it back
    unstarted (``released``: the ledger's give-back mark for this delivery).
    """
    parsed = parse_headers(headers)
    lost = (delivery_info or {}).get("redelivered") and not parsed.tracked and not released
    return parsed.crashes + (1 if lost else 0)


def final_state(app: Celery, task_id: str) -> str | None:
    """The task's state in the result backend when it is a final one, else None.

    None too without a result backend, or when it cannot be read (logged).
    """
    backend = app.backend
    if isinstance(backend, DisabledBackend):
        return None
    try:
        state = backend.get_task_meta(task_id).get("status")
    except Exception:
        logger.warning("could not read the state of task %s", task_id, exc_info=True)
        return None
    return str(state) if state in states.READY_STATES else None


def redelivered(request: Any) -> bool:
    """The request's message came back (kombu marks a restored message ``redelivered``)."""
    delivery_info = request.delivery_info
    return bool(delivery_info and delivery_info.get("redelivered"))
