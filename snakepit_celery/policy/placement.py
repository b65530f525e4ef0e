"""Placement by free GPU memory: which GPU a task that needs ``gpu_memory`` MB goes to (pure).

Each node's heartbeat carries the free and total memory of its GPUs (read by
its NVML health watch, a few seconds old at most); the router's snapshot adds
the live reservations of tasks routed and not yet started. A task goes to the
device queue of the GPU with the most room (free minus reserved) that covers
it; the router then reserves that room in the store (atomically, so two
senders racing for the last room cannot both get it) and decides again when
it lost the race.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snakepit_celery.policy.routing import (
    ACCELERATOR_KINDS,
    QUEUE_PREFIX,
    Pref,
    RouteDecision,
    device_queue,
    generic_queue,
)
from snakepit_celery.policy.snapshot import FleetSnapshot

__all__ = ["Placement", "gpu_room", "place_by_memory"]

#: (free MB, uuid, index, node, device) of one GPU that reports its memory.
_Gpu = tuple[int, str, Any, str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a task needing GPU memory goes: the route, and the GPU (UUID) and its room then.

    ``gpu`` and ``room_mb`` are None when no GPU had room (the route waits).
    """

    decision: RouteDecision
    gpu: str | None = None
    room_mb: int | None = None


def gpu_room(snapshot: FleetSnapshot, pref: Pref) -> list[tuple[int, str, Mapping[str, Any]]]:
    """``(room MB, node, device)`` of every usable GPU matching ``pref`` whose memory is known.

    Room is the free memory of the node's last heartbeat minus the live
    reservations on that GPU; untainted devices of live, untainted nodes only.
    """
    reserved = snapshot.reserved
    return [
        (free - reserved.get(uuid, 0), node, device)
        for free, uuid, index, node, device in _with_memory(snapshot, pref.kind)
        if pref.index is None or index == pref.index
    ]


def _with_memory(snapshot: FleetSnapshot, kind: str) -> tuple[_Gpu, ...]:
    """The usable GPUs of ``kind`` that report free memory, most free first (memoized)."""
    return snapshot.memoized(
        ("memory", kind),
        lambda: tuple(
            sorted(
                (
                    (free, str(device["uuid"]), device.get("index"), node, device)
                    for node, device in snapshot.usable_gpus()
                    if device["kind"] == kind
                    and isinstance(free := device.get("memory_free_mb"), int)
                    and device.get("uuid")
                ),
                key=lambda gpu: -gpu[0],
            )
        ),
    )


def place_by_memory(
    prefs: Sequence[Pref],
    snapshot: FleetSnapshot,
    gpu_memory: float,
    *,
    prefix: str = QUEUE_PREFIX,
) -> Placement | None:
    """The GPU with the most room covering ``gpu_memory`` (MB), preference by preference.

    Ties go to the node name. None (the ordinary ``decide_route`` routes the
    task) when a CPU or ``auto`` preference comes before any GPU with room,
    or when no GPU of a preference reports its memory (no health watch); no
    GPU with room anywhere: the first preference's shared queue, waiting for
    room (never a failure). Queue names are those of namespace ``prefix``.
    """
    for pref in prefs:
        if pref.kind not in ACCELERATOR_KINDS:
            return None
        known, best = _roomiest(snapshot, pref, gpu_memory)
        if not known:
            return None
        if best is not None:
            room, node, device = best
            queue = device_queue(node, str(device["kind"]), int(device["index"]), prefix=prefix)
            decision = RouteDecision(queue, str(pref), node=node)
            return Placement(decision, str(device["uuid"]), room)
    waiting = RouteDecision(generic_queue(prefs[0], prefix=prefix), str(prefs[0]), waiting=True)
    return Placement(waiting)


def _roomiest(
    snapshot: FleetSnapshot, pref: Pref, need: float
) -> tuple[bool, tuple[int, str, Mapping[str, Any]] | None]:
    """(any GPU of ``pref`` reports memory, the one with the most room >= ``need`` or None).

    The GPUs come most free first and room never exceeds free memory, so the
    walk ends at the first GPU that could neither fit nor beat the best.
    """
    reserved = snapshot.reserved
    known = False
    best: tuple[int, str, Mapping[str, Any]] | None = None
    for free, uuid, index, node, device in _with_memory(snapshot, pref.kind):
        if pref.index is not None and index != pref.index:
            continue
        if known and (free < need or (best is not None and free < best[0])):
            break
        known = True
        room = free - reserved[uuid] if uuid in reserved else free
        if room >= need and (best is None or (room, node) > (best[0], best[1])):
            best = (room, node, device)
    return known, best
