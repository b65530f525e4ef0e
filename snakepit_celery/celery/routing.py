"""Queue names and the GPU-aware task router.

Every worker consumes ``snakepit.cpu``, ``snakepit.<kind>`` for each kind of
accelerator it has (``snakepit.cuda``), ``snakepit.node.<node>`` and
``snakepit.node.<node>.<kind>.<index>`` per device (see ``queues_for``).

The router installed by ``install_router(app)`` sends a task with a ``device``
preference to the queue of the first preference that some live, untainted
node offers. The decision itself (``decide_route``) is a pure function of the
preferences and a ``FleetSnapshot`` (node registry + active taints), so it is
tested without Redis; ``SnakepitRouter`` only fetches that snapshot (cached
for ``snapshot_ttl`` seconds per process) and turns the decision into a route.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from celery import Celery

from snakepit_celery.celery.settings import settings_for
from snakepit_celery.errors import ConfigError, DeviceNotAvailableError, StoreUnavailableError
from snakepit_celery.hardware import Device, parse_preference
from snakepit_celery.policy.taints import device_member, worker_member
from snakepit_celery.store import fail_open, report_store_error, store_from_url
from snakepit_celery.store.base import Store

__all__ = [
    "ACCELERATOR_KINDS",
    "QUEUE_PREFIX",
    "FleetSnapshot",
    "Pref",
    "RouteDecision",
    "SnakepitRouter",
    "allow_waiting",
    "app_store",
    "cpu_queue",
    "decide_route",
    "device_queue",
    "device_taint_members",
    "fleet_snapshot",
    "install_router",
    "kind_queue",
    "node_devices",
    "node_queue",
    "parse_prefs",
    "queues_for",
    "taint_pools",
    "worker_taint_member",
]

logger = logging.getLogger(__name__)

#: Every queue of the package starts with this.
QUEUE_PREFIX = "snakepit"

#: Accelerator kinds, best first: the order ``"auto"`` tries them in.
ACCELERATOR_KINDS = ("cuda", "mps", "rocm")

_ALLOWED_PREFS = '"auto", "cpu", "cuda", "mps", "rocm", "cuda:N", "rocm:N", ("cuda", N), a Device'


# -- queue names (pure) --------------------------------------------------------


def cpu_queue() -> str:
    """The queue every node consumes: ``snakepit.cpu``."""
    return f"{QUEUE_PREFIX}.cpu"


def kind_queue(kind: str) -> str:
    """The queue of every node that has a device of ``kind``: ``snakepit.cuda``."""
    return f"{QUEUE_PREFIX}.{kind}"


def node_queue(node: str) -> str:
    """The queue of one node: ``snakepit.node.<node>``."""
    return f"{QUEUE_PREFIX}.node.{node}"


def device_queue(node: str, kind: str, index: int) -> str:
    """The queue of one device of one node: ``snakepit.node.<node>.cuda.1``."""
    return f"{QUEUE_PREFIX}.node.{node}.{kind}.{index}"


def queue_device(queue: str) -> Pref | None:
    """The device a snakepit queue stands for (``snakepit.cuda`` → ``cuda``), else None.

    ``snakepit.cpu`` and ``snakepit.<kind>`` name a kind, a per-device queue
    ``snakepit.node.<node>.<kind>.<index>`` one device; node queues and any
    other queue name no device. Pure: used by a worker to run a task on the
    device it was routed to, not merely the first one of its preferences.
    """
    parts = queue.split(".")
    if len(parts) == 2 and parts[0] == QUEUE_PREFIX and parts[1] in ("cpu", *ACCELERATOR_KINDS):
        return Pref(parts[1])
    if (
        len(parts) >= 5
        and queue.startswith(f"{QUEUE_PREFIX}.node.")
        and parts[-2] in ACCELERATOR_KINDS
        and parts[-1].isdigit()
    ):
        return Pref(parts[-2], int(parts[-1]))
    return None


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def node_devices(hardware_info: Any) -> list[dict[str, Any]]:
    """The accelerator devices of a ``detect()`` result (object or ``as_dict()``), as plain dicts.

    Each is ``{"kind", "index", "uuid", "name"}``; the CPU is not listed (every
    node has one). Indices are the ones this process sees (after
    ``CUDA_VISIBLE_DEVICES``), the same torch uses.
    """
    devices: list[dict[str, Any]] = []
    for kind in ("cuda", "rocm"):
        info = _field(hardware_info, kind)
        for position, dev in enumerate(_field(info, "devices", None) or ()):
            index = _field(dev, "id", None)
            devices.append(
                {
                    "kind": kind,
                    "index": int(index) if index is not None else position,
                    "uuid": _field(dev, "uuid", None),
                    "name": _field(dev, "name", None),
                }
            )
    mps = _field(hardware_info, "mps")
    if mps is not None and _field(mps, "available", False):
        devices.append(
            {"kind": "mps", "index": 0, "uuid": None, "name": _field(mps, "device_name", None)}
        )
    return devices


def queues_for(node: str, hardware_info: Any) -> list[str]:
    """The queues a node consumes, given its ``detect()`` result (object or ``as_dict()``).

    ``snakepit.cpu``, ``snakepit.<kind>`` per accelerator kind present,
    ``snakepit.node.<node>`` and ``snakepit.node.<node>.<kind>.<index>`` per device.
    """
    devices = node_devices(hardware_info)
    queues = [cpu_queue()]
    for kind in ACCELERATOR_KINDS:
        if any(dev["kind"] == kind for dev in devices):
            queues.append(kind_queue(kind))
    queues.append(node_queue(node))
    queues.extend(device_queue(node, dev["kind"], dev["index"]) for dev in devices)
    return queues


# -- preferences ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pref:
    """One parsed device preference: ``kind`` (``auto``/``cpu``/``cuda``...) and optional index."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def _parse_one(pref: Any) -> Pref:
    if isinstance(pref, Pref):
        return pref
    device = parse_preference(pref)
    if device is None:
        return Pref("auto")
    explicit_index = not isinstance(pref, str) or ":" in pref
    return Pref(device.kind.value, device.index if explicit_index else None)


