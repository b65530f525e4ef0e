"""The GPU-aware Celery router: fetches the fleet and applies ``decide_route``.

``install_router(app)`` puts a ``SnakepitRouter`` first in
``app.conf.task_routes``. The router reads the fleet (node registry + active
taints, ``fleet_snapshot``) from the app's store at most once per
``snapshot_ttl`` seconds per process; the decision itself is the pure
``policy.routing.decide_route`` (``policy.placement.place_by_memory`` for a
task that needs ``gpu_memory`` MB, whose room the router then reserves in
the store for ``GPU_RESERVATION_TTL`` seconds: one store call per such send).
A task's retry after CUDA/HIP out of memory goes to another GPU with more
room than the one it failed on (``celery.oom_retry``).
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from snakepit_celery.celery.app_context import (
    allow_waiting,
    app_group,
    app_store,
    namespace,
    taint_pools,
)
from snakepit_celery.celery.oom_retry import oom_retry_gpu, unpin_delivery
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.policy.placement import place_by_memory
from snakepit_celery.policy.routing import (
    QUEUE_PREFIX,
    Pref,
    RouteDecision,
    decide_route,
    generic_queue,
    parse_prefs,
)
from snakepit_celery.policy.snapshot import FleetSnapshot, NodeRecord
from snakepit_celery.policy.task_options import check_gpu_memory
from snakepit_celery.store import fail_open, report_store_error
from snakepit_celery.store.base import DEFAULT_GROUP, Store

__all__ = ["GPU_RESERVATION_TTL", "SnakepitRouter", "fleet_snapshot", "install_router"]

logger = logging.getLogger(__name__)

#: Seconds a GPU memory reservation lasts: long enough for the task to start and
#: its node's heartbeat to show the memory it took.
GPU_RESERVATION_TTL = 30.0

#: ``reserve(gpu, mb, capacity_mb) -> bool``: take room on a GPU, atomically, fleet-wide.
Reserve = Callable[[str, int, int], bool]


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
        reserve: Reserve | None = None,
        queue_prefix: str | Callable[[], str] = QUEUE_PREFIX,
    ) -> None:
        self.fetch_snapshot = fetch_snapshot
        self.queue_prefix = queue_prefix
        self.reserve = reserve
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

    @staticmethod
    def gpu_memory_of(task: Any, options: Mapping[str, Any] | None) -> float | None:
        """MB the send needs: ``options["gpu_memory"]``, a ``gpu_memory`` header, else the task's.

        A per-call value that is not a number > 0 raises ``ConfigError``.
        """
        options = options or {}
        headers = options.get("headers") or {}
        for value in (options.get("gpu_memory"), headers.get("gpu_memory")):
            if value is not None:
                return check_gpu_memory(value)
        declared = getattr(task, "gpu_memory", None)
        return None if declared is None else float(declared)

    def _waiting_allowed(self) -> bool:
        value = self.allow_waiting
        return bool(value() if callable(value) else value)

    def _prefix(self) -> str:
        value = self.queue_prefix
        return value() if callable(value) else value

    def route(
        self, name: str, prefs: Sequence[Pref], gpu_memory: float | None = None
    ) -> RouteDecision:
        """Decide the queue for task ``name`` with ``prefs`` (reads the cached snapshot)."""
        try:
            snapshot = self.snapshot()
        except StoreUnavailableError as exc:
            if not fail_open():
                raise
            report_store_error(exc, task=name)
            queue = generic_queue(prefs[0], prefix=self._prefix())
            return RouteDecision(queue, str(prefs[0]), waiting=True)
        if gpu_memory is not None:
            placed = self._place(name, prefs, snapshot, gpu_memory)
            if placed is not None:
                return placed
        decision = decide_route(
            prefs,
            snapshot,
            task_name=name,
            allow_waiting=self._waiting_allowed(),
            pick=next(self._picks),
            prefix=self._prefix(),
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

    def _place(
        self, name: str, prefs: Sequence[Pref], snapshot: FleetSnapshot, gpu_memory: float
    ) -> RouteDecision | None:
        """Place by free GPU memory and reserve the room; decide again after a lost race."""
        mb = math.ceil(gpu_memory)
        for _ in range(1 + sum(len(n.devices) for n in snapshot.nodes)):
            placement = place_by_memory(prefs, snapshot, gpu_memory, prefix=self._prefix())
            if placement is None:
                return None
            gpu, room = placement.gpu, placement.room_mb
            if gpu is None or room is None:
                logger.info(
                    "no GPU has %d MB free for task %s; queued on %s to wait for room",
                    mb,
                    name,
                    placement.decision.queue,
                    extra={"task_name": name, "queue": placement.decision.queue},
                )
                return placement.decision
            capacity = room + snapshot.reserved.get(gpu, 0)
            if self._reserved(gpu, mb, capacity, name):
                cached = self._cache.snapshot
                if cached is not None:
                    self._cache.snapshot = cached.with_reservation(gpu, mb)
                return placement.decision
            snapshot = snapshot.with_reservation(gpu, capacity)  # lost the race: full
        return None

    def _reserved(self, gpu: str, mb: int, capacity: int, name: str) -> bool:
        if self.reserve is None:
            return True
        try:
            return self.reserve(gpu, mb, capacity)
        except StoreUnavailableError as exc:
            if not fail_open():
                raise
            report_store_error(exc, task=name)
            return True

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

        A send that names its queue (``apply_async(queue=...)``) is left alone;
        a retry after CUDA/HIP out of memory goes to another GPU with more room.
        """
        failed = oom_retry_gpu(task) if isinstance(options, dict) else None
        if options and options.get("queue") and failed is None:
            return None
        prefs = self.prefs_of(task, options)
        if not prefs:
            return None
        gpu_memory = self.gpu_memory_of(task, options)
        if failed is not None and isinstance(options, dict):
            moved = self.away_from(name, prefs, failed, gpu_memory)
            if moved is not None:
                unpin_delivery(options)
                return {"queue": moved.queue}
            if options.get("queue"):
                return None
        return {"queue": self.route(name, prefs, gpu_memory).queue}

    def away_from(
        self, name: str, prefs: Sequence[Pref], failed: str, gpu_memory: float | None
    ) -> RouteDecision | None:
        """Place a retry on a GPU with more room than ``failed`` had (which is left out).

        None when the fleet's GPUs report no memory (the retry stays where it was).
        """
        try:
            snapshot = self.snapshot()
        except StoreUnavailableError as exc:
            report_store_error(exc, task=name)
            return None
        room = next(
            (
                int(d["memory_free_mb"]) - snapshot.reserved.get(failed, 0)
                for _, d in snapshot.usable_gpus()
                if d.get("uuid") == failed and isinstance(d.get("memory_free_mb"), int)
            ),
            0,
        )
        need = max(gpu_memory or 0.0, room + 1.0)
        logger.info(
            "task %s ran out of GPU memory on %s: retried on a GPU with more than %d MB free",
            name,
            failed,
            room,
            extra={"task_name": name, "gpu": failed},
        )
        return self._place(name, prefs, snapshot.with_reservation(failed, 2**40), need)


