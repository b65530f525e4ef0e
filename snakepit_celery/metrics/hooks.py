"""Process metrics, fed by the Prometheus hook on the package's signals.

``enable_metrics()`` creates the metric objects once (on the default
registry) and connects ``PrometheusHook`` to every signal; each payload only
touches in-process metric objects. ``observe_hot_path()`` and
``count_event()`` are no-ops until metrics are enabled. The store's error
counts (``store_error_count``, ``script_error_count``) are carried over to
counters on every signal and every scrape (``sync_store_errors``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from snakepit_celery.metrics.client import prometheus
from snakepit_celery.signals import (
    BreakerClosed,
    BreakerHalfOpen,
    BreakerOpened,
    BreakerTransition,
    DeviceTainted,
    RetryAttempt,
    RetryExhausted,
    RetrySuccess,
    SignalHook,
    SignalPayload,
    Tainted,
    TaskQuarantined,
    WorkerCrash,
    WorkerTainted,
)

__all__ = [
    "BREAKER_STATE_VALUES",
    "CRASH_CLASSIFICATIONS",
    "HOT_PATH_BUCKETS",
    "ProcessMetrics",
    "PrometheusHook",
    "count_event",
    "disable_metrics",
    "enable_metrics",
    "metrics_enabled",
    "observe_hot_path",
    "sync_store_errors",
]

#: Numeric value of ``snakepit_breaker_state`` per breaker state.
BREAKER_STATE_VALUES: dict[str, float] = {"closed": 0.0, "half_open": 1.0, "open": 2.0}
#: Crash classifications used as label values (anything else is counted as ``unknown``).
CRASH_CLASSIFICATIONS = frozenset({"segfault", "abort", "oom", "gpu", "unknown"})
#: Buckets (seconds) of the hot-path histogram: snakepit's own overhead per task.
HOT_PATH_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
)

#: (attribute of ``ProcessMetrics``, metric name, help, labels) of every counter.
_COUNTERS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    (
        "breaker_transitions",
        "snakepit_breaker_transitions",
        "Breaker transitions made by this process, by the state entered.",
        ("breaker", "state"),
    ),
    (
        "retries",
        "snakepit_retries",
        "Retry events: attempt (a retry scheduled), success, exhausted.",
        ("outcome",),
    ),
    (
        "crashes",
        "snakepit_crashes",
        "Worker crashes recorded, by pool and classification.",
        ("pool", "classification"),
    ),
    (
        "taints",
        "snakepit_taints",
        "Taints set, by pool and kind (worker or device).",
        ("pool", "kind"),
    ),
    (
        "quarantined",
        "snakepit_quarantined",
        "Messages put into the quarantine by this process, by reason.",
        ("reason",),
    ),
    (
        "store_errors",
        "snakepit_store_errors",
        "Shared-store failures tolerated under fail-open.",
        (),
    ),
    (
        "script_errors",
        "snakepit_store_script_errors",
        "Store scripts that failed on the server (a bug or a broken server, never load).",
        (),
    ),
    (
        "events",
        "snakepit_events",
        "snakepit Celery events published by this process, by type.",
        ("type",),
    ),
    (
        "events_lost",
        "snakepit_events_lost",
        "snakepit Celery events that could not be published, by type.",
        ("type",),
    ),
)

#: ``dispatch_uid`` of the hook on the signals.
_DISPATCH_UID = "snakepit-metrics"


@dataclass
class ProcessMetrics:
    """The metric objects of this process (created once, on the default registry)."""

    breaker_state: Any
    breaker_transitions: Any
    retries: Any
    crashes: Any
    taints: Any
    quarantined: Any
    store_errors: Any
    script_errors: Any
    events: Any
    events_lost: Any
    hot_path: Any
    store_errors_seen: int = 0
    script_errors_seen: int = 0

    @classmethod
    def create(cls) -> ProcessMetrics:
        """Register every process metric with prometheus-client's default registry."""
        prom = prometheus()
        counters = {
            attribute: prom.Counter(name, documentation, list(labels))
            for attribute, name, documentation, labels in _COUNTERS
        }
        return cls(
            breaker_state=prom.Gauge(
                "snakepit_breaker_state",
                "Last breaker state seen by this process (0 closed, 1 half_open, 2 open).",
                ["breaker"],
                multiprocess_mode="mostrecent",
            ),
            hot_path=prom.Histogram(
                "snakepit_hot_path_seconds",
                "snakepit's own time per task run, by stage (before: from the call to the body).",
                ["stage"],
                buckets=HOT_PATH_BUCKETS,
            ),
            **counters,
        )

    def sync_store_errors(self) -> None:
        """Carry the store module's error counts over to the counters (cheap: two int compares)."""
        from snakepit_celery.store import script_error_count, store_error_count  # noqa: PLC0415

        count = store_error_count()
        if count > self.store_errors_seen:
            self.store_errors.inc(count - self.store_errors_seen)
            self.store_errors_seen = count
        scripts = script_error_count()
        if scripts > self.script_errors_seen:
            self.script_errors.inc(scripts - self.script_errors_seen)
            self.script_errors_seen = scripts