def parse_prefs(device: Any) -> tuple[Pref, ...]:
    """Normalise a task's ``device`` option (one pref or a list of them) to ``Pref``s.

    Spellings are those of ``hardware.select()``; ``"cuda"`` means any CUDA
    device, ``"cuda:1"`` / ``("cuda", 1)`` / a ``Device`` that very index.
    ``None`` or an empty list gives ``()`` (the task is not routed by device).
    Unknown spellings raise ``ConfigError`` naming ``device``.
    """
    if device is None:
        return ()
    single = isinstance(device, str | Device | Pref) or (
        isinstance(device, tuple)
        and len(device) == 2
        and isinstance(device[1], int)
        and not isinstance(device[1], bool)
    )
    if single:
        return (_parse_one(device),)
    try:
        items = list(device)
    except TypeError:
        raise ConfigError("device", device, _ALLOWED_PREFS) from None
    return tuple(_parse_one(item) for item in items)


# -- fleet snapshot and the decision (pure) --------------------------------------


def worker_taint_member(node: str) -> str:
    """The taint member that marks a whole node: ``worker:<node>``."""
    return worker_member(node)


def device_taint_members(node: str, device: Mapping[str, Any]) -> tuple[str, ...]:
    """Taint members that mark ``device`` (a registry device dict) of ``node``.

    The barrier keys a GPU by UUID where known, else by ``cuda:N``; both are
    checked, since a taint may have been set from a process that lacked the UUID.
    """
    plain = Device(device["kind"], device.get("index"))
    members = [device_member(node, plain)]
    if device.get("uuid"):
        members.insert(0, device_member(node, Device(plain.kind, plain.index, device["uuid"])))
    return tuple(members)


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """What the router knows: live node records (``node_list()``) and active taint members."""

    nodes: tuple[Mapping[str, Any], ...] = ()
    taints: frozenset[str] = frozenset()

    def node_tainted(self, node: str) -> bool:
        """True when the whole node is tainted."""
        return worker_taint_member(node) in self.taints

    def device_tainted(self, node: str, device: Mapping[str, Any]) -> bool:
        """True when ``device`` of ``node`` is tainted (under any of its names)."""
        return any(member in self.taints for member in device_taint_members(node, device))

    def offers(self, *, include_tainted_nodes: bool) -> list[tuple[str, str, int | None]]:
        """``(node, kind, index)`` for every usable device (CPU as ``(node, "cpu", None)``).

        Nodes shutting down (state ``stopping``) offer nothing; nodes tainted
        as a whole only when ``include_tainted_nodes``.
        """
        usable: list[tuple[str, str, int | None]] = []
        for record in self.nodes:
            node = str(record.get("node", ""))
            if not node or record.get("state") == "stopping":
                continue
            if self.node_tainted(node) and not include_tainted_nodes:
                continue
            usable.append((node, "cpu", None))
            for device in record.get("devices") or ():
                if not self.device_tainted(node, device):
                    usable.append((node, str(device["kind"]), int(device["index"])))
        return usable


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a task goes: ``queue``, the preference it satisfied, and whether it waits.

    ``waiting`` is True when no live node offers any preference and the task
    was sent to the generic queue of its first preference anyway
    (``snakepit_allow_waiting``); ``node`` is set for an explicit index.
    """

    queue: str
    pref: str
    node: str | None = None
    waiting: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return asdict(self)


def _generic_queue(pref: Pref) -> str:
    return cpu_queue() if pref.kind in ("cpu", "auto") else kind_queue(pref.kind)


def _match(
    pref: Pref, offers: Sequence[tuple[str, str, int | None]], pick: int
) -> RouteDecision | None:
    if pref.kind == "auto":
        for kind in (*ACCELERATOR_KINDS, "cpu"):
            if any(offer[1] == kind for offer in offers):
                return RouteDecision(_generic_queue(Pref(kind)), str(pref))
        return None
    if pref.index is None:
        if any(offer[1] == pref.kind for offer in offers):
            return RouteDecision(_generic_queue(pref), str(pref))
        return None
    nodes = sorted(
        {node for node, kind, index in offers if (kind, index) == (pref.kind, pref.index)}
    )
    if not nodes:
        return None
    node = nodes[pick % len(nodes)]
    return RouteDecision(device_queue(node, pref.kind, pref.index), str(pref), node=node)


def decide_route(
    prefs: Sequence[Pref],
    snapshot: FleetSnapshot,
    *,
    task_name: str = "?",
    allow_waiting: bool = False,
    pick: int = 0,
) -> RouteDecision:
    """Choose the queue for a task preferring ``prefs``, in order, given the fleet.

    A preference matches when some live node offers an untainted device of
    that kind (and index); nodes tainted as a whole are skipped unless no
    untainted node matches any preference. ``pick`` spreads explicit-index
    routes over the nodes that match. Nothing matches: the generic queue of
    the first preference when ``allow_waiting``, else ``DeviceNotAvailableError``.
    """
    if not prefs:
        raise ConfigError("device", list(prefs), _ALLOWED_PREFS)
    for include_tainted_nodes in (False, True):
        offers = snapshot.offers(include_tainted_nodes=include_tainted_nodes)
        for pref in prefs:
            decision = _match(pref, offers, pick)
            if decision is not None:
                return decision
    requested = [str(pref) for pref in prefs]
    if allow_waiting:
        return RouteDecision(_generic_queue(prefs[0]), requested[0], waiting=True)
    raise DeviceNotAvailableError(
        requested,
        f"no live, untainted node offers {' or '.join(requested)} for task {task_name!r}; "
        "start a worker with that hardware, or set snakepit_allow_waiting=True to queue anyway",
    )


# -- the router (I/O: reads the registry through the store) ----------------------


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
            return RouteDecision(_generic_queue(prefs[0]), str(prefs[0]), waiting=True)
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


def _is_ours(route: Any) -> bool:
    return isinstance(route, SnakepitRouter)


# -- the app's store and fleet view -------------------------------------------------------


def app_store(app: Celery) -> Store:
    """The store the app's settings name (``snakepit_store_url``, ``snakepit_key_prefix``)."""
    settings = settings_for(app)
    return store_from_url(str(settings.store_url), key_prefix=str(settings.key_prefix))