def fleet_snapshot(
    store: Store,
    pools: Sequence[str] = ("default",),
    group: str = DEFAULT_GROUP,
    *,
    reservations: bool = False,
) -> FleetSnapshot:
    """Read the live nodes of ``group`` (an app's, ``app_group``) and the active taints
    of ``pools`` (1 + len(pools) store calls).

    ``reservations``: also the GPU memory reservations (one more call; the router's).
    """
    nodes = tuple(NodeRecord.from_dict(record) for record in store.node_list(group=group))
    taints = frozenset(record.member for pool in pools for record in store.taint_list(pool))
    reserved = store.gpu_reservations() if reservations else {}
    return FleetSnapshot(nodes, taints, reserved)


def _reserve(app: Celery) -> Reserve:
    def reserve(gpu: str, mb: int, capacity: int) -> bool:
        return app_store(app).gpu_reserve(
            gpu, uuid.uuid4().hex, mb=mb, capacity_mb=capacity, ttl=GPU_RESERVATION_TTL
        )

    return reserve


def install_router(app: Celery, router: SnakepitRouter | None = None) -> SnakepitRouter:
    """Put the device router first in ``app.conf.task_routes``, keeping the user's routes.

    Idempotent: a second call replaces the router installed by the first.
    Returns the router (tests may call ``invalidate()`` on it).
    """
    if router is None:
        router = SnakepitRouter(
            lambda: fleet_snapshot(
                app_store(app), taint_pools(app), app_group(app), reservations=True
            ),
            allow_waiting=lambda: allow_waiting(app),
            reserve=_reserve(app),
            queue_prefix=lambda: namespace(app),
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
