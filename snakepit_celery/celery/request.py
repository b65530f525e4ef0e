"""``SnakepitRequest``: the crash barrier in the pool parent.

When a prefork child dies mid-task, billiard fails the request with
``WorkerLostError("Worker exited prematurely: signal 11 (SIGSEGV) ...")`` in
the pool parent. With the task's crash barrier enabled this request class
hands the crash to the one crash path (``celery.crash.handle_crash``: it
classifies the crash, records it in the health monitor, taints the worker
node and the device for GPU-fatal crashes, counts it in the store's crash
ledger), and then either re-publishes the task (same id and arguments, after
the barrier's backoff, with the crash count in a header, routed by the router
rather than back to this node's own queue) or ends it FAILURE with
``WorkerCrashedError``. The original message is acknowledged either way, so
it is never redelivered on top of that; on snakepit's Redis transport the
re-published message and that acknowledgement are one transaction
(``transport.redis.publish_with_ack``), so a node that dies in between
leaves neither two copies of the task nor none. Other brokers (RabbitMQ) cannot
make the two one transaction: there the re-published message is marked a copy
(``headers.HEADER_COPY``), so while the store is down it waits for the store
rather than run beside the original come back, each counting its own crashes.
With the barrier disabled (the default) Celery's own handling applies unchanged.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import signals as celery_signals
from celery import states
from celery.backends.base import DisabledBackend
from celery.canvas import Signature
from celery.exceptions import Retry
from celery.utils.saferepr import saferepr
from celery.worker.request import Request
from celery.worker.state import task_ready

from snakepit_celery.celery.app_context import app_group, app_store, namespace, taint_pools
from snakepit_celery.celery.crash import (
    ChildRecycled,
    CrashOutcome,
    Observer,
    SeenCrash,
    handle_crash,
)
from snakepit_celery.celery.headers import HEADER_CRASHES, forwarded, marked_copy
from snakepit_celery.celery.poison import quarantine_crashed
from snakepit_celery.celery.resend import RetryAgain, SendAgain
from snakepit_celery.celery.router import fleet_snapshot
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.errors import StoreUnavailableError, WorkerCrashedError
from snakepit_celery.policy.queues import live_untainted_others
from snakepit_celery.policy.routing import node_queue
from snakepit_celery.store import report_store_error
from snakepit_celery.transport.redis import ack_with_next_pop, publish_with_ack

__all__ = ["SnakepitRequest"]

logger = logging.getLogger(__name__)


class SnakepitRequest(Request):  # type: ignore[misc]
    """Celery ``Request`` whose failure path applies the task's crash barrier."""

    #: It publishes the messages the crash-ledger gate sends again (``celery.resend``).
    snakepit_sends_again = True

    def send_event(self, type: str, **fields: Any) -> None:
        """Celery's, but the success of a run re-published after a crash clears its error.

        Monitors (Flower, ``celery.events.state``) keep the ``exception`` of the
        crash's ``task-retried`` event on the task otherwise, so a task that
        crashed once and then succeeded would show SUCCESS with an exception.
        """
        if type == "task-succeeded" and HEADER_CRASHES in self._request_dict:
            fields = {"exception": None, "traceback": None, **fields}
        super().send_event(type, **fields)

    def acknowledge(self) -> None:
        """Celery's; a crash-barrier task's acknowledgement rides on the next pop.

        Its message would come back should the node die before that pop, and
        the crash-ledger gate drops such a copy: the task's state is stored.
        So the event loop does not wait a round trip for it (snakepit's Redis
        transport; others acknowledge as usual).
        """
        if not self.acknowledged and self._copy_would_be_dropped():
            ack_with_next_pop(self.message)
        super().acknowledge()

    def _copy_would_be_dropped(self) -> bool:
        """True when the gate would drop a copy of this message delivered after it ended."""
        task = self.task
        return (
            isinstance(task, SnakepitTask)
            and bool(task.acks_late)
            and not task.ignore_result
            and not isinstance(task.backend, DisabledBackend)
            and task.snakepit_runtime.barrier.enabled
        )

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> Any:
        """Handle a dead child (crash barrier) or a recycled one; else Celery's own handling."""
        exc = _unwrap(exc_info.exception)
        if isinstance(exc, ChildRecycled):
            return self._on_child_recycled(exc)
        if isinstance(exc, SendAgain | RetryAgain) and not self._send_again(exc.signature):
            return None
        task = self.task
        if (
            isinstance(task, SnakepitTask)
            and isinstance(exc, WorkerLostError | SystemExit)
            and not (self._already_cancelled or self._already_revoked)
            and task.snakepit_runtime.barrier.enabled
        ):
            if isinstance(exc, SystemExit):
                exc_info = self._worker_lost_info(exc)
                exc = _unwrap(exc_info.exception)
            if not self._success_was_stored():
                return self._on_crash(task, exc, exc_info)
        return super().on_failure(
            exc_info, send_failed_event=send_failed_event, return_ok=return_ok
        )

    # -- the crash-ledger gate sends the message again ------------------------------------
    def _send_again(self, message: dict[str, Any]) -> bool:
        """Publish the gate's new message with this one's acknowledgement (``celery.resend``).

        False when the broker refused it: this message is given back instead.
        """
        try:
            with self._acknowledged_with_publishes() as single:
                signature = Signature.from_dict(message, app=self.task.app)
                if not single:
                    _mark_copy(signature)
                signature.apply_async()
        except Exception:
            logger.exception("could not send task %s[%s] again", self.task_name, self.id)
            self.reject(requeue=True)
            return False
        return True

    @contextmanager
    def _acknowledged_with_publishes(self) -> Iterator[bool]:
        """Acknowledge this message after the block, with what the block publishes.

        On snakepit's Redis transport both go in one transaction, whenever
        Celery's event loop sends the acknowledgement. A message acknowledged
        already (on record, or early) leaves the publishes as they are.
        Yields True when this message cannot come back beside what the block
        publishes (acknowledged already, or one transaction); False on other
        brokers (RabbitMQ), where the node may die between the publish and the
        acknowledgement: the caller marks its message a copy (``marked_copy``).
        """
        if self.acknowledged:
            yield True
            return
        with publish_with_ack(self.message) as single:
            yield single
        self.acknowledge()

    # -- a child died --------------------------------------------------------------------
    def _on_crash(self, task: SnakepitTask, exc: BaseException, exc_info: Any) -> None:
        """The one crash path; its ending re-publishes the task or ends it FAILURE."""
        runtime = task.snakepit_runtime
        seen = SeenCrash(
            str(self.id),
            str(self.hostname),
            exc,
            Observer.POOL_PARENT,
            device=task.device_or_none((self.delivery_info or {}).get("routing_key")),
            idempotent=bool(task.idempotent),
            delivery_info=self.delivery_info,
            headers=self._request_dict,
        )

        def end(outcome: CrashOutcome) -> None:
            self._log_crash(outcome)
            if outcome.retry and self._republish(
                task, outcome.error, exc_info, outcome.countdown, outcome.crashes
            ):
                return
            quarantine_crashed(self, runtime.barrier, outcome)
            self._fail(outcome.error, exc)

        handle_crash(seen, runtime.barrier, runtime.health, end)

    def _log_crash(self, outcome: CrashOutcome) -> None:
        logger.error(
            "task %s[%s] lost its worker process: %s (crash %d)",
            self.task_name,
            self.id,
            outcome.info.reason,
            outcome.crashes,
            extra={
                "task_id": self.id,
                "classification": str(outcome.info.classification),
                "crashes": outcome.crashes,
            },
        )

    def _republish(
        self,
        task: SnakepitTask,
        error: WorkerCrashedError,
        exc_info: Any,
        countdown: float,
        crashes: int,
    ) -> bool:
        """Send the task again (same id and arguments, ``crashes`` in its header).

        False when the broker refused it.
        """
        request = self._context
        headers = {**forwarded(request.headers or {}), HEADER_CRASHES: crashes}
        signature = task.signature_from_request(request, countdown=countdown, headers=headers)
        routing_key = str((self.delivery_info or {}).get("routing_key") or "")
        node_queues = node_queue("", prefix=namespace(task.app))
        elsewhere = None if not routing_key else self._other_node_queue(task, routing_key)
        if elsewhere is not None or routing_key.startswith(node_queues):
            for option in ("queue", "exchange", "routing_key"):
                signature.options.pop(option, None)
            if elsewhere is not None:
                signature.options["queue"] = elsewhere
        try:
            with self._acknowledged_with_publishes() as single:
                if not single:
                    _mark_copy(signature)
                signature.apply_async()
        except Exception:
            logger.exception("could not re-publish task %s[%s] after a crash", task.name, self.id)
            return False
        task_ready(self)
        if self.store_errors:
            task.backend.mark_as_retry(self.id, error, exc_info.traceback, request=request)
        self.send_event("task-retried", exception=saferepr(error), traceback=exc_info.traceback)
        reason = Retry(exc=error, when=countdown)
        task.request_stack.push(request)
        try:
            celery_signals.task_retry.send(
                sender=task, request=request, reason=reason, einfo=exc_info
            )
        finally:
            task.request_stack.pop()
        logger.warning(
            "task %s[%s] re-published after a crash (countdown %.2fs)",
            task.name,
            self.id,
            countdown,
            extra={"task_id": self.id, "countdown": countdown},
        )
        return True

    def _other_node_queue(self, task: SnakepitTask, queue: str) -> str | None:
        """The own queue of another live, untainted node that consumes ``queue``, if any.

        A task re-published from a node's own queue is left to the router instead.
        """
        app = task.app
        prefix = namespace(app)
        if queue.startswith(node_queue("", prefix=prefix)):
            return None
        try:
            snapshot = fleet_snapshot(app_store(app), taint_pools(app), app_group(app))
        except StoreUnavailableError as exc:
            report_store_error(exc, task_id=self.id)
            return None
        nodes = sorted(
            record.node
            for record in live_untainted_others(snapshot, str(self.hostname))
            if queue in record.queues
        )
        if not nodes:
            return None
        return node_queue(nodes[zlib.crc32(self.id.encode()) % len(nodes)], prefix=prefix)

    def _fail(self, error: WorkerCrashedError, cause: BaseException) -> None:
        """End the task FAILURE with ``WorkerCrashedError`` and acknowledge its message."""
        try:
            raise error from cause
        except WorkerCrashedError:
            einfo = ExceptionInfo()
        super().on_failure(einfo, send_failed_event=True, return_ok=False)

    # -- a child recycled itself after a GPU-fatal error ------------------------------------
    def _on_child_recycled(self, exc: ChildRecycled) -> None:
        """The child stored the task's outcome and exited on purpose: finish the request."""
        task_ready(self)
        if exc.state == states.RETRY:
            self.acknowledge()
            self.send_event("task-retried", exception=exc.error, traceback="")
        else:
            self.acknowledge()
            self.send_event("task-failed", exception=exc.error, traceback="")
        logger.warning(
            "task %s[%s] ended %s; its worker process was recycled (GPU-fatal error)",
            self.task_name,
            self.id,
            exc.state,
            extra={"task_id": self.id, "state": exc.state},
        )


def _mark_copy(signature: Signature) -> None:
    """Mark ``signature``'s message a copy: the message it replaces may come back beside it.

    Both would then run on their headers' counts while the store is down, each
    counting its own crashes; marked, this one waits for the store instead.
    """
    signature.options["headers"] = marked_copy(signature.options.get("headers"))


def _unwrap(exc: Any) -> Any:
    """The exception behind billiard's ``ExceptionWithTraceback`` wrapper."""
    return exc.exc if isinstance(exc, ExceptionWithTraceback) else exc
