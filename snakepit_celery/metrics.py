"""Prometheus metrics for snakepit_celery (the ``metrics`` extra: prometheus-client).

Two sources, after stamina's instrumentation hooks:

- **Process metrics**, fed by receivers connected to ``snakepit_celery.signals``
  (``enable_metrics()``): breaker transitions and last state seen, retries,
  crashes by classification, taints, store errors, and the hot-path latency
  histogram (``observe_hot_path()``, a no-op until metrics are enabled).
  Under Celery's prefork pool set ``PROMETHEUS_MULTIPROC_DIR`` so the
  children's samples are summed by the server in the parent.
- **Fleet metrics** (``FleetCollector``), read from the shared store at
  scrape time: breaker states and failures, active taints, crashes in the
  window, live nodes. ``celery snakepit metrics`` serves both.

``start_metrics_server(port)`` serves a registry over HTTP;
``install_metrics(app)`` is what the worker calls when ``snakepit_metrics_port``
is set.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from snakepit_celery import signals
from snakepit_celery.errors import SnakepitError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

    from snakepit_celery.fleet import FleetStatus

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
]

logger = logging.getLogger(__name__)

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

_INSTALL_HINT = (
    "snakepit_celery metrics need prometheus-client: pip install 'snakepit-celery[metrics]'"
)


def _prometheus() -> Any:
    """Import prometheus_client, or raise SnakepitError saying how to install it."""
    try:
        import prometheus_client  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SnakepitError(_INSTALL_HINT) from exc
    return prometheus_client


@dataclass
class _ProcessMetrics:
    """The metric objects of this process (created once, on the default registry)."""

    breaker_state: Any
    breaker_transitions: Any
    retries: Any
    crashes: Any
    taints: Any
    store_errors: Any
    hot_path: Any
    store_errors_seen: int = 0
    receivers: list[tuple[Any, Callable[..., None]]] = field(default_factory=list)


_metrics: _ProcessMetrics | None = None
_created: _ProcessMetrics | None = None
_lock = threading.Lock()


def _create() -> _ProcessMetrics:
    """Create the process metrics once (re-enabling reuses them)."""
    global _created
    if _created is None:
        prom = _prometheus()
        _created = _ProcessMetrics(
            breaker_state=prom.Gauge(
                "snakepit_breaker_state",
                "Last breaker state seen by this process (0 closed, 1 half_open, 2 open).",
                ["breaker"],
                multiprocess_mode="mostrecent",
            ),
            breaker_transitions=prom.Counter(
                "snakepit_breaker_transitions",
                "Breaker transitions made by this process, by the state entered.",
                ["breaker", "state"],
            ),
            retries=prom.Counter(
                "snakepit_retries",
                "Retry events: attempt (a retry scheduled), success, exhausted.",
                ["outcome"],
            ),
            crashes=prom.Counter(
                "snakepit_crashes",
                "Worker crashes recorded, by pool and classification.",
                ["pool", "classification"],
            ),
            taints=prom.Counter(
                "snakepit_taints",
                "Taints set, by pool and kind (worker or device).",
                ["pool", "kind"],
            ),
            store_errors=prom.Counter(
                "snakepit_store_errors",
                "Shared-store failures tolerated under fail-open.",
            ),
            hot_path=prom.Histogram(
                "snakepit_hot_path_seconds",
                "snakepit's own time per task, by stage (before, after).",
                ["stage"],
                buckets=HOT_PATH_BUCKETS,
            ),
        )
    return _created


def _classification(reason: Any) -> str:
    text = str(getattr(reason, "value", reason) or "unknown").lower()
    return text if text in CRASH_CLASSIFICATIONS else "unknown"


def _sync_store_errors(metrics: _ProcessMetrics) -> None:
    """Carry the store module's error count over to the counter (cheap: one int compare)."""
    from snakepit_celery.store import store_error_count  # noqa: PLC0415

    count = store_error_count()
    if count > metrics.store_errors_seen:
        metrics.store_errors.inc(count - metrics.store_errors_seen)
        metrics.store_errors_seen = count


def _receivers(metrics: _ProcessMetrics) -> list[tuple[Any, Callable[..., None]]]:
    """One receiver per signal; each only touches in-process metric objects."""

    def transition(state: str) -> Callable[..., None]:
        def receiver(sender: Any = None, pool: Any = None, **_: Any) -> None:
            name = str(pool if pool is not None else getattr(sender, "name", "unknown"))
            metrics.breaker_state.labels(name).set(BREAKER_STATE_VALUES[state])
            metrics.breaker_transitions.labels(name, state).inc()
            _sync_store_errors(metrics)

        return receiver

    def retry(outcome: str) -> Callable[..., None]:
        def receiver(sender: Any = None, **_: Any) -> None:
            metrics.retries.labels(outcome).inc()
            _sync_store_errors(metrics)

        return receiver

    def crash(sender: Any = None, pool: Any = None, reason: Any = None, **_: Any) -> None:
        metrics.crashes.labels(str(pool or "default"), _classification(reason)).inc()
        _sync_store_errors(metrics)

    def taint(kind: str) -> Callable[..., None]:
        def receiver(sender: Any = None, pool: Any = None, **_: Any) -> None:
            metrics.taints.labels(str(pool or "default"), kind).inc()
            _sync_store_errors(metrics)

        return receiver

    return [
        (signals.breaker_opened, transition("open")),
        (signals.breaker_half_open, transition("half_open")),
        (signals.breaker_closed, transition("closed")),
        (signals.retry_attempt, retry("attempt")),
        (signals.retry_success, retry("success")),
        (signals.retry_exhausted, retry("exhausted")),
        (signals.worker_crash, crash),
        (signals.worker_tainted, taint("worker")),
        (signals.device_tainted, taint("device")),
    ]


