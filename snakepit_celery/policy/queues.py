"""Which queues a node consumes, given the fleet (pure: no I/O, no clock).

A worker node consumes the snakepit queues of its devices; taints take some of
them away. ``desired_queues()`` says which, ``live_untainted_others()`` which
other nodes could take the work instead. Both read a fleet view: the live node
records and the active taints, as the router's fleet snapshot holds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from snakepit_celery.policy.routing import QUEUE_PREFIX, device_queue, kind_queue
from snakepit_celery.policy.snapshot import NodeRecord

__all__ = ["FleetView", "desired_queues", "live_untainted_others"]


class FleetView(Protocol):
    """What these decisions read of the fleet: live node records and taints."""

    @property
    def nodes(self) -> Sequence[NodeRecord]:
        """The records of the live nodes (each with its ``node`` name)."""
        ...

    def node_tainted(self, node: str) -> bool:
        """True when the whole node is tainted."""
        ...

    def device_tainted(self, node: str, device: Mapping[str, Any]) -> bool:
        """True when ``device`` of ``node`` is tainted."""
        ...


def live_untainted_others(fleet: FleetView, node: str) -> list[NodeRecord]:
    """Records of the nodes other than ``node`` that are live, not stopping and not tainted."""
    return [
        record
        for record in fleet.nodes
        if record.node not in ("", node)
        and not record.stopping
        and not fleet.node_tainted(record.node)
    ]


def desired_queues(
    node: str,
    all_queues: Sequence[str],
    devices: Sequence[Mapping[str, Any]],
    fleet: FleetView,
    *,
    extra_queues: Iterable[str] = (),
    prefix: str = QUEUE_PREFIX,
) -> tuple[list[str], bool]:
    """The queues ``node`` should consume given the fleet, and whether it is tainted but alone.

    A tainted node keeps nothing (``extra_queues``, its non-snakepit queues,
    included) unless no other live, untainted node exists; a tainted device
    loses its device queue, and its kind's queue when no untainted device of
    that kind is left (queue names of namespace ``prefix``).
    """
    everything = [*all_queues, *(q for q in extra_queues if q not in all_queues)]
    if fleet.node_tainted(node):
        if live_untainted_others(fleet, node):
            return [], False
        return everything, True
    released: set[str] = set()
    usable_kinds: set[str] = set()
    for device in devices:
        queue = device_queue(node, str(device["kind"]), int(device["index"]), prefix=prefix)
        if fleet.device_tainted(node, device):
            released.add(queue)
        else:
            usable_kinds.add(str(device["kind"]))
    for device in devices:
        if device["kind"] not in usable_kinds:
            released.add(kind_queue(str(device["kind"]), prefix=prefix))
    return [q for q in everything if q not in released], False
