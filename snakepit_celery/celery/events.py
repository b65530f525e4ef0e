"""The signal → Celery event bridge, so Flower and any ``app.events.Receiver`` see snakepit.

Inside a worker (its main process and its pool children) every signal of
``snakepit_celery.signals`` is also published as a Celery event of type
``snakepit-<name>`` (``snakepit-breaker-opened``; underscores become hyphens).
An event about one task (a ``task_id`` keyword, ``signals.about_task``, or
sent while a task runs) carries the task's ``uuid``. Never a ``task-<x>``
type: Celery's ``celery.events.state`` (Flower's task list) turns an unknown
``task-<x>`` event into a custom task state ``X`` that outranks STARTED and
RETRY. Every type, its fields and when it is sent: ``EVENT_TYPES``.

Fields are the signal's keywords made JSON-safe (``json_safe``). Events go
through a pooled producer of the app (``app.events.default_dispatcher``), not
the worker's own dispatcher: that one is off without ``-E`` and drops event
groups other than ``worker``, while these facts are rare and always worth
seeing. A publish that meets a dead connection (a broker that dropped an idle
pooled connection) reconnects and retries; an event that still cannot be
sent is counted (``lost_events``, ``snakepit_events_lost_total``) and logged.
Publishing never raises into the code that sent the signal.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from celery import Celery

from snakepit_celery.celery.bootsteps.current import worker_node
from snakepit_celery.metrics.hooks import count_event
from snakepit_celery.signals import SignalHook, SignalPayload

__all__ = [
    "EVENT_PREFIX",
    "EVENT_TYPES",
    "PUBLISH_RETRY_POLICY",
    "RUN_EVENT",
    "EventBridge",
    "event_type",
    "install_events",
    "json_safe",
    "lost_events",
    "signal_event",
]

logger = logging.getLogger(__name__)

#: Every event type of the package starts with this and a hyphen.
EVENT_PREFIX = "snakepit"

#: The per-run event of a snakepit task that is not a first delivery (with ``-E``):
#: ``uuid``, ``node``, ``device``, ``breaker``, ``crashes``, ``deferrals``, ``attempt``.
RUN_EVENT = f"{EVENT_PREFIX}-run"

#: Every event type the package sends, and when (fields: see docs/API.md "Events").
EVENT_TYPES: dict[str, str] = {
    RUN_EVENT: "a retry, deferral or crash re-run of a snakepit task starts (worker with -E)",
    "snakepit-breaker-opened": "a breaker opened (once per transition, cluster-wide)",
    "snakepit-breaker-half-open": "a breaker went half-open",
    "snakepit-breaker-closed": "a breaker closed (a probe succeeded, or reset())",
    "snakepit-retry-attempt": "a failed task or call is retried",
    "snakepit-retry-success": "a retried task or call succeeded",
    "snakepit-retry-exhausted": "retries ran out",
    "snakepit-worker-crash": "a worker process died (recorded in its health pool)",
    "snakepit-worker-tainted": "a worker node was taken out of rotation",
    "snakepit-device-tainted": "a device was taken out of rotation",
    "snakepit-gpu-health": "the GPU health watch found something on a GPU",
    "snakepit-task-quarantined": "a task or malformed message went into the quarantine",
}

#: How a publish retries on a dead connection (kombu ``Connection.ensure`` options).
PUBLISH_RETRY_POLICY: dict[str, float] = {
    "max_retries": 3,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}

#: Fields Celery sets on every event (or on task events); a signal keyword of that name
#: is sent as ``snakepit_<name>`` instead.
_RESERVED_FIELDS = frozenset(
    {"type", "timestamp", "hostname", "utcoffset", "pid", "clock", "uuid", "local_received"}
)

#: Seconds between two warnings about events that could not be published.
_WARN_INTERVAL = 60.0


def event_type(signal_name: str) -> str:
    """The event type of a signal: ``breaker_opened`` → ``snakepit-breaker-opened``."""
    return f"{EVENT_PREFIX}-{signal_name.replace('_', '-')}"


_lost: Counter[str] = Counter()
_lost_lock = threading.Lock()


def lost_events() -> dict[str, int]:
    """Events this process could not publish, by type (since it started)."""
    with _lost_lock:
        return dict(_lost)


def _count_lost(type_: str) -> int:
    with _lost_lock:
        _lost[type_] += 1
        return sum(_lost.values())


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: exceptions → repr, dataclasses → ``as_dict()``, enums → value.

    Mappings and sequences are converted item by item; anything else that JSON
    cannot hold becomes its ``str()``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, BaseException):
        return repr(value)
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict) and not isinstance(value, type):
        return json_safe(as_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_safe(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(item) for item in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _current_task_id(app: Celery) -> str | None:
    task = app.current_worker_task
    if task is None:
        return None
    task_id = getattr(task.request, "id", None)
    return str(task_id) if task_id else None


def signal_event(
    app: Celery, signal_name: str, fields: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The event ``(type, fields)`` for one signal sent with keyword arguments ``fields``.

    A ``task_id`` keyword, or else the task running in this process, ties it
    to that task: the event carries its ``uuid``.
    """
    payload = dict(fields)
    task_id = payload.pop("task_id", None) or _current_task_id(app)
    body = {
        (f"snakepit_{key}" if key in _RESERVED_FIELDS else key): json_safe(value)
        for key, value in payload.items()
    }
    body["signal"] = signal_name
    if task_id:
        body["uuid"] = str(task_id)
    return event_type(signal_name), body


class EventBridge(SignalHook):
    """Hook on every snakepit signal; publishes each payload as a Celery event.

    Does nothing outside a worker running ``app`` (``worker.worker_node``),
    unless ``always`` is set (tests, or a process that wants its own events).
    """

    def __init__(
        self,
        app: Celery,
        *,
        always: bool = False,
        publish: Callable[[str, str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.app = app
        self.always = always
        self.publish = publish or self._publish
        self._last_warning = float("-inf")

    def handle(self, payload: SignalPayload) -> None:
        """Turn the payload into an event and publish it (never raises)."""
        node = worker_node(self.app)
        if node is None and not self.always:
            return
        name = payload.signal_name
        type_ = event_type(name)
        try:
            type_, fields = signal_event(self.app, name, payload.fields())
            self.publish(node or "", type_, fields)
        except Exception as exc:
            self._lost(type_, name, exc)
        else:
            count_event(type_, lost=False)

    def _lost(self, type_: str, name: str, exc: Exception) -> None:
        """Count a lost event; warn at most once a minute, with the running total."""
        total = _count_lost(type_)
        count_event(type_, lost=True)
        now = time.monotonic()
        if now - self._last_warning >= _WARN_INTERVAL:
            self._last_warning = now
            logger.warning(
                "could not publish snakepit event %s: %r (%d event(s) lost so far)",
                type_,
                exc,
                total,
                extra={"snakepit_signal": name, "snakepit_events_lost": total},
            )

    def _publish(self, node: str, type_: str, fields: dict[str, Any]) -> None:
        with self.app.events.default_dispatcher(hostname=node or None) as dispatcher:
            dispatcher.send(type_, retry=True, retry_policy=PUBLISH_RETRY_POLICY, **fields)


def install_events(app: Celery, *, always: bool = False) -> EventBridge:
    """Connect an ``EventBridge`` for ``app`` to every signal in ``signals.ALL_SIGNALS``.

    Idempotent per app: a second call replaces the first bridge.
    """
    bridge = EventBridge(app, always=always)
    bridge.connect(f"snakepit-events-{id(app)}")
    return bridge