def taint_pools(app: Celery) -> tuple[str, ...]:
    """The taint pools the router and the worker watch: ``default`` and the health pool."""
    pools = ["default"]
    pool = settings_for(app).health.get("pool")
    if pool and pool not in pools:
        pools.append(str(pool))
    return tuple(pools)


def allow_waiting(app: Celery) -> bool:
    """The setting ``snakepit_allow_waiting``: queue device tasks no live node can take."""
    return settings_for(app).allow_waiting


def fleet_snapshot(store: Store, pools: Sequence[str] = ("default",)) -> FleetSnapshot:
    """Read live node records and active taints of ``pools`` (1 + len(pools) store calls)."""
    nodes = tuple(store.node_list())
    taints = frozenset(record.member for pool in pools for record in store.taint_list(pool))
    return FleetSnapshot(nodes, taints)


def install_router(app: Celery, router: SnakepitRouter | None = None) -> SnakepitRouter:
    """Put the device router first in ``app.conf.task_routes``, keeping the user's routes.

    Idempotent: a second call replaces the router installed by the first.
    Returns the router (tests may call ``invalidate()`` on it).
    """
    if router is None:
        router = SnakepitRouter(
            lambda: fleet_snapshot(app_store(app), taint_pools(app)),
            allow_waiting=lambda: allow_waiting(app),
        )
    existing = app.conf.task_routes
    if existing is None:
        user_routes: list[Any] = []
    elif isinstance(existing, list | tuple):
        user_routes = [route for route in existing if not _is_ours(route)]
    else:
        user_routes = [existing]
    app.conf.task_routes = [router, *user_routes]
    return router
