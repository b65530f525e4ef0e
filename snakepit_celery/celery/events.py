"""The signal → Celery event bridge, so Flower and any ``app.events.Receiver`` see snakepit.

Inside a worker (its main process and its pool children) every signal of
``snakepit_celery.signals`` is also published as a Celery event:

- about one task (a ``task_id`` keyword, or sent while a task runs):
  ``task-snakepit-<name>`` with the task's ``uuid`` (Flower counts these);
- otherwise, fleet-level: ``snakepit-<name>`` (``snakepit-breaker-opened``).

Underscores in the signal name become hyphens. Fields are the signal's
keywords made JSON-safe (``json_safe``). Events go through a pooled producer
of the app (``app.events.default_dispatcher``), not the worker's own
dispatcher: that one is off without ``-E`` and drops event groups other than
``worker``, while these facts are rare and always worth seeing. Publishing
never raises into the code that sent the signal.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
import time
from collections.abc import Callable, Mapping
from datetime import date, datetime
from typing import Any

from celery import Celery

from snakepit_celery.celery.bootsteps.current import worker_node
from snakepit_celery.signals import SignalHook, SignalPayload

__all__ = [
    "EVENT_PREFIX",
    "EventBridge",
    "event_type",
    "install_events",
    "json_safe",
    "signal_event",
]

logger = logging.getLogger(__name__)

#: Every event type of the package starts with this (after ``task-`` for task-level ones).
EVENT_PREFIX = "snakepit"

#: Fields Celery sets on every event (or on task events); a signal keyword of that name
#: is sent as ``snakepit_<name>`` instead.
_RESERVED_FIELDS = frozenset(
    {"type", "timestamp", "hostname", "utcoffset", "pid", "clock", "uuid", "local_received"}
)

#: Seconds between two warnings about events that could not be published.
_WARN_INTERVAL = 60.0


def event_type(signal_name: str, *, task_level: bool) -> str:
    """``snakepit-breaker-opened`` or, about one task, ``task-snakepit-retry-attempt``."""
    name = f"{EVENT_PREFIX}-{signal_name.replace('_', '-')}"
    return f"task-{name}" if task_level else name


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

    A ``task_id`` keyword, or else the task running in this process, makes it a
    task-level event carrying ``uuid``.
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
    return event_type(signal_name, task_level=bool(task_id)), body


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
        try:
            type_, fields = signal_event(self.app, name, payload.fields())
            self.publish(node or "", type_, fields)
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_warning >= _WARN_INTERVAL:
                self._last_warning = now
                logger.warning(
                    "could not publish snakepit event for signal %s: %r",
                    name,
                    exc,
                    extra={"snakepit_signal": name},
                )

    def _publish(self, node: str, type_: str, fields: dict[str, Any]) -> None:
        with self.app.events.default_dispatcher(hostname=node or None) as dispatcher:
            dispatcher.send(type_, **fields)


def install_events(app: Celery, *, always: bool = False) -> EventBridge:
    """Connect an ``EventBridge`` for ``app`` to every signal in ``signals.ALL_SIGNALS``.

    Idempotent per app: a second call replaces the first bridge.
    """
    bridge = EventBridge(app, always=always)
    bridge.connect(f"snakepit-events-{id(app)}")
    return bridge
