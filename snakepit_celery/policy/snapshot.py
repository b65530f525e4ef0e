"""What the router decides from: typed node records and the fleet snapshot.

``NodeRecord`` types one entry of the node registry; ``FleetSnapshot`` holds
the live records, the active taint members and the GPU reservations, and
works out (once per snapshot) which devices are usable. Pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from snakepit_celery.hardware import Device
from snakepit_celery.policy.taints import device_member, worker_member

__all__ = [
    "FleetSnapshot",
    "NodeRecord",
    "device_taint_members",
    "worker_taint_member",
]

_T = TypeVar("_T")


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
