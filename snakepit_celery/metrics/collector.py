"""``FleetCollector``: fleet-wide gauges read from the shared store at scrape time.

Breaker states and failures, pool health and crashes in the window, active
taints, live nodes and their heartbeat age.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from snakepit_celery.errors import SnakepitError
from snakepit_celery.metrics.hooks import BREAKER_STATE_VALUES

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from snakepit_celery.fleet import FleetStatus

__all__ = ["FleetCollector"]

logger = logging.getLogger(__name__)


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
        yield from _breaker_gauges(fleet)
        yield from _health_gauges(fleet)
        yield _taint_gauge(fleet)
        yield from _node_gauges(fleet)


def _breaker_gauges(fleet: FleetStatus) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

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


def _health_gauges(fleet: FleetStatus) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

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


def _taint_gauge(fleet: FleetStatus) -> Metric:
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

    taints = GaugeMetricFamily(
        "snakepit_fleet_taints", "Active taints, by pool and kind.", labels=["pool", "kind"]
    )
    counts: dict[tuple[str, str], int] = {}
    for taint in fleet.taints:
        key = (taint.pool, taint.kind)
        counts[key] = counts.get(key, 0) + 1
    for (pool_name, kind), count in sorted(counts.items()):
        taints.add_metric([pool_name, kind], float(count))
    return taints


def _node_gauges(fleet: FleetStatus) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

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
