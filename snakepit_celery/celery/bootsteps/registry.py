"""The node registry record and the heartbeat thread that keeps it alive.

On start a worker registers itself in the store's node registry: identity,
devices with UUIDs, queues, pid, host, state, the tasks it is running and the
messages it holds unacknowledged (delivery tags). A heartbeat thread refreshes
that record every ``HEARTBEAT_INTERVAL`` seconds (it expires after
``HEARTBEAT_TTL`` without one), re-decides the node's queues on each beat,
keeps the messages of long tasks from being restored by the broker
(``VisibilityKeeper``), runs the orphan reaper every ``REAP_EVERY`` beats,
and writes the record again within ``IN_FLIGHT_POLL`` seconds when a
crash-barrier task starts or a new message arrives (one
write per poll at most, from this thread: nothing on the task's path). A
thread, not the event loop's timer, so the heartbeat stays alive while a
``solo`` pool runs a long task.

A dead node's tasks move on ``HEARTBEAT_TTL + REAP_GRACE`` seconds after its
last beat, plus at most one reaper period (3 s in all with the defaults).
False positives are kept out twice: a node is declared dead only after four
missed beats and half a second of grace, and a node that was declared dead
after all (paused by GC, a slow disk, a frozen VM) is fenced: its incarnation
was marked reaped, so its next heartbeat is refused and the node stops at once
(``on_reaped``) instead of running the tasks that moved on. A node reaps only
after it has itself beaten without a gap for ``HEARTBEAT_TTL + REAP_GRACE``,
so the fleet does not reap itself when the store comes back from an outage.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snakepit_celery import hardware
from snakepit_celery.celery.bootsteps.in_flight import (
    HeldDelivery,
    barrier_in_flight,
    in_flight_tasks,
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
HEARTBEAT_INTERVAL = 0.5
#: A node whose record was not refreshed for this long is dead (four missed heartbeats).
HEARTBEAT_TTL = 4 * HEARTBEAT_INTERVAL
#: Seconds between two looks (heartbeat thread) for newly started early-acked tasks and
#: newly delivered messages; the record is written again when one appeared (at most one
#: write per look).
IN_FLIGHT_POLL = 0.1
#: The orphan reaper runs every this many heartbeats.
REAP_EVERY = 1


def _nothing_held() -> Sequence[HeldDelivery] | None:
    return None


def _no_children() -> Sequence[int]:
    return ()


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
        held: Callable[[], Sequence[HeldDelivery] | None] = _nothing_held,
        children: Callable[[], Sequence[int]] = _no_children,
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
        self._recorded_barrier: frozenset[str] = frozenset()
        #: The messages this node holds unacknowledged (None: the broker does not say).
        self.held = held
        #: The pids of the pool's children (none for a solo or threads pool).
        self.children = children
        self._recorded_tags: frozenset[str] = frozenset()
        #: Tasks in flight in the last record the store accepted (ack_on_record may ack them).
        self.recorded_in_flight: frozenset[str] = frozenset()
        #: GPU UUID -> free/total memory and health (set by the GPU health watch).
        self.gpu_status: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None

    def record(self) -> dict[str, Any]:
        """The JSON-safe record this node writes to the registry on every heartbeat."""
        in_flight = in_flight_tasks()
        self._recorded_barrier = frozenset(
            task_id for task_id, entry in in_flight.items() if entry.get("crash_barrier")
        )
        held = list(self.held() or ())
        self._recorded_tags = frozenset(delivery.tag for delivery in held)
        return {
            "node": self.node,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state,
            "identity": self.identity,
            "accelerator": self.identity.get("accelerator"),
            "devices": self.devices(),
            "queues": self.queues.consuming,
            "tainted": self.queues.tainted,
            "in_flight": sorted(in_flight),
            "in_flight_tasks": in_flight,
            "incarnation": self.incarnation,
            "heartbeat_interval": self.interval,
            "held": [list(delivery) for delivery in held],
            # The processes that run its tasks, as a crash ledger names them (``<node>/<pid>``):
            # a reaper tells this incarnation's runs from those of a restart under its name.
            "worker_pids": sorted({os.getpid(), *self.children()}),
        }

    def devices(self) -> list[dict[str, Any]]:
        """The node's devices, each GPU with its free/total memory (MB) and health when watched."""
        status = self.gpu_status() if self.gpu_status is not None else {}
        return [{**d, **status.get(str(d.get("uuid")), {})} for d in self.queues.devices]

    def register(self) -> bool:
        """Write this node's record now (refreshing its TTL).

        False, writing nothing, when this incarnation was reaped: declared
        dead, its tasks moved on (the node must stop, see ``Heartbeat``).
        """
        record = self.record()
        if not self.store.node_register(self.node, record, ttl=self.ttl, group=self.group):
            return False
        self.recorded_in_flight = frozenset(record["in_flight"])
        return True

    def try_register(self) -> None:
        """``register()``, reporting an unreachable store instead of raising (fail-open)."""
        try:
            self.register()
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)

    def barrier_task_started(self) -> bool:
        """True when a crash-barrier task started since the record was last written."""
        return not barrier_in_flight() <= self._recorded_barrier

    def new_messages_held(self) -> bool:
        """True when a message arrived that the last record does not list."""
        held = self.held() or ()
        return not {delivery.tag for delivery in held} <= self._recorded_tags

    def leave(self) -> None:
        """Remove the node from the registry."""
        try:
            self.store.node_remove(self.node, group=self.group)
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)
        logger.info("node %s left the fleet", self.node, extra={"node": self.node})