def _classification(reason: Any) -> str:
    text = str(getattr(reason, "value", reason) or "unknown").lower()
    return text if text in CRASH_CLASSIFICATIONS else "unknown"


_BREAKER_STATES: dict[type[SignalPayload], str] = {
    BreakerOpened: "open",
    BreakerHalfOpen: "half_open",
    BreakerClosed: "closed",
}
_RETRY_OUTCOMES: dict[type[SignalPayload], str] = {
    RetryAttempt: "attempt",
    RetrySuccess: "success",
    RetryExhausted: "exhausted",
}

_TAINT_KINDS: dict[type[SignalPayload], str] = {WorkerTainted: "worker", DeviceTainted: "device"}


class PrometheusHook(SignalHook):
    """Counts every signal in the process metrics."""

    def __init__(self, metrics: ProcessMetrics) -> None:
        self.metrics = metrics

    def handle(self, payload: SignalPayload) -> None:
        """Update the metric the payload's type feeds, then the store-error counter."""
        metrics = self.metrics
        match payload:
            case BreakerTransition():
                pool = payload.pool
                name = str(pool if pool is not None else getattr(payload.sender, "name", "unknown"))
                state = _BREAKER_STATES[type(payload)]
                metrics.breaker_state.labels(name).set(BREAKER_STATE_VALUES[state])
                metrics.breaker_transitions.labels(name, state).inc()
            case RetryAttempt() | RetrySuccess() | RetryExhausted():
                metrics.retries.labels(_RETRY_OUTCOMES[type(payload)]).inc()
            case WorkerCrash():
                pool_label = str(payload.pool or "default")
                metrics.crashes.labels(pool_label, _classification(payload.reason)).inc()
            case Tainted():
                kind = _TAINT_KINDS[type(payload)]
                metrics.taints.labels(str(payload.pool or "default"), kind).inc()
            case TaskQuarantined():
                metrics.quarantined.labels(str(payload.reason or "unknown")).inc()
        metrics.sync_store_errors()


_metrics: ProcessMetrics | None = None
_created: ProcessMetrics | None = None
_lock = threading.Lock()


def enable_metrics() -> None:
    """Create the process metrics and connect them to the package's signals (idempotent)."""
    global _metrics, _created
    with _lock:
        if _metrics is not None:
            return
        if _created is None:
            _created = ProcessMetrics.create()
        PrometheusHook(_created).connect(_DISPATCH_UID)
        _metrics = _created


def disable_metrics() -> None:
    """Disconnect the signal hook; ``observe_hot_path`` goes back to a no-op."""
    global _metrics
    with _lock:
        metrics, _metrics = _metrics, None
    if metrics is not None:
        SignalHook.disconnect(_DISPATCH_UID)


def metrics_enabled() -> bool:
    """True after ``enable_metrics()`` (and before ``disable_metrics()``)."""
    return _metrics is not None


def observe_hot_path(stage: str, seconds: float) -> None:
    """Record snakepit's own time spent on a task at ``stage``; no-op while metrics are off."""
    metrics = _metrics
    if metrics is None:
        return
    metrics.hot_path.labels(stage).observe(seconds)
    metrics.sync_store_errors()


def count_event(type_: str, *, lost: bool) -> None:
    """Count one snakepit Celery event, published or ``lost``; no-op while metrics are off."""
    metrics = _metrics
    if metrics is not None:
        (metrics.events_lost if lost else metrics.events).labels(type_).inc()


def sync_store_errors() -> None:
    """Bring the store-error counter up to date (no-op while metrics are off)."""
    metrics = _metrics
    if metrics is not None:
        metrics.sync_store_errors()
