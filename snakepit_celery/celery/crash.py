"""One crash path: whoever saw a task's process die handles it here, in one order.

Three observers see crashes. The pool parent sees a child die mid-task
(``request.SnakepitRequest``); the child itself sees a GPU-fatal error raised
by the task (its CUDA context is dead, so the child exits once the result is
stored); the orphan reaper sees a whole node die with an early-acknowledged
task (``bootsteps.reaper``). Each calls :func:`handle_crash`, which always
goes: classify, health monitor, taints, crash ledger / header, then the
observer's ending: re-publish or FAILURE (or, for the child, recycling).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from celery import signals as celery_signals
from celery import states

from snakepit_celery.celery.headers import message_crashes
from snakepit_celery.celery.poison import note_crash
from snakepit_celery.errors import StoreUnavailableError, WorkerCrashedError
from snakepit_celery.policy.crash import Classification, CrashInfo, describe_crash
from snakepit_celery.policy.gpu_errors import gpu_error_action
from snakepit_celery.signals import about_task
from snakepit_celery.store import report_store_error

if TYPE_CHECKING:
    from snakepit_celery.barrier import CrashBarrier
    from snakepit_celery.hardware.types import Device
    from snakepit_celery.health import HealthMonitor

__all__ = [
    "ChildRecycled",
    "CrashOutcome",
    "Observer",
    "SeenCrash",
    "handle_crash",
    "note_gpu_fatal",
]

logger = logging.getLogger(__name__)


class Observer(StrEnum):
    """Who saw the crash: it decides what that observer may do about it."""

    POOL_PARENT = "pool_parent"  # a child died: taint the worker, count, re-publish or fail
    GPU_FATAL = "gpu_fatal"  # the task raised a GPU-fatal error: taint the GPU, recycle
    REAPER = "reaper"  # a whole node died with the task: count, fail


@dataclass(frozen=True, slots=True)
class _Rules:
    taint_worker: bool
    count: bool
    may_retry: bool


_RULES: Mapping[Observer, _Rules] = {
    Observer.POOL_PARENT: _Rules(taint_worker=True, count=True, may_retry=True),
    Observer.GPU_FATAL: _Rules(taint_worker=False, count=False, may_retry=False),
    Observer.REAPER: _Rules(taint_worker=False, count=True, may_retry=False),
}


@dataclass(frozen=True)
class SeenCrash:
    """One crash as its observer saw it.

    ``node``: where the task ran (health and taints are keyed by it);
    ``cause``: what is classified (a ``WorkerCrashedError`` is the task's
    error as it is); ``delivery_info`` and ``headers``: those of the task's
    message, whose crash header and lost delivery count with the ledger's.
    """

    task_id: str
    node: str
    cause: BaseException
    observer: Observer
    device: Device | None = None
    idempotent: bool = False
    delivery_info: Mapping[str, Any] | None = None
    headers: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CrashOutcome:
    """What the crash path found: the crash, the task's error, its crash count, the verdict."""

    info: CrashInfo
    error: WorkerCrashedError
    #: Crashes of the task so far, this one included (the larger of the ledger's count
    #: and the message's); 0 when not counted. A re-published message carries it.
    crashes: int
    retry: bool
    countdown: float


def handle_crash(
    seen: SeenCrash,
    barrier: CrashBarrier | None,
    health: HealthMonitor | None,
    end: Callable[[CrashOutcome], None],
) -> CrashOutcome | None:
    """Classify, record in ``health``, taint, count in the ledger, then ``end(outcome)``.

    ``barrier`` and ``health`` are the task's (None for a task this app does
    not know: only ``end`` runs). Returns None, doing nothing, when the
    observer has no crash to handle (a GPU error that needs no recycling).
    """
    with about_task(seen.task_id):
        return _handle_crash(seen, barrier, health, end)


def _handle_crash(
    seen: SeenCrash,
    barrier: CrashBarrier | None,
    health: HealthMonitor | None,
    end: Callable[[CrashOutcome], None],
) -> CrashOutcome | None:
    rules = _RULES[seen.observer]
    info = _classify(seen, barrier)
    if info is None:
        return None
    crashes = 0
    if barrier is not None and health is not None:
        crashes = _record(seen, barrier, health, info, rules)
    retry = (
        rules.may_retry
        and barrier is not None
        and barrier.retry_allowed(seen.idempotent, crashes - 1)
    )
    countdown = barrier.backoff_for(crashes - 1) if retry and barrier is not None else 0.0
    outcome = CrashOutcome(info, _error(seen, info), crashes, retry, countdown)
    end(outcome)
    return outcome


