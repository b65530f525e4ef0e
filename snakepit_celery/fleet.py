"""A read-only picture of the whole fleet, taken from the shared store.

``fleet_status()`` gathers what ``celery snakepit status`` prints and what the
fleet metrics export: live nodes (``NodeRecord``: identity, devices, queues, heartbeat age),
breakers (state and counts), crash health per pool and active taints with
the time they have left. It only reads; every figure comes from the objects
that own it (``CircuitBreaker.stats()``, ``HealthMonitor.stats()``, the
store's taint list), so this module holds no logic of its own about them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import BreakerState, BreakerStats, CircuitBreaker
from snakepit_celery.health import HealthMonitor, HealthStats
from snakepit_celery.policy.snapshot import NodeRecord
from snakepit_celery.policy.taints import Taint, TaintKind
from snakepit_celery.store.base import DEFAULT_GROUP, Store

__all__ = ["BreakerStatus", "FleetStatus", "TaintStatus", "fleet_status"]


@dataclass(frozen=True, slots=True)
class BreakerStatus:
    """A named breaker's ``BreakerStats``."""

    name: str
    stats: BreakerStats

    @property
    def state(self) -> BreakerState:
        """The breaker's state as read from the store."""
        return self.stats.state

    @property
    def failure_count(self) -> int:
        """Consecutive failures recorded."""
        return self.stats.failure_count

    def as_dict(self) -> dict[str, Any]:
        """``{"name": ..., **stats.as_dict()}``."""
        return {"name": self.name, **self.stats.as_dict()}


@dataclass(frozen=True, slots=True)
class TaintStatus:
    """One active taint (``CrashBarrier.taints()``) and the pool it belongs to."""

    pool: str
    taint: Taint

    @property
    def kind(self) -> str:
        """``worker`` or ``device``."""
        return str(self.taint.kind)

    @property
    def target(self) -> str:
        """The worker id, or ``<node>:<device>``."""
        if self.taint.kind == TaintKind.WORKER:
            return str(self.taint.worker_id)
        return f"{self.taint.node}:{self.taint.device}"

    @property
    def remaining(self) -> float:
        """Seconds the taint has left."""
        return self.taint.remaining

    def as_dict(self) -> dict[str, Any]:
        """``{"pool": ..., **taint.as_dict()}``."""
        return {"pool": self.pool, **self.taint.as_dict()}


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """Nodes, breakers, pool health and taints at one moment.

    ``healthy`` is False when a pool has too many crashes in its window or a
    breaker is open: what ``celery snakepit status`` turns into exit code 1.
    """

    nodes: tuple[NodeRecord, ...] = ()
    breakers: tuple[BreakerStatus, ...] = ()
    health: tuple[HealthStats, ...] = ()
    taints: tuple[TaintStatus, ...] = ()

    @property
    def unhealthy_pools(self) -> list[str]:
        """Pools at or above their crash limit."""
        return [pool.pool for pool in self.health if not pool.is_healthy]

    @property
    def open_breakers(self) -> list[str]:
        """Breakers refusing calls right now."""
        return [b.name for b in self.breakers if b.state == BreakerState.OPEN]

    @property
    def healthy(self) -> bool:
        """No unhealthy pool and no open breaker."""
        return not self.unhealthy_pools and not self.open_breakers

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain types."""
        return {
            "healthy": self.healthy,
            "nodes": [n.as_dict() for n in self.nodes],
            "breakers": [b.as_dict() for b in self.breakers],
            "health": [h.as_dict() for h in self.health],
            "taints": [t.as_dict() for t in self.taints],
        }


def read_nodes(store: Store, group: str = DEFAULT_GROUP) -> tuple[NodeRecord, ...]:
    """Live nodes of the registry's ``group`` (an app's fleet), by name."""
    return tuple(NodeRecord.from_dict(r) for r in store.node_list(group=group))


def read_breakers(breakers: Iterable[CircuitBreaker]) -> tuple[BreakerStatus, ...]:
    """Stats of each breaker (one store read each), sorted by name."""
    return tuple(BreakerStatus(b.name, b.stats()) for b in sorted(breakers, key=lambda b: b.name))


def read_taints(barriers: Iterable[CrashBarrier]) -> tuple[TaintStatus, ...]:
    """Active taints of each barrier's pool, soonest to expire first."""
    taints = [TaintStatus(b.pool, taint) for b in barriers for taint in b.taints()]
    return tuple(sorted(taints, key=lambda t: (t.remaining, t.pool, t.kind, t.target)))


def fleet_status(
    store: Store,
    *,
    group: str = DEFAULT_GROUP,
    breakers: Iterable[CircuitBreaker] = (),
    monitors: Iterable[HealthMonitor] = (),
    barriers: Iterable[CrashBarrier] = (),
) -> FleetStatus:
    """Read the fleet from ``store``: the nodes of ``group``, and the given breakers,
    monitors and barriers."""
    return FleetStatus(
        nodes=read_nodes(store, group),
        breakers=read_breakers(breakers),
        health=tuple(m.stats() for m in sorted(monitors, key=lambda m: m.pool)),
        taints=read_taints(barriers),
    )
