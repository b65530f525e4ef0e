"""Telemetry signals, as Celery ``Signal`` objects.

Connect receivers the Celery way::

    from snakepit_celery import signals

    @signals.breaker_opened.connect
    def on_open(sender, failure_count, pool, reason, **kwargs): ...

Inside a worker every signal is also forwarded as a Celery event (see
``snakepit_celery.celery.events``) so Flower and event consumers see it.
Each signal is sent with ``sender`` set to the object that emitted it.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = [
    "ALL_SIGNALS",
    "breaker_closed",
    "breaker_half_open",
    "breaker_opened",
    "device_tainted",
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
