"""Queue names, device preferences and the routing decision: pure, no I/O.

Every worker consumes ``snakepit.cpu``, ``snakepit.<kind>`` for each kind of
accelerator it has (``snakepit.cuda``), ``snakepit.node.<node>`` and
``snakepit.node.<node>.<kind>.<index>`` per device (see ``queues_for``).
Queue names start with the app's namespace (``snakepit_key_prefix``, the
``prefix`` argument of every function here): ``snakepit`` by default, so an
app with namespace ``teamb`` consumes ``teamb.cpu``, ``teamb.node.<node>`` ...
and two apps on one broker database never consume each other's queues.

``decide_route`` sends a task with a ``device`` preference to the queue of the
first preference that some live, untainted node offers (``policy.placement``
places tasks that need GPU memory). It is a function of the preferences and
a ``FleetSnapshot`` (``policy/snapshot.py``: typed ``NodeRecord``s, active
taint members, GPU reservations) only, so it is tested without Redis.
``celery/router.py`` fetches the snapshot and turns the decision into a
Celery route.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from snakepit_celery.errors import ConfigError, DeviceNotAvailableError
from snakepit_celery.hardware import Device, parse_preference
from snakepit_celery.policy.snapshot import FleetSnapshot

__all__ = [
    "ACCELERATOR_KINDS",
    "ALLOWED_PREFS",
    "QUEUE_PREFIX",
    "Pref",
    "RouteDecision",
    "cpu_queue",
    "decide_route",
    "device_queue",
    "generic_queue",
    "kind_queue",
    "node_devices",
    "node_queue",
    "parse_prefs",
    "queue_device",
    "queues_for",
]

#: Every queue of the default namespace starts with this (others start with their namespace).
QUEUE_PREFIX = "snakepit"

#: Accelerator kinds, best first: the order ``"auto"`` tries them in.
ACCELERATOR_KINDS = ("cuda", "mps", "rocm")

#: The spellings of a ``device`` preference (for ``ConfigError`` messages).
ALLOWED_PREFS = '"auto", "cpu", "cuda", "mps", "rocm", "cuda:N", "rocm:N", ("cuda", N), a Device'


# -- queue names -----------------------------------------------------------------


def cpu_queue(*, prefix: str = QUEUE_PREFIX) -> str:
    """The queue every node consumes: ``snakepit.cpu``."""
    return f"{prefix}.cpu"


def kind_queue(kind: str, *, prefix: str = QUEUE_PREFIX) -> str:
    """The queue of every node that has a device of ``kind``: ``snakepit.cuda``."""
    return f"{prefix}.{kind}"


def node_queue(node: str, *, prefix: str = QUEUE_PREFIX) -> str:
    """The queue of one node: ``snakepit.node.<node>`` (``node=""``: the start of every one)."""
    return f"{prefix}.node.{node}"


def device_queue(node: str, kind: str, index: int, *, prefix: str = QUEUE_PREFIX) -> str:
    """The queue of one device of one node: ``snakepit.node.<node>.cuda.1``."""
    return f"{prefix}.node.{node}.{kind}.{index}"


def queue_device(queue: str, *, prefix: str = QUEUE_PREFIX) -> Pref | None:
    """The device a queue of namespace ``prefix`` stands for (``snakepit.cuda`` → ``cuda``).

    ``snakepit.cpu`` and ``snakepit.<kind>`` name a kind, a per-device queue
    ``snakepit.node.<node>.<kind>.<index>`` one device; node queues, any
    other queue and any other namespace's queue name no device (None). Used
    by a worker to run a task on the device it was routed to, not merely the
    first one of its preferences.
    """
    if not queue.startswith(f"{prefix}."):
        return None
    rest = queue[len(prefix) + 1 :]
    if rest in ("cpu", *ACCELERATOR_KINDS):
        return Pref(rest)
    parts = rest.split(".")
    if (
        len(parts) >= 4
        and parts[0] == "node"
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


def queues_for(node: str, hardware_info: Any, *, prefix: str = QUEUE_PREFIX) -> list[str]:
    """The queues a node consumes, given its ``detect()`` result (object or ``as_dict()``).

    ``snakepit.cpu``, ``snakepit.<kind>`` per accelerator kind present,
    ``snakepit.node.<node>`` and ``snakepit.node.<node>.<kind>.<index>`` per
    device (``prefix`` in place of ``snakepit`` for another namespace).
    """
    devices = node_devices(hardware_info)
    queues = [cpu_queue(prefix=prefix)]
    for kind in ACCELERATOR_KINDS:
        if any(dev["kind"] == kind for dev in devices):
            queues.append(kind_queue(kind, prefix=prefix))
    queues.append(node_queue(node, prefix=prefix))
    queues.extend(device_queue(node, dev["kind"], dev["index"], prefix=prefix) for dev in devices)
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


def generic_queue(pref: Pref, *, prefix: str = QUEUE_PREFIX) -> str:
    """The queue any node offering ``pref``'s kind consumes (``snakepit.cpu`` for auto/cpu)."""
    if pref.kind in ("cpu", "auto"):
        return cpu_queue(prefix=prefix)
    return kind_queue(pref.kind, prefix=prefix)


def _match(
    pref: Pref, offers: Sequence[tuple[str, str, int | None]], pick: int, prefix: str
) -> RouteDecision | None:
    if pref.kind == "auto":
        for kind in (*ACCELERATOR_KINDS, "cpu"):
            if any(offer[1] == kind for offer in offers):
                return RouteDecision(generic_queue(Pref(kind), prefix=prefix), str(pref))
        return None
    if pref.index is None:
        if any(offer[1] == pref.kind for offer in offers):
            return RouteDecision(generic_queue(pref, prefix=prefix), str(pref))
        return None
    nodes = sorted(
        {node for node, kind, index in offers if (kind, index) == (pref.kind, pref.index)}
    )
    if not nodes:
        return None
    node = nodes[pick % len(nodes)]
    queue = device_queue(node, pref.kind, pref.index, prefix=prefix)
    return RouteDecision(queue, str(pref), node=node)


def decide_route(
    prefs: Sequence[Pref],
    snapshot: FleetSnapshot,
    *,
    task_name: str = "?",
    allow_waiting: bool = False,
    pick: int = 0,
    prefix: str = QUEUE_PREFIX,
) -> RouteDecision:
    """Choose the queue for a task preferring ``prefs``, in order, given the fleet.

    A preference matches when some live node offers an untainted device of
    that kind (and index); nodes tainted as a whole are skipped unless no
    untainted node matches any preference. ``pick`` spreads explicit-index
    routes over the nodes that match. Nothing matches: the generic queue of
    the first preference when ``allow_waiting``, else ``DeviceNotAvailableError``.
    Queue names are those of namespace ``prefix``.
    """
    if not prefs:
        raise ConfigError("device", list(prefs), ALLOWED_PREFS)
    for include_tainted_nodes in (False, True):
        offers = snapshot.offers(include_tainted_nodes=include_tainted_nodes)
        for pref in prefs:
            decision = _match(pref, offers, pick, prefix)
            if decision is not None:
                return decision
    requested = [str(pref) for pref in prefs]
    if allow_waiting:
        return RouteDecision(generic_queue(prefs[0], prefix=prefix), requested[0], waiting=True)
    raise DeviceNotAvailableError(
        requested,
        f"no live, untainted node offers {' or '.join(requested)} for task {task_name!r}; "
        "start a worker with that hardware, or set snakepit_allow_waiting=True to queue anyway",
    )
