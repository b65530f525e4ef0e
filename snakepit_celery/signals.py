"""Telemetry signals, as Celery ``Signal`` objects, and the payload each one carries.

Connect receivers the Celery way::

    from snakepit_celery import signals

    @signals.breaker_opened.connect
    def on_open(sender, failure_count, pool, reason, **kwargs): ...

Each signal is sent with ``sender`` set to the object that emitted it and its
fields as keywords. Inside the package, backends (Celery events in
``snakepit_celery.celery.events``, Prometheus in ``snakepit_celery.metrics``)
are thin hooks after stamina's instrumentation: a ``SignalHook`` sees every
signal as one frozen payload (``BreakerOpened``, ``RetryAttempt``, ...).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, dataclass_transform

from celery.utils.dispatch import Signal

__all__ = [
    "ALL_SIGNALS",
    "PAYLOADS",
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "BreakerTransition",
    "DeviceTainted",
    "GpuHealth",
    "RetryAttempt",
    "RetryExhausted",
    "RetryOutcome",
    "RetrySuccess",
    "SignalHook",
    "SignalPayload",
    "Tainted",
    "TaskQuarantined",
    "WorkerCrash",
    "WorkerTainted",
    "about_task",
    "breaker_closed",
    "breaker_half_open",
    "breaker_opened",
    "device_tainted",
    "gpu_health",
    "payload_of",
    "retry_attempt",
    "retry_exhausted",
    "retry_success",
    "task_quarantined",
    "worker_crash",
    "worker_tainted",
]

breaker_opened = Signal(name="breaker_opened", providing_args={"failure_count", "pool", "reason"})
breaker_closed = Signal(name="breaker_closed", providing_args={"pool"})
breaker_half_open = Signal(name="breaker_half_open", providing_args={"pool"})
retry_attempt = Signal(name="retry_attempt", providing_args={"attempt", "delay"})
retry_success = Signal(name="retry_success", providing_args={"attempts", "total_duration"})
retry_exhausted = Signal(
    name="retry_exhausted", providing_args={"attempts", "total_duration", "last_error"}
)
worker_crash = Signal(name="worker_crash", providing_args={"pool", "worker_id", "reason"})
worker_tainted = Signal(name="worker_tainted", providing_args={"pool", "worker_id", "info"})
device_tainted = Signal(name="device_tainted", providing_args={"pool", "node", "device", "info"})
gpu_health = Signal(
    name="gpu_health",
    providing_args={
        *("node", "gpu_uuid", "device", "finding", "health_class", "xid", "action", "detail")
    },
)
task_quarantined = Signal(
    name="task_quarantined", providing_args={"entry_id", "task_name", "reason", "crashes", "node"}
)

#: Every signal of the package, by name (used by the event bridge and metrics).
ALL_SIGNALS: dict[str, Signal] = {
    signal.name: signal
    for signal in (
        breaker_opened,
        breaker_closed,
        breaker_half_open,
        retry_attempt,
        retry_success,
        retry_exhausted,
        worker_crash,
        worker_tainted,
        device_tainted,
        gpu_health,
        task_quarantined,
    )
}

#: The task the signals sent in this context are about (``about_task``).
_ABOUT_TASK: ContextVar[str | None] = ContextVar("snakepit_about_task", default=None)


@contextmanager
def about_task(task_id: str | None) -> Iterator[None]:
    """Tie every signal sent inside the block without its own ``task_id`` to ``task_id``."""
    token = _ABOUT_TASK.set(None if task_id is None else str(task_id))
    try:
        yield
    finally:
        _ABOUT_TASK.reset(token)


#: Keyword names every payload knows besides its own fields.
_COMMON_FIELDS = frozenset({"sender", "task_id", "extra"})


@dataclass_transform(kw_only_default=True, frozen_default=True)
@dataclass(frozen=True, kw_only=True)
class SignalPayload:
    """What every signal carries: its sender, the task it is about (if the sender
    said so with ``task_id=``), and any keyword beyond the signal's own fields.

    Every subclass is a frozen, keyword-only dataclass; ``signal=`` in its class
    line names the signal it is the payload of.
    """

    signal_name: ClassVar[str] = ""
    sender: Any = field(default=None, repr=False, compare=False)
    task_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __init_subclass__(cls, *, signal: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if signal:
            cls.signal_name = signal
        dataclass(frozen=True, kw_only=True)(cls)

    def fields(self) -> dict[str, Any]:
        """The keywords the signal was sent with (``sender`` aside)."""
        own = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _COMMON_FIELDS
        }
        if self.task_id is not None:
            own["task_id"] = self.task_id
        return {**own, **self.extra}


class BreakerTransition(SignalPayload):
    """Breaker ``pool`` changed state, cluster-wide (sent once per transition)."""

    pool: str | None = None


class BreakerOpened(BreakerTransition, signal="breaker_opened"):
    """Breaker ``pool`` opened after ``failure_count`` failures (``reason``: why)."""

    failure_count: int | None = None
    reason: str | None = None


class BreakerClosed(BreakerTransition, signal="breaker_closed"):
    """Breaker ``pool`` closed (a probe succeeded)."""


class BreakerHalfOpen(BreakerTransition, signal="breaker_half_open"):
    """Breaker ``pool`` went half-open (its reset timeout passed)."""


class RetryAttempt(SignalPayload, signal="retry_attempt"):
    """Retry number ``attempt`` is scheduled ``delay`` seconds from now."""

    attempt: int | None = None
    delay: float | None = None


class RetryOutcome(SignalPayload):
    """A retried call ended after ``attempts`` attempts and ``total_duration`` seconds."""

    attempts: int | None = None
    total_duration: float | None = None


class RetrySuccess(RetryOutcome, signal="retry_success"):
    """A retried call succeeded in the end."""


class RetryExhausted(RetryOutcome, signal="retry_exhausted"):
    """Retries ran out; ``last_error`` is the final failure."""

    last_error: BaseException | None = None


class WorkerCrash(SignalPayload, signal="worker_crash"):
    """Worker ``worker_id`` of ``pool`` crashed; ``reason`` is its classification."""

    pool: str | None = None
    worker_id: str | None = None
    reason: Any = None


class Tainted(SignalPayload):
    """Something of ``pool`` is out of rotation until its taint expires (``info``: the crash)."""

    pool: str | None = None
    info: Any = None


class WorkerTainted(Tainted, signal="worker_tainted"):
    """Worker ``worker_id`` is tainted."""

    worker_id: str | None = None


class DeviceTainted(Tainted, signal="device_tainted"):
    """Device ``device`` of ``node`` is tainted."""

    node: str | None = None
    device: str | None = None


class GpuHealth(SignalPayload, signal="gpu_health"):
    """The GPU health watch of ``node`` saw ``finding`` on GPU ``gpu_uuid`` (``device``: cuda:N).

    ``health_class`` is the finding's class (``hardware``, ``transient``,
    ``application``, ``contained``), ``xid`` the Xid code of an Xid event,
    ``action`` what was done (``tainted``, ``recycle``, ``recovered``, ...).
    """

    node: str | None = None
    gpu_uuid: str | None = None
    device: str | None = None
    finding: str | None = None
    health_class: str | None = None
    xid: int | None = None
    action: str | None = None
    detail: str | None = None


class TaskQuarantined(SignalPayload, signal="task_quarantined"):
    """A message went into the quarantine (``reason``: stopped, malformed, killed_nodes).

    ``entry_id``: its id there (the task id, or a digest without one);
    ``crashes``: the crashes counted; ``node``: the node that quarantined it.
    """

    entry_id: str | None = None
    task_name: str | None = None
    reason: str | None = None
    crashes: int | None = None
    node: str | None = None


#: The payload type of every signal, by signal name.
PAYLOADS: dict[str, type[SignalPayload]] = {
    cls.signal_name: cls
    for cls in (
        BreakerOpened,
        BreakerClosed,
        BreakerHalfOpen,
        RetryAttempt,
        RetrySuccess,
        RetryExhausted,
        WorkerCrash,
        WorkerTainted,
        DeviceTainted,
        GpuHealth,
        TaskQuarantined,
    )
}


def payload_of(signal: Signal, sender: Any, kwargs: Mapping[str, Any]) -> SignalPayload:
    """The frozen payload of one sending of ``signal`` (a signal of this module)."""
    cls = PAYLOADS[signal.name]
    known = {f.name for f in dataclasses.fields(cls)} - _COMMON_FIELDS
    own = {key: value for key, value in kwargs.items() if key in known}
    extra = {key: value for key, value in kwargs.items() if key not in known | {"task_id"}}
    task_id = kwargs.get("task_id") or _ABOUT_TASK.get()
    return cls(
        sender=sender,
        task_id=None if task_id is None else str(task_id),
        extra=extra,
        **own,
    )


class SignalHook(ABC):
    """A receiver of every signal of the package that sees each one as its payload.

    Subclasses implement ``handle``; ``connect``/``disconnect`` attach the hook
    to every signal under one ``dispatch_uid`` (connecting again replaces it).
    """

    def __call__(self, sender: Any = None, signal: Any = None, **kwargs: Any) -> None:
        """Celery signal receiver: build the payload and hand it to ``handle``."""
        self.handle(payload_of(signal, sender, kwargs))

    @abstractmethod
    def handle(self, payload: SignalPayload) -> None:
        """React to one signal."""

    def connect(self, dispatch_uid: str) -> None:
        """Receive every signal of the package from now on."""
        for name, signal in ALL_SIGNALS.items():
            uid = f"{dispatch_uid}-{name}"
            signal.disconnect(dispatch_uid=uid)
            signal.connect(self, weak=False, dispatch_uid=uid)

    @staticmethod
    def disconnect(dispatch_uid: str) -> None:
        """Stop the hook connected under ``dispatch_uid``."""
        for name, signal in ALL_SIGNALS.items():
            signal.disconnect(dispatch_uid=f"{dispatch_uid}-{name}")
