"""Crash accounting for a pool of workers, shared by every process on the store.

Each crash is one atomic store operation that also prunes entries older than
the rolling window (on the store's clock) and caps how many are kept, so
memory stays bounded under a crash storm. ``total_crashes`` is a lifetime
counter that pruning never lowers. Recording a crash and reading the stats
cost O(log n) in the crashes kept (counters, not scans).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from snakepit_celery import signals
from snakepit_celery.breaker.stored_config import warn_config_conflict
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.policy.settings import HealthConfig
from snakepit_celery.store import StoreBinding, fail_open, report_store_error
from snakepit_celery.store.base import Store
from snakepit_celery.store.records import HealthSnapshot

__all__ = ["HealthMonitor", "HealthStats", "PoolLimits", "WorkerHealth"]

logger = logging.getLogger(__name__)

#: Fewest crash entries a pool keeps inside its window (the cap is ``max(10*max_crashes, this)``).
MIN_MAX_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class WorkerHealth:
    """Crashes of one worker inside the window; ``healthy`` while below ``max_worker_crashes``."""

    healthy: bool
    crash_count: int
    last_crash_time: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain types; keys equal the field names."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class HealthStats:
    """Crash counts of one pool, as read from the store."""

    pool: str
    total_crashes: int
    crashes_in_window: int
    workers_with_crashes: int
    max_crashes: int
    crash_window: float
    is_healthy: bool
    #: This process's numbers differ from the pool's stored ones (which are the ones used).
    config_conflict: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain types; keys equal the field names."""
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """The numbers a pool is judged by: stored with its state, else this monitor's own."""

    max_crashes: int
    crash_window: float
    max_worker_crashes: int
    conflict: bool = False


_EMPTY = HealthSnapshot(total_crashes=0, crashes_in_window=0)


class HealthMonitor:
    """Rolling-window crash counts of a pool: unhealthy at ``max_crashes`` in ``crash_window``.

    ``check_interval`` is kept for parity with upstream; pruning happens on
    every ``record_crash`` (and reads ignore entries outside the window), so
    no timer is needed.
    """

    def __init__(  # noqa: PLR0917 - positional order is the public API
        self,
        pool: str = "default",
        max_crashes: int = 10,
        crash_window: float = 60.0,
        check_interval: float = 30.0,
        max_worker_crashes: int = 3,
        store: Store | str | None = None,
    ) -> None:
        #: The checked settings of this monitor (``policy.settings.HealthConfig``).
        self.config = HealthConfig(
            pool, max_crashes, crash_window, check_interval, max_worker_crashes
        )
        self.pool: str = self.config.pool
        self.max_crashes: int = self.config.max_crashes
        self.crash_window: float = self.config.crash_window
        self.check_interval: float = self.config.check_interval
        self.max_worker_crashes: int = self.config.max_worker_crashes
        self.max_entries = max(10 * self.max_crashes, MIN_MAX_ENTRIES)
        self._store = StoreBinding(store)

    @property
    def store(self) -> Store:
        """The store holding this pool's crashes (the process default for ``store=None``)."""
        return self._store.get()

    def __repr__(self) -> str:
        names = ("pool", "max_crashes", "crash_window", "check_interval", "max_worker_crashes")
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"HealthMonitor({fields}, store={self._store.describe()!r})"

    def record_crash(self, worker_id: str, reason: Any = None, **info: Any) -> None:
        """Record one crash of ``worker_id`` and send ``worker_crash(pool, worker_id, reason)``.

        A ``task_id`` in ``info`` (the task the crash killed) goes with the signal.
        """
        worker_id = str(worker_id)
        try:
            self.store.health_record(
                self.pool,
                worker_id,
                window=self.crash_window,
                max_entries=self.max_entries,
                reason=None if reason is None else str(reason),
                info=info or None,
                config=self.stored_config(),
            )
        except StoreUnavailableError as exc:
            self._store_failed(exc)
        about = {"task_id": info["task_id"]} if info.get("task_id") else {}
        signals.worker_crash.send(
            sender=self, pool=self.pool, worker_id=worker_id, reason=reason, **about
        )

    def stored_config(self) -> dict[str, Any]:
        """The numbers this monitor stores with its pool's state (the first stored wins)."""
        return {
            "crash_window": self.crash_window,
            "max_crashes": self.max_crashes,
            "max_worker_crashes": self.max_worker_crashes,
        }

    def limits(self, stored: Mapping[str, Any] | None) -> PoolLimits:
        """The numbers the pool is judged by: its ``stored`` ones, else this monitor's.

        Every process judges a pool by the configuration stored with it (the
        first one recorded); a monitor built with other numbers is warned once.
        """
        own = self.stored_config()
        judged = {key: (stored or {}).get(key, value) for key, value in own.items()}
        conflict = judged != own
        if conflict:
            warn_config_conflict("health pool", self.pool, self.store, own, judged)
        return PoolLimits(
            max_crashes=int(judged["max_crashes"]),
            crash_window=float(judged["crash_window"]),
            max_worker_crashes=int(judged["max_worker_crashes"]),
            conflict=conflict,
        )

    def is_healthy(self) -> bool:
        """True while the pool's crashes inside the window stay below ``max_crashes``."""
        snap = self._snapshot()
        return snap.crashes_in_window < self.limits(snap.config).max_crashes

    def worker_health(self, worker_id: str) -> WorkerHealth:
        """Crashes of one worker inside the window (an unknown worker is healthy, 0 crashes)."""
        try:
            crashes = self.store.health_worker(self.pool, str(worker_id), window=self.crash_window)
        except StoreUnavailableError as exc:
            self._store_failed(exc)
            return WorkerHealth(healthy=True, crash_count=0, last_crash_time=None)
        return WorkerHealth(
            healthy=crashes.count < self.limits(crashes.config).max_worker_crashes,
            crash_count=crashes.count,
            last_crash_time=crashes.last_time,
        )

    def stats(self) -> HealthStats:
        """The pool's lifetime and windowed crash counts."""
        snap = self._snapshot()
        limits = self.limits(snap.config)
        return HealthStats(
            pool=self.pool,
            total_crashes=snap.total_crashes,
            crashes_in_window=snap.crashes_in_window,
            workers_with_crashes=snap.workers_with_crashes,
            max_crashes=limits.max_crashes,
            crash_window=limits.crash_window,
            is_healthy=snap.crashes_in_window < limits.max_crashes,
            config_conflict=limits.conflict,
        )

    def _snapshot(self) -> HealthSnapshot:
        try:
            return self.store.health_stats(self.pool, window=self.crash_window)
        except StoreUnavailableError as exc:
            self._store_failed(exc)
            return _EMPTY

    def _store_failed(self, exc: StoreUnavailableError) -> None:
        if not fail_open():
            raise exc
        report_store_error(exc)