def enable_metrics() -> None:
    """Create the process metrics and connect them to the package's signals (idempotent)."""
    global _metrics
    with _lock:
        if _metrics is not None:
            return
        metrics = _create()
        metrics.receivers = _receivers(metrics)
        for signal, receiver in metrics.receivers:
            signal.connect(receiver, weak=False)
        _metrics = metrics


def disable_metrics() -> None:
    """Disconnect the signal receivers; ``observe_hot_path`` goes back to a no-op."""
    global _metrics
    with _lock:
        metrics, _metrics = _metrics, None
    if metrics is not None:
        for signal, receiver in metrics.receivers:
            signal.disconnect(receiver)
        metrics.receivers = []


def metrics_enabled() -> bool:
    """True after ``enable_metrics()`` (and before ``disable_metrics()``)."""
    return _metrics is not None


def observe_hot_path(stage: str, seconds: float) -> None:
    """Record snakepit's own time spent on a task at ``stage``; no-op while metrics are off."""
    metrics = _metrics
    if metrics is None:
        return
    metrics.hot_path.labels(stage).observe(seconds)
    _sync_store_errors(metrics)


class FleetCollector:
    """Prometheus collector of fleet-wide state, read from the store at each scrape.

    ``status`` returns a ``FleetStatus`` (``snakepit_celery.fleet``); the CLI
    builds it from the app's settings. A store error during a scrape yields
    ``snakepit_fleet_up 0`` instead of failing the whole scrape.
    """

    def __init__(self, status: Callable[[], FleetStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        """Yield the fleet gauges (called by the registry on every scrape)."""
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        up = GaugeMetricFamily("snakepit_fleet_up", "1 when the shared store answered.")
        try:
            fleet = self._status()
        except SnakepitError as exc:
            logger.warning("fleet metrics unavailable: %s", exc, extra={"error": str(exc)})
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up

        state = GaugeMetricFamily(
            "snakepit_fleet_breaker_state",
            "Breaker state in the shared store (1 for the current state).",
            labels=["breaker", "state"],
        )
        failures = GaugeMetricFamily(
            "snakepit_fleet_breaker_failures",
            "Consecutive failures recorded by a breaker.",
            labels=["breaker"],
        )
        for breaker in fleet.breakers:
            for name in BREAKER_STATE_VALUES:
                state.add_metric([breaker.name, name], 1.0 if breaker.state == name else 0.0)
            failures.add_metric([breaker.name], float(breaker.failure_count))
        yield state
        yield failures

        healthy = GaugeMetricFamily(
            "snakepit_fleet_pool_healthy", "1 while a pool is healthy.", labels=["pool"]
        )
        in_window = GaugeMetricFamily(
            "snakepit_fleet_crashes_in_window",
            "Crashes of a pool inside its rolling window.",
            labels=["pool"],
        )
        for pool in fleet.health:
            healthy.add_metric([pool.pool], 1.0 if pool.is_healthy else 0.0)
            in_window.add_metric([pool.pool], float(pool.crashes_in_window))
        yield healthy
        yield in_window

        taints = GaugeMetricFamily(
            "snakepit_fleet_taints", "Active taints, by pool and kind.", labels=["pool", "kind"]
        )
        counts: dict[tuple[str, str], int] = {}
        for taint in fleet.taints:
            key = (taint.pool, taint.kind)
            counts[key] = counts.get(key, 0) + 1
        for (pool_name, kind), count in sorted(counts.items()):
            taints.add_metric([pool_name, kind], float(count))
        yield taints

        nodes = GaugeMetricFamily("snakepit_fleet_nodes", "Nodes with a live heartbeat.")
        nodes.add_metric([], float(len(fleet.nodes)))
        yield nodes
        age = GaugeMetricFamily(
            "snakepit_fleet_node_heartbeat_age_seconds",
            "Seconds since a node's last heartbeat.",
            labels=["node"],
        )
        for node in fleet.nodes:
            age.add_metric([node.node], float(node.heartbeat_age))
        yield age


class _StoreErrorSync:
    """Collector that yields nothing: it brings the store-error counter up to date per scrape."""

    def collect(self) -> Iterable[Metric]:
        """Sync, then yield no metric."""
        metrics = _metrics
        if metrics is not None:
            _sync_store_errors(metrics)
        return []


class _DefaultRegistry:
    """Collector that re-exposes the process's default registry inside another registry."""

    def collect(self) -> Iterable[Metric]:
        """Metrics of ``prometheus_client.REGISTRY``."""
        return list(_prometheus().REGISTRY.collect())


def build_registry(fleet: FleetCollector | None = None) -> CollectorRegistry:
    """A registry with this process's metrics (all prefork children's under
    ``PROMETHEUS_MULTIPROC_DIR``) and, if given, the fleet collector."""
    prom = _prometheus()
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
    text: bytes = _prometheus().generate_latest(registry)
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
    server, thread = _prometheus().start_http_server(port, address, registry)
    bound = int(server.server_port)
    logger.info("snakepit metrics on %s:%d", address, bound, extra={"port": bound})
    return MetricsServer(bound, address, registry, server, thread)


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
        _ensure_multiprocess_dir()
    enable_metrics()
    if port is None:
        return None
    try:
        return start_metrics_server(port)
    except OSError as exc:
        logger.warning("snakepit metrics port %s unavailable: %s", port, exc, extra={"port": port})
        return None


def _ensure_multiprocess_dir() -> None:
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


def wait_forever(server: MetricsServer, poll: float = 1.0) -> None:
    """Block until interrupted (Ctrl-C / SIGTERM as KeyboardInterrupt), then close ``server``."""
    try:
        while server._thread.is_alive():
            time.sleep(poll)
    finally:
        server.close()
