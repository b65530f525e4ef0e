"""Prometheus metrics for snakepit_celery (the ``metrics`` extra: prometheus-client).

Two sources, after stamina's instrumentation hooks:

- **Process metrics** (``hooks``), fed by a hook on ``snakepit_celery.signals``
  (``enable_metrics()``): breaker transitions and last state seen, retries,
  crashes by classification, taints, store and script errors, events sent and
  lost (``count_event()``), and the hot-path latency histogram
  (``observe_hot_path()``); both no-ops until metrics are enabled. A serving
  worker turns on prometheus-client's multiprocess mode so the prefork
  children's samples are summed by the server in the parent (``multiprocess``).
- **Fleet metrics** (``collector.FleetCollector``), read from the shared store at
  scrape time: breaker states and failures, active taints, crashes in the
  window, live nodes. ``celery snakepit metrics`` serves both.

``start_metrics_server(port)`` serves a registry over HTTP (``server``);
``install_metrics(app)`` is what the worker's metrics bootstep
(``celery.bootsteps.metrics``) calls when ``snakepit_metrics_port`` is set.
"""

from __future__ import annotations

from snakepit_celery.metrics.collector import FleetCollector
from snakepit_celery.metrics.hooks import (
    BREAKER_STATE_VALUES,
    CRASH_CLASSIFICATIONS,
    count_event,
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
    "count_event",
    "disable_metrics",
    "enable_metrics",
    "exposition",
    "install_metrics",
    "metrics_enabled",
    "observe_hot_path",
    "start_metrics_server",
    "wait_forever",
]
