"""The crash-ledger gate: a message that came back is counted, and stopped past ``max_restarts``.

The first delivery of a message is never recorded (no round trip on the
happy path). A message that came back, or one re-published after a crash
(it carries the crash header), is recorded on every delivery. Its crashes are
the larger of what the message proves (``headers.message_crashes``: its
header, which holds every crash so far, plus its lost delivery) and what the
ledger proves (runs whose lease ran out, or that a pool parent saw die), so
the count grows while the store is down. A copy whose first run still holds
its lease (renewed by its node's heartbeat while it runs long) runs only when
the node registry shows that run's process dead (``celery.holders``: the
dead run is counted as a crash first); while it lives the copy is sent again
and checked every ``DUPLICATE_RECHECK`` seconds. A message whose task already
has a final state (its result was stored, its acknowledgement lost) is
dropped: neither runs twice. A store that does not answer retries the task
after ``STORE_DOWN_COUNTDOWN``, its crashes (the lost delivery included) in
the re-published message's header: always fail-closed, and fail-open for a
message that came back (the broker re-sends it with the header it had, so a
count kept only there would never grow). Fail-open, any other message runs on
its header's count. A message sent again goes out from the pool parent with
the old one's acknowledgement (``celery.resend``), so a node dying between
the two never leaves both. A message whose header is behind its count (it
came back: the broker re-sends the old header; or the ledger counted a dead
run the header does not know) runs as such a new message, its header
holding its crashes so far, so a crash seen while the store is down counts
from there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, NoReturn, Protocol

from celery import Celery, states
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore

from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.headers import (
    HEADER_COPY,
    HEADER_CRASHES,
    HEADER_DEFERRALS,
    forwarded,
    message_crashes,
    parse_headers,
)
from snakepit_celery.celery.holders import holder_alive
from snakepit_celery.celery.poison import quarantine_gave_up
from snakepit_celery.celery.resend import retry_again, send_again
from snakepit_celery.celery.runtime import TaskRuntime
from snakepit_celery.errors import StoreUnavailableError, WorkerCrashedError
from snakepit_celery.store import fail_open, report_store_error
from snakepit_celery.store.records import LedgerEntry

__all__ = [
    "DUPLICATE_RECHECK",
    "STORE_DOWN_COUNTDOWN",
    "GatedTask",
    "crash_ledger_gate",
    "drop_if_ended",
    "final_state",
    "redelivered",
]

logger = logging.getLogger(__name__)

#: Countdown (s) of a task retried because the store did not answer (fail-closed).
STORE_DOWN_COUNTDOWN = 2.0
#: Countdown (s) of a copy of a task whose first run lives (or may: its node's record has
#: not expired yet, ``HEARTBEAT_TTL``): it is checked again then.
DUPLICATE_RECHECK = 3.0


class GatedTask(Protocol):
    """What the gate reads of a task."""

    app: Celery
    name: str
    idempotent: bool

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``Task.retry``."""
        ...

    def signature_from_request(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``Task.signature_from_request``."""
        ...


def crash_ledger_gate(
    task: GatedTask, runtime: TaskRuntime, request: Any, headers: Mapping[str, Any]
) -> int:
    """Record this run of a message that came back; stop it past ``max_restarts``.

    Returns the task's crashes so far (the ledger's and the message's).
    Raises ``Ignore`` for a task that already ended, or for a copy of a
    running one (sent again for later), ``WorkerCrashedError`` when the
    barrier allows no further run.
    """
    barrier = runtime.barrier
    worker_id = f"{request.hostname}/{os.getpid()}"
    parsed = parse_headers(headers)
    known = parsed.crashes
    try:
        before = _start(task, runtime, request, worker_id, known)
    except StoreUnavailableError as exc:
        if parsed.tracked or redelivered(request):
            # Never retry (a RETRY state over the final one) a task that ended.
            drop_if_ended(task, runtime, request)
        # A message that came back carries a stale count (the broker re-sends its bytes),
        # and may be a copy of a run that lives, like a deferred copy: those wait for the
        # store (sent again every STORE_DOWN_COUNTDOWN, the loss counted in the header).
        if redelivered(request) or parsed.copy_of or not fail_open():
            _retry_later(task, request, headers, exc)
        report_store_error(exc, task_id=request.id)
        before = LedgerEntry(0, 0, 0)
    if before.running_on is not None and before.running_on != worker_id:
        _defer_duplicate(task, runtime, request, headers, before)
    if parsed.tracked or before.starts or before.crashes or redelivered(request):
        # Only a message that ran, came back or was re-published (a deferred copy of a
        # run, a retry) can have a final state already: a start-marked task's first
        # delivery costs its one ledger write, no backend read.
        drop_if_ended(task, runtime, request)
    exact = before.released or barrier.config.start_marks
    crashes = max(message_crashes(request.delivery_info, headers, exact), before.crashes)
    if crashes == 0:
        return 0
    if not barrier.retry_allowed(bool(task.idempotent), crashes - 1):
        _give_up(task, runtime, request, crashes)
    if crashes > known:
        _send_with_count(task, runtime, request, headers, worker_id=worker_id, crashes=crashes)
    logger.warning(
        "task %s[%s] came back after its worker crashed; running it again (crash %d)",
        task.name,
        request.id,
        crashes,
        extra={"task_id": request.id, "crashes": crashes},
    )
    return crashes


def _send_with_count(
    task: GatedTask,
    runtime: TaskRuntime,
    request: Any,
    headers: Mapping[str, Any],
    *,
    worker_id: str,
    crashes: int,
) -> NoReturn:
    """Run a message whose header is behind its count as a new one whose header holds it.

    The broker re-sends the bytes it has, so the header of a message that
    came back is behind its count (its lost delivery); and any message's
    header lacks the crashes only the ledger saw (a dead run another copy or
    the reaper counted). Run as it is, a crash seen while the store is down
    would be counted from that stale header (the pool parent has only the
    header then), and the task could run past ``max_restarts + 1``; sent
    again (with this delivery's acknowledgement, ``celery.resend``), the
    count travels with the message. This run lets go of its lease first, so
    the new message is not taken for a duplicate.
    """
    runtime.barrier.ledger_hold({request.id: worker_id}, 0.0)
    logger.info(
        "task %s[%s]: its header is behind its count (crash %d): sent again with it",
        task.name,
        request.id,
        crashes,
        extra={"task_id": request.id, "crashes": crashes},
    )
    send_again(task, request, 0.0, {**forwarded(headers), HEADER_CRASHES: crashes})


def _start(
    task: GatedTask, runtime: TaskRuntime, request: Any, worker_id: str, known: int
) -> LedgerEntry:
    """``ledger_start`` of this run, taking over from a holder whose process died.

    Raises ``StoreUnavailableError`` in both fail modes (the gate decides).
    """
    barrier = runtime.barrier
    # With start marks the ledger holds every run: a lost delivery is no crash by itself.
    came_back = redelivered(request) and not barrier.config.start_marks
    lease = runtime.lease
    before = barrier.ledger_start(request.id, worker_id, lease, known, came_back, strict=True)
    holder = before.running_on
    if holder is None or holder == worker_id or not _holder_died(task, runtime, before):
        return before
    barrier.ledger_crash(request.id, holder=holder)
    logger.warning(
        "task %s[%s]: its run on %s died with its process; this copy takes over",
        task.name,
        request.id,
        holder,
        extra={"task_id": request.id, "running_on": holder},
    )
    return barrier.ledger_start(request.id, worker_id, lease, known, came_back, strict=True)


def _holder_died(task: GatedTask, runtime: TaskRuntime, entry: LedgerEntry) -> bool:
    """True when the node registry shows the process holding ``entry``'s lease dead.

    One registry read, only for a copy delivered while another run holds the
    lease. A registry that cannot be read shows nothing dead.
    """
    holder = entry.running_on
    if holder is None:
        return False
    try:
        records = runtime.store.node_list(group=app_group(task.app))
    except StoreUnavailableError as exc:
        report_store_error(exc)
        return False
    return not holder_alive(records, holder, entry.held_for)


def _defer_duplicate(
    task: GatedTask,
    runtime: TaskRuntime,
    request: Any,
    headers: Mapping[str, Any],
    entry: LedgerEntry,
) -> NoReturn:
    """A copy of a task whose first run lives: send it again for later, drop this delivery.

    It never runs while that run lives; sent again (checked after
    ``DUPLICATE_RECHECK``, its stored state unchanged) rather than dropped,
    so the task is not lost should the holder die: a copy of a task that
    ended is dropped then. The copy carries the larger of its header's and
    the ledger's crash counts (a store restarted from an older save keeps
    it from counting lower).
    """
    holder = entry.running_on
    countdown = min(runtime.lease, DUPLICATE_RECHECK)
    logger.warning(
        "task %s[%s] is still running on %s: duplicate delivery deferred %.1fs",
        task.name,
        request.id,
        holder,
        countdown,
        extra={"task_id": request.id, "running_on": holder},
    )
    crashes = max(parse_headers(headers).crashes, entry.crashes)
    later = {**forwarded(headers), HEADER_CRASHES: crashes, HEADER_COPY: holder}
    send_again(task, request, countdown, later)


def _retry_later(
    task: GatedTask, request: Any, headers: Mapping[str, Any], exc: StoreUnavailableError
) -> NoReturn:
    """The ledger cannot be read, so retry later, the crashes kept in the header.

    A message that came back, or a copy of a run that may live, stays marked
    as a copy (``HEADER_COPY``): it runs once the store answers. Like a
    breaker's deferral, the retry spends no attempt of the retry policy.
    """
    report_store_error(exc, task_id=request.id)
    parsed = parse_headers(headers, request.retries)
    retry_headers = {
        **forwarded(headers),
        HEADER_CRASHES: message_crashes(request.delivery_info, headers),
        HEADER_DEFERRALS: parsed.deferrals + 1,
    }
    copy_of = parsed.copy_of or ("?" if redelivered(request) else None)
    if copy_of is not None:
        retry_headers[HEADER_COPY] = copy_of
    retry_again(task, request, exc, STORE_DOWN_COUNTDOWN, retry_headers)


def _give_up(task: GatedTask, runtime: TaskRuntime, request: Any, crashes: int) -> NoReturn:
    """Close the ledger and raise ``WorkerCrashedError``: the task is not run again."""
    barrier = runtime.barrier
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
    try:
        runtime.barrier.ledger_finish(request.id)
    except StoreUnavailableError as exc:
        report_store_error(exc, task_id=request.id)
    logger.warning(
        "task %s[%s] came back but already ended %s: not run again",
        task.name,
        request.id,
        state,
        extra={"task_id": request.id, "state": state},
    )
    raise Ignore()


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
