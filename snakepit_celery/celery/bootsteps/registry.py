"""The node registry record and the heartbeat thread that keeps it alive.

On start a worker registers itself in the store's node registry: identity,
devices with UUIDs, queues, pid, host, state and the tasks it is running. A
heartbeat thread refreshes that record every ``HEARTBEAT_INTERVAL`` seconds
(it expires after ``HEARTBEAT_TTL`` without one), re-decides the node's
queues on each beat, keeps the messages of long tasks from being restored by
the broker (``VisibilityKeeper``), runs the orphan reaper every ``REAP_EVERY`` beats, and
writes the record again within ``IN_FLIGHT_POLL`` seconds when an
early-acknowledged crash-barrier task starts (one write per poll at most, from
this thread: nothing on the task's path). A thread, not the event loop's
timer, so the heartbeat stays alive while a ``solo`` pool runs a long task.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from snakepit_celery import hardware
from snakepit_celery.celery.bootsteps.in_flight import (
    in_flight_tasks,
    orphanable,
    orphanable_in_flight,
)
from snakepit_celery.celery.bootsteps.queues import QueueReconciler
from snakepit_celery.celery.bootsteps.reaper import OrphanReaper
from snakepit_celery.celery.bootsteps.visibility import VisibilityKeeper
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.store import report_store_error
from snakepit_celery.store.base import DEFAULT_GROUP, Store

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TTL",
    "IN_FLIGHT_POLL",
    "REAP_EVERY",
    "Heartbeat",
    "NodeRegistry",
    "never_raise",
]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a node.
HEARTBEAT_INTERVAL = 2.0
#: A node whose record was not refreshed for this long is dead (three missed heartbeats).
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL
#: Seconds between two looks (heartbeat thread) for newly started early-acked tasks;
#: the record is written again when one appeared (at most one write per look).
IN_FLIGHT_POLL = 0.1
#: The orphan reaper runs every this many heartbeats.
REAP_EVERY = 2


def never_raise(action: Callable[[], object], failure: str, node: str) -> None:
    """Run ``action``; report store errors (fail-open) and log any other error.

    ``failure`` is the log message for an unexpected error, with one ``%s``
    for the node's name.
    """
    try:
        action()
    except StoreUnavailableError as exc:
        report_store_error(exc, node=node)
    except Exception:
        logger.exception(failure, node, extra={"node": node})


class NodeRegistry:
    """This node's record in the store: written on start, on every beat, and on shutdown."""

    def __init__(
        self,
        node: str,
        info: hardware.HardwareInfo,
        store: Store,
        queues: QueueReconciler,
        *,
        interval: float = HEARTBEAT_INTERVAL,
        ttl: float = HEARTBEAT_TTL,
        group: str = DEFAULT_GROUP,
    ) -> None:
        self.node = node
        self.store = store
        #: The app's fleet in the store (``app_group``): the node registers in it only.
        self.group = group
        self.queues = queues
        self.interval = interval
        self.ttl = ttl
        self.incarnation = uuid.uuid4().hex
        self.identity = _identity_of(info)
        self.state = "running"
        self._recorded_orphanable: frozenset[str] = frozenset()
        #: Tasks in flight in the last record the store accepted (ack_on_record may ack them).
        self.recorded_in_flight: frozenset[str] = frozenset()

    def record(self) -> dict[str, Any]:
        """The JSON-safe record this node writes to the registry on every heartbeat."""
        in_flight = in_flight_tasks()
        self._recorded_orphanable = orphanable(in_flight)
        return {
            "node": self.node,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state,
            "identity": self.identity,
            "accelerator": self.identity.get("accelerator"),
            "devices": [dict(d) for d in self.queues.devices],
            "queues": self.queues.consuming,
            "tainted": self.queues.tainted,
            "in_flight": sorted(in_flight),
            "in_flight_tasks": in_flight,
            "incarnation": self.incarnation,
            "heartbeat_interval": self.interval,
        }

    def register(self) -> None:
        """Write this node's record now (refreshing its TTL)."""
        record = self.record()
        self.store.node_register(self.node, record, ttl=self.ttl, group=self.group)
        self.recorded_in_flight = frozenset(record["in_flight"])

    def try_register(self) -> None:
        """``register()``, reporting an unreachable store instead of raising (fail-open)."""
        try:
            self.register()
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)

    def orphanable_started(self) -> bool:
        """True when an early-acked barrier task started since the record was last written."""
        return not orphanable_in_flight() <= self._recorded_orphanable

    def leave(self) -> None:
        """Remove the node from the registry."""
        try:
            self.store.node_remove(self.node, group=self.group)
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)
        logger.info("node %s left the fleet", self.node, extra={"node": self.node})


@dataclass(eq=False)
class Heartbeat:
    """The thread that beats every ``interval`` seconds: queues, record, and the reaper."""

    registry: NodeRegistry
    reaper: OrphanReaper
    #: Keeps the broker from restoring the messages of long tasks (None: nothing to keep).
    visibility: VisibilityKeeper | None = None
    in_flight_poll: float = IN_FLIGHT_POLL
    reap_every: int = REAP_EVERY
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def node(self) -> str:
        """The node's name."""
        return self.registry.node

    @property
    def interval(self) -> float:
        """Seconds between two beats (the registry's)."""
        return self.registry.interval

    def beat(self, *, register: bool = True) -> None:
        """One heartbeat, never raising: decide the queues, refresh the record.

        ``register=False`` only decides (at start, before the queues are applied,
        so the first record the fleet sees already lists them).
        """
        never_raise(functools.partial(self._beat, register), "heartbeat of %s failed", self.node)

    def _beat(self, register: bool) -> None:
        self.registry.queues.decide()
        if register:
            self.registry.register()

    def start(self) -> None:
        """Start the heartbeat thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"snakepit-heartbeat-{self.node}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the heartbeat thread (waits for it, a little)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, self.interval * 2))

    def _run(self) -> None:
        beats = 0
        next_beat = time.monotonic() + self.interval
        while not self._stop.wait(self._until_next_look(next_beat)):
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.interval
                self.beat()
                if self.visibility is not None:
                    never_raise(self.visibility.keep, "keeping messages of %s failed", self.node)
                beats += 1
                if self.reap_every > 0 and beats % self.reap_every == 0:
                    never_raise(self.reaper.reap, "orphan reaper of %s failed", self.node)
            elif self.registry.orphanable_started():
                never_raise(self.registry.register, "registering %s failed", self.node)

    def _until_next_look(self, next_beat: float) -> float:
        wait = max(0.0, next_beat - time.monotonic())
        return min(wait, self.in_flight_poll) if self.in_flight_poll > 0 else wait


def _identity_of(info: hardware.HardwareInfo) -> dict[str, Any]:
    """``hardware.identity()`` for ``info`` (the detected one is cached, so they agree)."""
    identity = hardware.identity()
    if identity.get("accelerator") != info.accelerator.value:  # pragma: no cover - defensive
        identity = {**identity, "accelerator": info.accelerator.value}
    return identity
