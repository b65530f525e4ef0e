"""The metrics bootstep: a worker with ``snakepit_metrics_port`` serves ``/metrics`` by itself.

Runs while the worker is built, in its main process, before the pool forks:
multiprocess mode must be on before the first child exists so that every
child's counts (a retry in a prefork child) are summed in the scrape.
Without the setting it does nothing (prometheus-client stays optional).
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from snakepit_celery.metrics.multiprocess import configured_port, install_metrics
from snakepit_celery.metrics.server import MetricsServer

__all__ = ["SnakepitMetricsStep"]


class SnakepitMetricsStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker bootstep: serve Prometheus metrics on ``snakepit_metrics_port`` (if set)."""

    name = "snakepit.metrics"
    label = "snakepit metrics"

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        self.server: MetricsServer | None = None
        if configured_port(w.app) is not None:
            self.server = install_metrics(w.app)

    def stop(self, w: Any) -> None:
        """Release the port when the worker stops."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
