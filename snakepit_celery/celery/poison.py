"""The Celery side of the quarantine: capture a message, quarantine it, replay it.

Four places end a message for good and call in here, each with one line:
the pool parent when the crash barrier fails a crashed task
(``request.SnakepitRequest``), the crash-ledger gate when a message that
came back is past ``max_restarts`` (``ledger_gate``), the message guard
when a message would make Celery's main process fail
(``bootsteps.message_guard``), and a node whose main process stops with an
error holding a message that more than ``max_restarts`` such nodes held
(``bootsteps.giveback``). The crash path adds each counted crash to
the task's history (``note_crash``). None of them ever raises: a quarantine
that cannot be written is logged, and the task still ends as it would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery, states
from kombu.serialization import dumps

from snakepit_celery.celery.app_context import app_store, namespace, settings_for
from snakepit_celery.celery.headers import HEADER_CRASHES, HEADER_DEFERRALS, HEADER_FIRST_TRY
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.policy.routing import node_queue
from snakepit_celery.quarantine import (
    REASON_STOPPED,
    Quarantine,
    QuarantinedMessage,
    message_digest,
)
from snakepit_celery.store import report_store_error
from snakepit_celery.store.records import QuarantineEntry

if TYPE_CHECKING:
    from snakepit_celery.barrier import CrashBarrier
    from snakepit_celery.celery.crash import CrashOutcome, SeenCrash
    from snakepit_celery.policy.crash import CrashInfo

__all__ = [
    "kombu_message",
    "note_crash",
    "quarantine_crashed",
    "quarantine_delivered",
    "quarantine_gave_up",
    "replay",
]

logger = logging.getLogger(__name__)

#: Keys of a task request that are not message headers (body, delivery, runtime state).
_NOT_HEADERS = frozenset(
    {
        "args",
        "kwargs",
        "callbacks",
        "errbacks",
        "chain",
        "chord",
        "properties",
        "reply_to",
        "correlation_id",
        "hostname",
        "delivery_info",
        "is_eager",
        "called_directly",
        "headers",
        "utc",
        "loglevel",
        "logfile",
    }
)
#: Message properties kept for a replay.
_PROPERTIES = ("correlation_id", "reply_to", "priority", "delivery_mode")
#: Headers that carry crash counts: a replay starts without them.
_CRASH_HEADERS = (HEADER_CRASHES, HEADER_DEFERRALS, HEADER_FIRST_TRY)


def kombu_message(message: Any) -> QuarantinedMessage:
    """The stored form of a kombu message, exactly as it was delivered."""
    delivery = getattr(message, "delivery_info", None) or {}
    properties = getattr(message, "properties", None) or {}
    return QuarantinedMessage.of(
        message.body,
        headers=dict(getattr(message, "headers", None) or {}),
        properties={k: properties[k] for k in _PROPERTIES if properties.get(k) is not None},
        content_type=str(message.content_type or "application/json"),
        content_encoding=str(message.content_encoding or "utf-8"),
        exchange=str(delivery.get("exchange") or ""),
        routing_key=str(delivery.get("routing_key") or ""),
    )


def request_message(task: Any, request: Any) -> QuarantinedMessage:
    """The message of a running task rebuilt from its request (in a pool child)."""
    fields = {k: v for k, v in vars(request).items() if not k.startswith("_")}
    headers = {k: v for k, v in fields.items() if k not in _NOT_HEADERS}
    embed = {k: fields.get(k) for k in ("callbacks", "errbacks", "chain", "chord")}
    body = (list(fields.get("args") or ()), dict(fields.get("kwargs") or {}), embed)
    content_type, encoding, data = dumps(body, serializer=task.serializer)  # type: ignore[no-untyped-call]
    delivery = fields.get("delivery_info") or {}
    properties = fields.get("properties") or {}
    return QuarantinedMessage.of(
        data,
        headers=headers,
        properties={k: properties[k] for k in _PROPERTIES if properties.get(k) is not None},
        content_type=content_type,
        content_encoding=encoding,
        exchange=str(delivery.get("exchange") or ""),
        routing_key=str(delivery.get("routing_key") or ""),
    )


def note_crash(barrier: CrashBarrier, seen: SeenCrash, info: CrashInfo) -> None:
    """Add a counted crash to the task's history (classification, node, device)."""
    crash = {
        "classification": str(info.classification),
        "reason": info.reason[:500],
        "exit_code": info.exit_code,
        "signal": info.signal,
        "node": seen.node,
        "device": None if seen.device is None else str(seen.device),
        "observer": str(seen.observer),
    }
    _never_raise(
        lambda: Quarantine(barrier.store, barrier.config).note_crash(seen.task_id, crash),
        seen.task_id,
    )