@dataclass(eq=False)
class Heartbeat:
    """The thread that beats every ``interval`` seconds: queues, record, and the reaper.

    ``on_reaped`` is called (from this thread) when the store refuses the
    record because this incarnation was reaped: the node must stop.
    """

    registry: NodeRegistry
    reaper: OrphanReaper
    #: Keeps the broker from restoring the messages of long tasks (None: nothing to keep).
    visibility: VisibilityKeeper | None = None
    in_flight_poll: float = IN_FLIGHT_POLL
    reap_every: int = REAP_EVERY
    on_reaped: Callable[[], object] | None = None
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)
    #: Since when (monotonic) every write of the record succeeded; None after a failure.
    _beating_since: float | None = field(default=None, init=False)

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
            self._write()

    def _write(self) -> None:
        """Write the record; note whether beats go through; stop the node if it was reaped."""
        try:
            written = self.registry.register()
        except BaseException:
            self._beating_since = None
            raise
        if not written:
            self._beating_since = None
            logger.critical(
                "node %s was declared dead (no heartbeat for %.1fs) and its tasks moved on: "
                "it stops",
                self.node,
                self.registry.ttl,
                extra={"node": self.node},
            )
            if self.on_reaped is not None:
                self.on_reaped()
            return
        if self._beating_since is None:
            self._beating_since = time.monotonic()

    def may_reap(self) -> bool:
        """True once this node's own beats went through without a gap for a TTL plus the grace.

        A node that could not beat (store outage, a pause) lets the others
        write their records first: their records may have expired alike.
        """
        since = self._beating_since
        wait = self.registry.ttl + self.reaper.grace
        return since is not None and time.monotonic() - since >= wait

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
                if self.reap_every > 0 and beats % self.reap_every == 0 and self.may_reap():
                    never_raise(self.reaper.reap, "orphan reaper of %s failed", self.node)
            elif self.registry.barrier_task_started() or self.registry.new_messages_held():
                never_raise(self._write, "registering %s failed", self.node)

    def _until_next_look(self, next_beat: float) -> float:
        wait = max(0.0, next_beat - time.monotonic())
        return min(wait, self.in_flight_poll) if self.in_flight_poll > 0 else wait


def _identity_of(info: hardware.HardwareInfo) -> dict[str, Any]:
    """``hardware.identity()`` for ``info`` (the detected one is cached, so they agree)."""
    identity = hardware.identity()
    if identity.get("accelerator") != info.accelerator.value:  # pragma: no cover - defensive
        identity = {**identity, "accelerator": info.accelerator.value}
    return identity