def _record(
    seen: SeenCrash, barrier: CrashBarrier, health: HealthMonitor, info: CrashInfo, rules: _Rules
) -> int:
    """Health, taints and the ledger; the task's crash count (0 when not counted).

    Never raises for a store that does not answer (fail-closed included): the
    count then comes from the message alone, so the task is still bounded.
    """
    entry = None
    try:
        health.record_crash(
            seen.node,
            reason=str(info.classification),
            task_id=seen.task_id,
            exit_code=info.exit_code,
            signal=info.signal,
            device=None if seen.device is None else str(seen.device),
        )
        _taint(seen, barrier, info, worker=rules.taint_worker)
        if rules.count:
            entry = barrier.ledger_crash(seen.task_id)
            note_crash(barrier, seen, info)
    except StoreUnavailableError as exc:
        report_store_error(exc, task_id=seen.task_id)
    if not rules.count:
        return 0
    # With start marks the ledger holds every run: a lost delivery is no crash by itself.
    released = (entry is not None and entry.released) or barrier.config.start_marks
    counted = message_crashes(seen.delivery_info, seen.headers, released) + 1
    return counted if entry is None else max(counted, entry.crashes)


def _classify(seen: SeenCrash, barrier: CrashBarrier | None) -> CrashInfo | None:
    if barrier is None:
        return CrashInfo(str(seen.cause), None, None, Classification.UNKNOWN)
    info = barrier.describe(seen.cause, device=seen.device)
    if seen.observer is Observer.GPU_FATAL:
        action = gpu_error_action(info.reason) if info is not None else None
        return info if action is not None and action.recycle else None
    return info or describe_crash(None, str(seen.cause))


def _taint(seen: SeenCrash, barrier: CrashBarrier, info: CrashInfo, *, worker: bool) -> None:
    if worker:
        taint = barrier.crash_info(seen.cause, device=seen.device)
        if taint is not None:
            barrier.taint_worker(seen.node, taint)
    if seen.device is not None and barrier.should_taint_device(info):
        barrier.taint_device(seen.node, seen.device, info)


def _error(seen: SeenCrash, info: CrashInfo) -> WorkerCrashedError:
    if isinstance(seen.cause, WorkerCrashedError):
        return seen.cause
    device = None if seen.device is None else str(seen.device)
    return WorkerCrashedError(
        str(info.classification), info.exit_code, info.signal, seen.node, device
    )


# -- a GPU-fatal error in a pool child: record it, taint the GPU, recycle the child ---------


class ChildRecycled(SystemExit):
    """Raised in a pool child after a GPU-fatal error: the result is stored, the child exits.

    Its CUDA context is dead, so the process must go; billiard reports this
    exception to the pool parent, where ``SnakepitRequest`` finishes the
    request (events, ack) instead of treating it as a lost worker.
    """

    def __init__(self, task_id: str, state: str, error: str) -> None:
        super().__init__(0)
        self.task_id = task_id
        self.state = state
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.task_id, self.state, self.error))


def note_gpu_fatal(
    barrier: CrashBarrier,
    health: HealthMonitor,
    request: Any,
    exc: BaseException,
    device: Device | None,
) -> None:
    """A GPU-fatal error in a task body: record it, taint the device, recycle the child."""
    seen = SeenCrash(str(request.id), str(request.hostname), exc, Observer.GPU_FATAL, device)

    def recycle(_: CrashOutcome) -> None:
        if _in_pool_child and not request.is_eager:
            _recycle_after[request.id] = type(exc).__name__ + ": " + str(exc)

    handle_crash(seen, barrier, health, recycle)


_in_pool_child = False
#: task id -> error text, for tasks whose child must exit once their result is stored.
_recycle_after: dict[str, str] = {}


def _mark_pool_child(**_: Any) -> None:
    global _in_pool_child
    _in_pool_child = True


def _recycle_child(task_id: str | None = None, state: str | None = None, **_: Any) -> None:
    """After the result is stored: leave the pool child whose CUDA context is dead."""
    if not _recycle_after or task_id not in _recycle_after:
        return
    error = _recycle_after.pop(task_id)
    logger.error(
        "recycling worker process %d after a GPU-fatal error in task %s: %s",
        os.getpid(),
        task_id,
        error,
        extra={"task_id": task_id, "pid": os.getpid()},
    )
    raise ChildRecycled(task_id, str(state or states.FAILURE), error)


celery_signals.worker_process_init.connect(_mark_pool_child, weak=False)
celery_signals.task_postrun.connect(_recycle_child, weak=False)
