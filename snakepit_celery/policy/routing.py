"""Queue names, node records and the routing decision: pure, no I/O.

Every worker consumes ``snakepit.cpu``, ``snakepit.<kind>`` for each kind of
accelerator it has (``snakepit.cuda``), ``snakepit.node.<node>`` and
``snakepit.node.<node>.<kind>.<index>`` per device (see ``queues_for``).

``decide_route`` sends a task with a ``device`` preference to the queue of the
first preference that some live, untainted node offers (``policy.placement``
places tasks that need GPU memory). It is a function of the preferences and
a ``FleetSnapshot`` (typed ``NodeRecord``s, active taint members, GPU
reservations) only, so it is tested without Redis. ``celery/router.py`` fetches the
snapshot and turns the decision into a Celery route.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from snakepit_celery.errors import ConfigError, DeviceNotAvailableError
from snakepit_celery.hardware import Device, parse_preference
from snakepit_celery.policy.taints import device_member, worker_member

__all__ = [
    "ACCELERATOR_KINDS",
    "ALLOWED_PREFS",
    "QUEUE_PREFIX",
    "FleetSnapshot",
    "NodeRecord",
    "Pref",
    "RouteDecision",
    "cpu_queue",
    "decide_route",
    "device_queue",
    "device_taint_members",
    "generic_queue",
    "kind_queue",
    "node_devices",
    "node_queue",
    "parse_prefs",
    "queue_device",
    "queues_for",
    "worker_taint_member",
]

_T = TypeVar("_T")

#: Every queue of the package starts with this.
QUEUE_PREFIX = "snakepit"

#: Accelerator kinds, best first: the order ``"auto"`` tries them in.
ACCELERATOR_KINDS = ("cuda", "mps", "rocm")

#: The spellings of a ``device`` preference (for ``ConfigError`` messages).
ALLOWED_PREFS = '"auto", "cpu", "cuda", "mps", "rocm", "cuda:N", "rocm:N", ("cuda", N), a Device'


# -- queue names -----------------------------------------------------------------


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
    other queue name no device. Used by a worker to run a task on the
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
        raise ConfigError("device", device, ALLOWED_PREFS) from None
    return tuple(_parse_one(item) for item in items)


# -- node records and taints ------------------------------------------------------


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


#: The keys of a node's registry record that ``NodeRecord`` types.
_TYPED_KEYS = ("node", "state", "heartbeat_age", "identity", "devices", "queues")


@dataclass(frozen=True, slots=True)
class NodeRecord(Mapping[str, Any]):
    """One node of the registry (a ``Store.node_list()`` entry), typed.

    ``devices`` are registry device dicts (``node_devices``); ``state`` is
    ``running`` or ``stopping`` (None when the record does not say);
    everything else the worker wrote about itself is kept in ``extra``. It
    also reads as the plain record (``record["node"]``, ``record.get(...)``).
    """

    node: str
    state: str | None = None
    heartbeat_age: float = 0.0
    identity: Mapping[str, Any] = field(default_factory=dict)
    devices: tuple[Mapping[str, Any], ...] = ()
    queues: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> NodeRecord:
        """Build from one ``Store.node_list()`` entry (a ``NodeRecord`` is returned as is)."""
        if isinstance(record, NodeRecord):
            return record
        state = record.get("state")
        return cls(
            node=str(record.get("node", "")),
            state=None if state is None else str(state),
            heartbeat_age=float(record.get("heartbeat_age", 0.0)),
            identity=dict(record.get("identity") or {}),
            devices=tuple(dict(d) for d in record.get("devices") or ()),
            queues=tuple(str(q) for q in record.get("queues") or ()),
            extra={k: v for k, v in record.items() if k not in _TYPED_KEYS},
        )

    @property
    def stopping(self) -> bool:
        """True while the node shuts down (it takes no new work)."""
        return self.state == "stopping"

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain types: the worker's record with ``node`` and ``heartbeat_age``."""
        record: dict[str, Any] = {
            **self.extra,
            "node": self.node,
            "heartbeat_age": round(self.heartbeat_age, 3),
            "identity": dict(self.identity),
            "devices": [dict(d) for d in self.devices],
            "queues": list(self.queues),
        }
        if self.state is not None:
            record["state"] = self.state
        return record

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.as_dict())

    def __len__(self) -> int:
        return len(self.as_dict())


