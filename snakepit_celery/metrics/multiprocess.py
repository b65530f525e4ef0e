"""``install_metrics(app)``: what a worker calls when ``snakepit_metrics_port`` is set.

Serving turns on prometheus-client's multiprocess mode first (a fresh
``PROMETHEUS_MULTIPROC_DIR`` unless one is set), so the counts of every
prefork child are summed by the server in the worker's main process. That
works even when prometheus-client was imported before (Flower's ``celery``
command plugin imports it before any app code runs): the value class of the
metrics made from then on is switched to the multiprocess one.

One host, several nodes (``snakepit worker --per-device``): the launcher
gives every node one shared directory, the first node to bind the port
serves the sum of all of them, the others serve nothing and say so in their
log.
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

__all__ = ["MULTIPROC_ENV", "configured_port", "ensure_multiprocess_dir", "install_metrics"]

logger = logging.getLogger(__name__)

#: The environment variable prometheus-client reads its multiprocess directory from.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def configured_port(app: Any) -> int | None:
    """``snakepit_metrics_port`` of ``app`` (app.conf or env), None when unset."""
    from snakepit_celery.config import load_settings  # noqa: PLC0415

    port = load_settings(app.conf).metrics_port
    return None if port is None else int(port)


def install_metrics(app: Any, port: int | None = None) -> MetricsServer | None:
    """Enable metrics in a worker and serve them when ``snakepit_metrics_port`` is set.

    ``port`` overrides the setting. Call it in the worker's main process
    before the pool forks (``bootsteps.metrics`` does): when serving, it
    turns on prometheus-client's multiprocess mode so the counts of every
    prefork child are summed. Returns the server, or None when no port is
    configured or the port is taken (logged; the worker keeps running
    without its endpoint, e.g. a second ``--per-device`` node of a host,
    whose samples the first one serves from the shared directory).
    """
    port = port if port is not None else configured_port(app)
    if port is not None:
        ensure_multiprocess_dir()
    enable_metrics()
    if port is None:
        return None
    try:
        return start_metrics_server(port)
    except OSError as exc:
        logger.info(
            "snakepit metrics port %s taken (%s): another node of this host serves it",
            port,
            exc,
            extra={"port": port},
        )
        return None


def ensure_multiprocess_dir() -> str:
    """Give prefork children a shared sample directory; returns it.

    Uses ``PROMETHEUS_MULTIPROC_DIR`` when set, else makes one (removed when
    this process exits). When prometheus-client is already imported, its
    value class is switched so metrics made from now on write there too.
    """
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        path = tempfile.mkdtemp(prefix="snakepit-metrics-")
        os.environ[MULTIPROC_ENV] = path
        owner = os.getpid()

        def remove() -> None:
            if os.getpid() == owner:
                shutil.rmtree(path, ignore_errors=True)

        atexit.register(remove)
    if "prometheus_client" in sys.modules:
        from prometheus_client import values  # noqa: PLC0415

        if values.ValueClass is values.MutexValue:
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path