def quarantine_crashed(request: Any, barrier: CrashBarrier, outcome: CrashOutcome) -> None:
    """The pool parent ends a crashed task FAILURE: keep its message in the quarantine."""
    if outcome.retry or outcome.crashes < 1:
        return
    message = getattr(request, "_message", None)
    if message is None:
        return
    task_id = str(request.id)
    _never_raise(
        lambda: Quarantine(barrier.store, barrier.config).add(
            task_id,
            kombu_message(message),
            reason=REASON_STOPPED,
            node=str(request.hostname),
            error=str(outcome.error),
            crashes=outcome.crashes,
            task_id=task_id,
        ),
        task_id,
    )


def quarantine_gave_up(task: Any, barrier: CrashBarrier, request: Any, crashes: int) -> None:
    """The crash-ledger gate stops a message past ``max_restarts``: quarantine it."""
    task_id = str(request.id)
    _never_raise(
        lambda: Quarantine(barrier.store, barrier.config).add(
            task_id,
            request_message(task, request),
            reason=REASON_STOPPED,
            node=str(request.hostname),
            error=f"lost with its worker {crashes} time(s)",
            crashes=crashes,
            task_id=task_id,
        ),
        task_id,
    )


def quarantine_delivered(
    app: Celery,
    node: str,
    message: Any,
    *,
    reason: str,
    failure: Exception,
    crashes: int = 0,
) -> None:
    """Quarantine a message the worker's main process holds; FAILURE ``failure`` for its task.

    Keyed by its task id, or by a digest of the message when it has no
    usable one (no state is stored then). Never raises (logged).
    """
    headers = dict(getattr(message, "headers", None) or {})
    task_id = headers.get("id") if isinstance(headers.get("id"), str) else None
    entry_id = task_id or message_digest(message.body, headers)
    _never_raise(
        lambda: Quarantine(app_store(app), settings_for(app).crash_barrier).add(
            entry_id,
            kombu_message(message),
            reason=reason,
            node=node,
            error=str(failure),
            crashes=crashes,
            task_id=task_id,
        ),
        entry_id,
    )
    if task_id:
        try:
            app.backend.store_result(task_id, failure, states.FAILURE)
        except Exception:
            logger.exception("could not store the FAILURE of task %s", task_id)


def replay(app: Celery, quarantine: Quarantine, entry: QuarantineEntry, queue: str | None) -> str:
    """Publish ``entry``'s message again with a fresh crash count; returns the queue used.

    The task's crash ledger, crash history and stored result are forgotten
    first, so it runs as new; the entry leaves the quarantine before the
    publish (a fast crash may bring it back) and is put back if that fails.
    """
    message = QuarantinedMessage.from_dict(entry.record.get("message") or {})
    task_id = entry.record.get("task_id")
    if task_id:
        quarantine.store.quarantine_forget(str(task_id))
        app.backend.forget(str(task_id))
    target = queue or _replay_queue(app, message)
    headers = {k: v for k, v in message.headers.items() if k not in _CRASH_HEADERS}
    declared = app.amqp.queues[target]  # a queue Celery does not know is made like its own
    quarantine.drop(entry.entry_id)  # first: the replay may come back here within ms
    try:
        _publish(app, message, declared, headers)
    except Exception:
        ttl = max(1.0, entry.expires_at - entry.quarantined_at)
        quarantine.store.quarantine_add(
            entry.entry_id,
            entry.record,
            ttl=ttl,
            max_entries=quarantine.config.quarantine_max_entries,
        )
        raise
    return target


def _publish(app: Celery, message: QuarantinedMessage, queue: Any, headers: Any) -> None:
    with app.producer_or_acquire() as producer:
        producer.publish(
            message.raw_body(),
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            declare=[queue],
            retry=True,
            **dict(message.properties),
        )


def _replay_queue(app: Celery, message: QuarantinedMessage) -> str:
    """Where a replay goes by default: the original queue, unless it was a node's own one."""
    routing_key = message.routing_key
    if not routing_key or routing_key.startswith(node_queue("", prefix=namespace(app))):
        return str(app.conf.task_default_queue)
    return routing_key


def _never_raise(action: Callable[[], object], task_id: str) -> None:
    """Run ``action``; log (never raise) what it raises: the task still ends as it would.

    A store that does not answer is reported like every store outage (counted,
    logged once a minute), not with a traceback per message.
    """
    try:
        action()
    except StoreUnavailableError as exc:
        report_store_error(exc, task_id=task_id)
    except Exception:
        logger.exception("could not quarantine task %s", task_id, extra={"task_id": task_id})
