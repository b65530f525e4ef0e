"""The GPU-aware Celery router: fetches the fleet and applies ``decide_route``.

``install_router(app)`` puts a ``SnakepitRouter`` first in
``app.conf.task_routes``. The router reads the fleet (node registry + active
taints, ``fleet_snapshot``) from the app's store at most once per
``snapshot_ttl`` seconds per process; the decision itself is the pure
``policy.routing.decide_route``.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from snakepit_celery.celery.app_context import allow_waiting, app_group, app_store, taint_pools
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.policy.routing import (
    FleetSnapshot,
    NodeRecord,
    Pref,
    RouteDecision,
    decide_route,
    generic_queue,
    parse_prefs,
)
from snakepit_celery.store import fail_open, report_store_error
from snakepit_celery.store.base import DEFAULT_GROUP, Store

__all__ = ["SnakepitRouter", "fleet_snapshot", "install_router"]

logger = logging.getLogger(__name__)


@dataclass
class _Cache:
    snapshot: FleetSnapshot | None = None
    fetched_at: float = float("-inf")
    lock: threading.Lock = field(default_factory=threading.Lock)


class SnakepitRouter:
    """A Celery ``task_routes`` callable routing tasks by their ``device`` preference.

    Tasks without a preference get ``None`` (the user's routes and the default
    queue apply). The fleet snapshot is read from the store at most once per
    ``snapshot_ttl`` seconds per process. When the store is unreachable and
    fail-open is on, a task goes to the generic queue of its first preference.
    """

    def __init__(
        self,
        fetch_snapshot: Callable[[], FleetSnapshot],
        *,
        allow_waiting: bool | Callable[[], bool] = False,
        snapshot_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch_snapshot = fetch_snapshot
        self.allow_waiting = allow_waiting
        self.snapshot_ttl = snapshot_ttl
        self._clock = clock
        self._cache = _Cache()
        self._picks = itertools.count()
        self._prefs: dict[str, tuple[Any, tuple[Pref, ...]]] = {}

    def snapshot(self) -> FleetSnapshot:
        """The fleet as last read from the store (re-read when older than ``snapshot_ttl``)."""
        cache = self._cache
        now = self._clock()
        if cache.snapshot is not None and now - cache.fetched_at < self.snapshot_ttl:
            return cache.snapshot
        with cache.lock:
            if cache.snapshot is None or self._clock() - cache.fetched_at >= self.snapshot_ttl:
                cache.snapshot = self.fetch_snapshot()
                cache.fetched_at = self._clock()
            return cache.snapshot

    def invalidate(self) -> None:
        """Forget the cached snapshot (the next route reads the store)."""
        self._cache.fetched_at = float("-inf")

    def prefs_of(self, task: Any, options: Mapping[str, Any] | None) -> tuple[Pref, ...]:
        """The parsed preferences of a send: ``options["device"]`` else ``task.device``."""
        device = (options or {}).get("device")
        if device is not None:
            return parse_prefs(device)
        device = getattr(task, "device", None)
        if device is None:
            return ()
        name = str(getattr(task, "name", ""))
        cached = self._prefs.get(name)
        if cached is not None and cached[0] is device:
            return cached[1]
        prefs = parse_prefs(device)
        self._prefs[name] = (device, prefs)
        return prefs

    def _waiting_allowed(self) -> bool:
        value = self.allow_waiting
        return bool(value() if callable(value) else value)

    def route(self, name: str, prefs: Sequence[Pref]) -> RouteDecision:
        """Decide the queue for task ``name`` with ``prefs`` (reads the cached snapshot)."""
        try:
            snapshot = self.snapshot()
        except StoreUnavailableError as exc:
            if not fail_open():
                raise
            report_store_error(exc, task=name)
            return RouteDecision(generic_queue(prefs[0]), str(prefs[0]), waiting=True)
        decision = decide_route(
            prefs,
            snapshot,
            task_name=name,
            allow_waiting=self._waiting_allowed(),
            pick=next(self._picks),
        )
        if decision.waiting:
            logger.warning(
                "no live node offers %s for task %s; queued on %s to wait for capacity",
                decision.pref,
                name,
                decision.queue,
                extra={"task_name": name, "queue": decision.queue},
            )
        return decision

    def __call__(
        self,
        name: str,
        args: Any = None,
        kwargs: Any = None,
        options: Mapping[str, Any] | None = None,
        task: Any = None,
        **kw: Any,
    ) -> dict[str, Any] | None:
        """Celery router protocol: ``{"queue": ...}`` for device tasks, else None.

        A send that names its queue (``apply_async(queue=...)``) is left alone.
        """
        if options and options.get("queue"):
            return None
        prefs = self.prefs_of(task, options)
        if not prefs:
            return None
        return {"queue": self.route(name, prefs).queue}


def fleet_snapshot(
    store: Store, pools: Sequence[str] = ("default",), group: str = DEFAULT_GROUP
) -> FleetSnapshot:
    """Read the live nodes of ``group`` (an app's, ``app_group``) and the active taints
    of ``pools`` (1 + len(pools) store calls)."""
    nodes = tuple(NodeRecord.from_dict(record) for record in store.node_list(group=group))
    taints = frozenset(record.member for pool in pools for record in store.taint_list(pool))
    return FleetSnapshot(nodes, taints)


def install_router(app: Celery, router: SnakepitRouter | None = None) -> SnakepitRouter:
    """Put the device router first in ``app.conf.task_routes``, keeping the user's routes.

    Idempotent: a second call replaces the router installed by the first.
    Returns the router (tests may call ``invalidate()`` on it).
    """
    if router is None:
        router = SnakepitRouter(
            lambda: fleet_snapshot(app_store(app), taint_pools(app), app_group(app)),
            allow_waiting=lambda: allow_waiting(app),
        )
    existing = app.conf.task_routes
    if existing is None:
        user_routes: list[Any] = []
    elif isinstance(existing, list | tuple):
        user_routes = [route for route in existing if not isinstance(route, SnakepitRouter)]
    else:
        user_routes = [existing]
    app.conf.task_routes = [router, *user_routes]
    return router
