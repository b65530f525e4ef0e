"""``Fleet``: what the commands need from an app — settings, store, breakers and pools."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.app_context import app_group, app_store, settings_for, taint_pools
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.config import SnakepitSettings
from snakepit_celery.fleet import FleetStatus, fleet_status
from snakepit_celery.health import HealthMonitor
from snakepit_celery.store.base import Store

__all__ = ["DEFAULT_POOL", "Fleet"]

#: Pool every fleet has (the default of ``HealthMonitor`` and ``CrashBarrier``).
DEFAULT_POOL = "default"


@runtime_checkable
class _ListsBreakers(Protocol):
    def breaker_names(self) -> list[str]: ...


@runtime_checkable
class _ListsPools(Protocol):
    def pool_names(self) -> list[str]: ...


@dataclass
class Fleet:
    """What the commands need from the app: its settings, its store, and which
    breakers and pools exist.

    Breakers are found in the app's tasks (their ``breaker`` option), in the
    store when it can list them, and in ``--breaker`` options; pools in the
    ``snakepit_health`` setting, the tasks' ``pool`` option, the store and
    ``--pool`` options (``default`` always).
    """

    app: Any
    settings: SnakepitSettings
    store: Store
    extra_breakers: tuple[str, ...] = ()
    extra_pools: tuple[str, ...] = ()
    _tasks_loaded: bool = field(default=False, repr=False)

    @classmethod
    def from_app(
        cls, app: Any, *, breakers: Sequence[str] = (), pools: Sequence[str] = ()
    ) -> Fleet:
        """Read the app's snakepit settings and open its store."""
        return cls(app, settings_for(app), app_store(app), tuple(breakers), tuple(pools))

    def _tasks(self) -> list[SnakepitTask]:
        if not self._tasks_loaded:
            with contextlib.suppress(Exception):
                self.app.loader.import_default_modules()
            self._tasks_loaded = True
        return [t for t in self.app.tasks.values() if isinstance(t, SnakepitTask)]

    def breaker_defaults(self) -> dict[str, Any]:
        """The ``snakepit_breaker`` setting: defaults of breakers no task configures."""
        return dict(self.settings.breaker)

    def breaker(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``: a task's own if one uses it, else one from settings."""
        for found in self._task_breakers():
            if found.name == name:
                return found
        return CircuitBreaker(name, store=self.store, **self.breaker_defaults())

    def _task_breakers(self) -> list[CircuitBreaker]:
        runtimes = [task.snakepit_runtime for task in self._tasks()]
        return [r.breaker for r in runtimes if r.breaker is not None]

    def breakers(self) -> list[CircuitBreaker]:
        """Every known breaker, one per name."""
        by_name = {b.name: b for b in self._task_breakers()}
        names = set(self.extra_breakers)
        if isinstance(self.store, _ListsBreakers):
            names.update(self.store.breaker_names())
        for name in names - by_name.keys():
            by_name[name] = CircuitBreaker(name, store=self.store, **self.breaker_defaults())
        return [by_name[name] for name in sorted(by_name)]

    def pools(self) -> list[str]:
        """Every known pool name."""
        names = {DEFAULT_POOL, *self.extra_pools, *taint_pools(self.app)}
        names.update(task.snakepit_runtime.health.pool for task in self._tasks())
        if isinstance(self.store, _ListsPools):
            names.update(self.store.pool_names())
        return sorted(names)

    def monitors(self) -> list[HealthMonitor]:
        """A ``HealthMonitor`` per pool, with the ``snakepit_health`` limits."""
        limits = dict(self.settings.health)
        limits.pop("pool", None)
        return [HealthMonitor(pool, store=self.store, **limits) for pool in self.pools()]

    def barriers(self) -> list[CrashBarrier]:
        """A ``CrashBarrier`` per pool, with the app's ``snakepit_crash_barrier`` config."""
        config = self.settings.crash_barrier
        return [CrashBarrier(config, pool=pool, store=self.store) for pool in self.pools()]

    def status(self) -> FleetStatus:
        """The whole fleet, read from the store now."""
        return fleet_status(
            self.store,
            group=app_group(self.app),
            breakers=self.breakers(),
            monitors=self.monitors(),
            barriers=self.barriers(),
        )