# -- fleet snapshot and the decision ------------------------------------------------


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """What the router knows: live node records and active taint members.

    ``nodes`` may be given as ``NodeRecord``s or plain registry dicts (they
    are read into ``NodeRecord``s).
    """

    nodes: tuple[NodeRecord, ...] = ()
    taints: frozenset[str] = frozenset()
    #: GPU UUID -> MB reserved by tasks routed to it and not yet started.
    reserved: Mapping[str, int] = field(default_factory=dict)
    #: What the decisions derive from nodes and taints, worked out once per snapshot.
    _memo: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(NodeRecord.from_dict(n) for n in self.nodes))

    def node_tainted(self, node: str) -> bool:
        """True when the whole node is tainted."""
        return worker_taint_member(node) in self.taints

    def device_tainted(self, node: str, device: Mapping[str, Any]) -> bool:
        """True when ``device`` of ``node`` is tainted (under any of its names)."""
        return any(member in self.taints for member in device_taint_members(node, device))

    def with_reservation(self, gpu: str, mb: int) -> FleetSnapshot:
        """This snapshot with ``mb`` more reserved on ``gpu`` (what it worked out is kept)."""
        reserved = {**self.reserved, gpu: self.reserved.get(gpu, 0) + mb}
        snapshot = replace(self, reserved=reserved)
        snapshot._memo.update(self._memo)
        return snapshot

    def offers(self, *, include_tainted_nodes: bool) -> list[tuple[str, str, int | None]]:
        """``(node, kind, index)`` for every usable device (CPU as ``(node, "cpu", None)``).

        Nodes shutting down (state ``stopping``) offer nothing; nodes tainted
        as a whole only when ``include_tainted_nodes``. Worked out once per snapshot.
        """
        key = ("offers", include_tainted_nodes)
        if key not in self._memo:
            self._memo[key] = tuple(
                (node, "cpu" if device is None else str(device["kind"]), _index(device))
                for node, device in self._usable(include_tainted_nodes)
            )
        return list(self._memo[key])

    def usable_gpus(self) -> tuple[tuple[str, Mapping[str, Any]], ...]:
        """``(node, device)`` of every untainted device of a live, untainted node (memoized)."""
        return self.memoized(
            "gpus",
            lambda: tuple(
                (node, device)
                for node, device in self._usable(include_tainted_nodes=False)
                if device is not None
            ),
        )

    def memoized(self, key: Any, work: Callable[[], _T]) -> _T:
        """``work()``, done once per snapshot under ``key`` (it may read nodes and taints only)."""
        if key not in self._memo:
            self._memo[key] = work()
        value: _T = self._memo[key]
        return value

    def _usable(
        self, include_tainted_nodes: bool
    ) -> Iterator[tuple[str, Mapping[str, Any] | None]]:
        for record in self.nodes:
            node = record.node
            if not node or record.stopping:
                continue
            if self.node_tainted(node) and not include_tainted_nodes:
                continue
            yield node, None
            for device in record.devices:
                if not self.device_tainted(node, device):
                    yield node, device


def _index(device: Mapping[str, Any] | None) -> int | None:
    return None if device is None else int(device["index"])


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a task goes: ``queue``, the preference it satisfied, and whether it waits.

    ``waiting`` is True when no live node offers any preference and the task
    was sent to the generic queue of its first preference anyway
    (``snakepit_allow_waiting``), or no GPU has room for its ``gpu_memory``;
    ``node`` is set for an explicit index or a GPU placed by free memory.
    """

    queue: str
    pref: str
    node: str | None = None
    waiting: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return asdict(self)


def generic_queue(pref: Pref) -> str:
    """The queue any node offering ``pref``'s kind consumes (``snakepit.cpu`` for auto/cpu)."""
    return cpu_queue() if pref.kind in ("cpu", "auto") else kind_queue(pref.kind)


def _match(
    pref: Pref, offers: Sequence[tuple[str, str, int | None]], pick: int
) -> RouteDecision | None:
    if pref.kind == "auto":
        for kind in (*ACCELERATOR_KINDS, "cpu"):
            if any(offer[1] == kind for offer in offers):
                return RouteDecision(generic_queue(Pref(kind)), str(pref))
        return None
    if pref.index is None:
        if any(offer[1] == pref.kind for offer in offers):
            return RouteDecision(generic_queue(pref), str(pref))
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
        raise ConfigError("device", list(prefs), ALLOWED_PREFS)
    for include_tainted_nodes in (False, True):
        offers = snapshot.offers(include_tainted_nodes=include_tainted_nodes)
        for pref in prefs:
            decision = _match(pref, offers, pick)
            if decision is not None:
                return decision
    requested = [str(pref) for pref in prefs]
    if allow_waiting:
        return RouteDecision(generic_queue(prefs[0]), requested[0], waiting=True)
    raise DeviceNotAvailableError(
        requested,
        f"no live, untainted node offers {' or '.join(requested)} for task {task_name!r}; "
        "start a worker with that hardware, or set snakepit_allow_waiting=True to queue anyway",
    )
