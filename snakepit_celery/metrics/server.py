"""The metrics registry and its HTTP server.

``build_registry()`` gathers this process's metrics (every prefork child's
under ``PROMETHEUS_MULTIPROC_DIR``) and, if given, a ``FleetCollector``;
``start_metrics_server()`` serves a registry in a thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from snakepit_celery.metrics.client import prometheus
from snakepit_celery.metrics.collector import FleetCollector
from snakepit_celery.metrics.hooks import enable_metrics, sync_store_errors

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "MetricsServer",
    "build_registry",
    "exposition",
    "start_metrics_server",
    "wait_forever",
]

logger = logging.getLogger(__name__)


class _StoreErrorSync:
    """Collector that yields nothing: it brings the store-error counter up to date per scrape."""

    def collect(self) -> Iterable[Metric]:
        """Sync, then yield no metric."""
        sync_store_errors()
        return []


class _DefaultRegistry:
    """Collector that re-exposes the process's default registry inside another registry."""

    def collect(self) -> Iterable[Metric]:
        """Metrics of ``prometheus_client.REGISTRY``."""
        return list(prometheus().REGISTRY.collect())


def build_registry(fleet: FleetCollector | None = None) -> CollectorRegistry:
    """A registry with this process's metrics (all prefork children's under
    ``PROMETHEUS_MULTIPROC_DIR``) and, if given, the fleet collector."""
    prom = prometheus()
    registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=False)
    registry.register(_StoreErrorSync())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess  # noqa: PLC0415

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_DefaultRegistry())
    if fleet is not None:
        registry.register(fleet)
    return registry


def exposition(registry: CollectorRegistry) -> str:
    """The Prometheus text exposition of ``registry`` (what a scrape returns)."""
    text: bytes = prometheus().generate_latest(registry)
    return text.decode("utf-8")


@dataclass
class MetricsServer:
    """A running metrics HTTP server; ``port`` is the bound port (useful with port 0)."""

    port: int
    address: str
    registry: CollectorRegistry
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)


def start_metrics_server(
    port: int, address: str = "0.0.0.0", *, registry: CollectorRegistry | None = None
) -> MetricsServer:
    """Serve ``registry`` (default: ``build_registry()``) on ``address:port`` in a thread.

    Metrics are enabled first so signals are counted from now on. Port 0
    picks a free port (see ``MetricsServer.port``).
    """
    enable_metrics()
    registry = registry if registry is not None else build_registry()
    server, thread = prometheus().start_http_server(port, address, registry)
    bound = int(server.server_port)
    logger.info("snakepit metrics on %s:%d", address, bound, extra={"port": bound})
    return MetricsServer(bound, address, registry, server, thread)


def wait_forever(server: MetricsServer, poll: float = 1.0) -> None:
    """Block until interrupted (Ctrl-C / SIGTERM as KeyboardInterrupt), then close ``server``."""
    try:
        while server._thread.is_alive():
            time.sleep(poll)
    finally:
        server.close()
