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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from celery.utils.dispatch import Signal

__all__ = [
    "ALL_SIGNALS",
    "PAYLOADS",
    "BreakerClosed",
    "BreakerHalfOpen",
    "BreakerOpened",
    "DeviceTainted",
    "RetryAttempt",
    "RetryExhausted",
    "RetrySuccess",
    "SignalHook",
    "SignalPayload",
    "WorkerCrash",
    "WorkerTainted",
    "breaker_closed",
    "breaker_half_open",
    "breaker_opened",
    "device_tainted",
    "payload_of",
    "retry_attempt",
    "retry_exhausted",
    "retry_success",
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
    )
}

#: Keyword names every payload knows besides its own fields.
_COMMON_FIELDS = frozenset({"sender", "task_id", "extra"})


@dataclass(frozen=True, kw_only=True)
class SignalPayload:
    """What every signal carries: its sender, the task it is about (if the sender
    said so with ``task_id=``), and any keyword beyond the signal's own fields."""

    signal_name: ClassVar[str] = ""
    sender: Any = field(default=None, repr=False, compare=False)
    task_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

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


@dataclass(frozen=True, kw_only=True)
class BreakerOpened(SignalPayload):
    """Breaker ``pool`` opened after ``failure_count`` failures (``reason``: why)."""

    signal_name: ClassVar[str] = "breaker_opened"
    pool: str | None = None
    failure_count: int | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class BreakerClosed(SignalPayload):
    """Breaker ``pool`` closed (a probe succeeded)."""

    signal_name: ClassVar[str] = "breaker_closed"
    pool: str | None = None


@dataclass(frozen=True, kw_only=True)
class BreakerHalfOpen(SignalPayload):
    """Breaker ``pool`` went half-open (its reset timeout passed)."""

    signal_name: ClassVar[str] = "breaker_half_open"
    pool: str | None = None


@dataclass(frozen=True, kw_only=True)
class RetryAttempt(SignalPayload):
    """Retry number ``attempt`` is scheduled ``delay`` seconds from now."""

    signal_name: ClassVar[str] = "retry_attempt"
    attempt: int | None = None
    delay: float | None = None


@dataclass(frozen=True, kw_only=True)
class RetrySuccess(SignalPayload):
    """A retried call succeeded after ``attempts`` attempts and ``total_duration`` seconds."""

    signal_name: ClassVar[str] = "retry_success"
    attempts: int | None = None
    total_duration: float | None = None


@dataclass(frozen=True, kw_only=True)
class RetryExhausted(SignalPayload):
    """Retries ran out after ``attempts``; ``last_error`` is the final failure."""

    signal_name: ClassVar[str] = "retry_exhausted"
    attempts: int | None = None
    total_duration: float | None = None
    last_error: BaseException | None = None


@dataclass(frozen=True, kw_only=True)
class WorkerCrash(SignalPayload):
    """Worker ``worker_id`` of ``pool`` crashed; ``reason`` is its classification."""

    signal_name: ClassVar[str] = "worker_crash"
    pool: str | None = None
    worker_id: str | None = None
    reason: Any = None


@dataclass(frozen=True, kw_only=True)
class WorkerTainted(SignalPayload):
    """Worker ``worker_id`` of ``pool`` is kept out of rotation (``info``: the crash)."""

    signal_name: ClassVar[str] = "worker_tainted"
    pool: str | None = None
    worker_id: str | None = None
    info: Any = None


@dataclass(frozen=True, kw_only=True)
class DeviceTainted(SignalPayload):
    """Device ``device`` of ``node`` in ``pool`` is kept out of rotation (``info``: the crash)."""

    signal_name: ClassVar[str] = "device_tainted"
    pool: str | None = None
    node: str | None = None
    device: str | None = None
    info: Any = None


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
    )
}


def payload_of(signal: Signal, sender: Any, kwargs: Mapping[str, Any]) -> SignalPayload:
    """The frozen payload of one sending of ``signal`` (a signal of this module)."""
    cls = PAYLOADS[signal.name]
    known = {f.name for f in dataclasses.fields(cls)} - _COMMON_FIELDS
    own = {key: value for key, value in kwargs.items() if key in known}
    extra = {key: value for key, value in kwargs.items() if key not in known | {"task_id"}}
    task_id = kwargs.get("task_id")
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
