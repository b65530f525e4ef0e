"""Prometheus metrics for snakepit_celery (the ``metrics`` extra: prometheus-client).

Two sources, after stamina's instrumentation hooks:

- **Process metrics** (``hooks``), fed by a hook on ``snakepit_celery.signals``
  (``enable_metrics()``): breaker transitions and last state seen, retries,
  crashes by classification, taints, store errors, and the hot-path latency
  histogram (``observe_hot_path()``, a no-op until metrics are enabled).
  Under Celery's prefork pool set ``PROMETHEUS_MULTIPROC_DIR`` so the
  children's samples are summed by the server in the parent (``multiprocess``).
- **Fleet metrics** (``collector.FleetCollector``), read from the shared store at
  scrape time: breaker states and failures, active taints, crashes in the
  window, live nodes. ``celery snakepit metrics`` serves both.

``start_metrics_server(port)`` serves a registry over HTTP (``server``);
``install_metrics(app)`` is what the worker calls when ``snakepit_metrics_port``
is set.
"""

from __future__ import annotations

from snakepit_celery.metrics.collector import FleetCollector
from snakepit_celery.metrics.hooks import (
    BREAKER_STATE_VALUES,
    CRASH_CLASSIFICATIONS,
    disable_metrics,
    enable_metrics,
    metrics_enabled,
    observe_hot_path,
)
from snakepit_celery.metrics.multiprocess import install_metrics
from snakepit_celery.metrics.server import (
    MetricsServer,
    build_registry,
    exposition,
    start_metrics_server,
    wait_forever,
)

__all__ = [
    "BREAKER_STATE_VALUES",
    "CRASH_CLASSIFICATIONS",
    "FleetCollector",
    "MetricsServer",
    "build_registry",
    "disable_metrics",
    "enable_metrics",
    "exposition",
    "install_metrics",
    "metrics_enabled",
    "observe_hot_path",
    "start_metrics_server",
    "wait_forever",
]
