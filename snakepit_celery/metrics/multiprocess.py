"""``install_metrics(app)``: what a worker calls when ``snakepit_metrics_port`` is set.

Serving turns on prometheus-client's multiprocess mode first (a fresh
``PROMETHEUS_MULTIPROC_DIR`` unless one is set), so the counts of every
prefork child are summed by the server in the worker's main process.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from typing import Any

from snakepit_celery.metrics.hooks import enable_metrics
from snakepit_celery.metrics.server import MetricsServer, start_metrics_server

__all__ = ["ensure_multiprocess_dir", "install_metrics"]

logger = logging.getLogger(__name__)


def _configured_port(app: Any) -> int | None:
    from snakepit_celery.config import load_settings  # noqa: PLC0415

    port = load_settings(app.conf).metrics_port
    return None if port is None else int(port)


def install_metrics(app: Any, port: int | None = None) -> MetricsServer | None:
    """Enable metrics in a worker and serve them when ``snakepit_metrics_port`` is set.

    ``port`` overrides the setting. Call it in the worker's main process
    before the pool forks: when serving, it turns on prometheus-client's
    multiprocess mode (a fresh ``PROMETHEUS_MULTIPROC_DIR`` unless one is set)
    so the counts of every prefork child are summed. Returns the server, or
    None when no port is configured or the port is taken (logged; the worker
    keeps running without its endpoint, e.g. the second ``--per-device`` node
    of a host, whose samples the first one serves when they share the directory).
    """
    port = port if port is not None else _configured_port(app)
    if port is not None:
        ensure_multiprocess_dir()
    enable_metrics()
    if port is None:
        return None
    try:
        return start_metrics_server(port)
    except OSError as exc:
        logger.warning("snakepit metrics port %s unavailable: %s", port, exc, extra={"port": port})
        return None


def ensure_multiprocess_dir() -> None:
    """Give prefork children a shared sample directory, if prometheus-client allows it still."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    if "prometheus_client" in sys.modules:
        logger.warning(
            "prometheus_client was imported before install_metrics(): set "
            "PROMETHEUS_MULTIPROC_DIR to serve the metrics of prefork children too"
        )
        return
    path = tempfile.mkdtemp(prefix="snakepit-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() == owner:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove)
