"""The worker bootstep: a node's presence in the fleet.

On start a worker detects its hardware (honouring ``snakepit_hardware`` /
``SNAKEPIT_HARDWARE``), refuses to start when ``snakepit_lock_file`` does not
match it, consumes the snakepit queues of its devices (``routing.queues_for``)
and registers itself in the store's node registry: identity, devices with
UUIDs, queues, pid, host, state and the ids of the tasks it is running.

A heartbeat thread refreshes that record every ``HEARTBEAT_INTERVAL`` seconds
(it expires after ``HEARTBEAT_TTL`` without one) and watches taints: while the
node is tainted it releases all its queues (unless no other live node could
take the work), while one of its devices is tainted it releases that device's
queues; they come back when the taint expires or is cleared. The thread only
talks to the store; queue changes are applied on the worker's own event loop
by a timer entry, since kombu consumers are not thread-safe. A thread (not the
loop's timer) keeps the heartbeat alive while a ``solo`` pool runs a long task.

Orphan reaper (DESIGN.md, crash path): a task that is not idempotent is
acknowledged before it ends, so when its whole node dies (SIGKILL of the
parent, OOM killer, power loss) no message comes back and no pool parent is
left to store ``WorkerCrashedError``. Each record therefore lists the tasks in
flight (``in_flight_tasks``: name, ``early_ack``, crash barrier on), written
again within ``IN_FLIGHT_POLL`` seconds when such a task starts (one write per
poll at most, from this thread: nothing on the task's path). Every
``REAP_EVERY`` heartbeats a live node claims dead node incarnations from the
store (``Store.node_reap``: exactly one node gets each) and ends their
early-acknowledged barrier tasks that have no final state FAILURE with
``WorkerCrashedError`` naming the dead node; idempotent tasks are left to
their message, which comes back by itself.

Acknowledged on record: so that no such task falls between the two, a
crash-barrier task that is not idempotent is acknowledged by the node (a
timer on the event loop, every ``ACK_INTERVAL`` seconds) only once a record
the store accepted lists it, or by Celery when it ends (``acks_late``). Killed
before, its message comes back and the crash-ledger gate ends it; after, the
reaper does. On a warm shutdown the node marks the messages it gives back
unstarted (``Store.ledger_release``), so they are not taken for crashes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery, bootsteps
from celery import signals as celery_signals
from celery.app.task import Context
from celery.backends.base import DisabledBackend
from celery.exceptions import WorkerShutdown
from celery.worker import state as worker_state

from snakepit_celery import hardware, lockfile
from snakepit_celery import signals as snakepit_signals
from snakepit_celery.celery.ledger_gate import final_state
from snakepit_celery.celery.perdevice import NODE_MARKER_ENV
from snakepit_celery.celery.routing import (
    FleetSnapshot,
    app_store,
    fleet_snapshot,
    node_devices,
    queues_for,
    taint_pools,
)
from snakepit_celery.celery.settings import settings_for
from snakepit_celery.celery.task import SnakepitTask, ack_on_record_tasks
from snakepit_celery.errors import (
    ConfigError,
    LockMismatchError,
    StoreUnavailableError,
    WorkerCrashedError,
)
from snakepit_celery.store import report_store_error
from snakepit_celery.store.base import Store

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TTL",
    "IN_FLIGHT_POLL",
    "REAP_EVERY",
    "REAP_GRACE",
    "NodeAgent",
    "SnakepitPreflightStep",
    "SnakepitWorkerStep",
    "check_lock_file",
    "desired_queues",
    "install_worker",
    "preflight",
    "worker_node",
]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a node.
HEARTBEAT_INTERVAL = 2.0
#: A node whose record was not refreshed for this long is dead (three missed heartbeats).
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL
#: Seconds between two checks, on the worker's event loop, for queue changes to apply.
APPLY_INTERVAL = 0.5
#: Seconds between two looks, on the event loop, for ``ack_on_record`` tasks the record lists.
ACK_INTERVAL = 0.1
#: Seconds between two looks (heartbeat thread) for newly started early-acked tasks;
#: the record is written again when one appeared (at most one write per look).
IN_FLIGHT_POLL = 0.1
#: The orphan reaper runs every this many heartbeats.
REAP_EVERY = 2
#: A node is reaped this many seconds after its record expired (a slow node may still beat).
REAP_GRACE = 3.0


def desired_queues(
    node: str,
    all_queues: Sequence[str],
    devices: Sequence[Mapping[str, Any]],
    snapshot: FleetSnapshot,
    *,
    extra_queues: Iterable[str] = (),
) -> tuple[list[str], bool]:
    """The queues ``node`` should consume given the fleet, and whether it is tainted but alone.

    A tainted node keeps nothing (``extra_queues``, its non-snakepit queues,
    included) unless no other live, untainted node exists; a tainted device
    loses its device queue, and its kind's queue when no untainted device of
    that kind is left. Pure: no I/O.
    """
    others = [
        record
        for record in snapshot.nodes
        if record.get("node") != node
        and record.get("state") != "stopping"
        and not snapshot.node_tainted(str(record.get("node")))
    ]
    everything = [*all_queues, *(q for q in extra_queues if q not in all_queues)]
    if snapshot.node_tainted(node):
        if others:
            return [], False
        return everything, True
    released: set[str] = set()
    usable_kinds: set[str] = set()
    for device in devices:
        prefix = f"snakepit.node.{node}."
        queue = f"{prefix}{device['kind']}.{device['index']}"
        if snapshot.device_tainted(node, device):
            released.add(queue)
        else:
            usable_kinds.add(str(device["kind"]))
    for device in devices:
        if device["kind"] not in usable_kinds:
            released.add(f"snakepit.{device['kind']}")
    return [q for q in everything if q not in released], False


@dataclass
class _QueueState:
    """What the heartbeat thread decided and what the event loop applied (guarded by a lock)."""

    wanted: list[str]
    consuming: list[str]
    alone_tainted: bool = False
    tainted: bool = False


class NodeAgent:
    """One worker node in the registry: its record, heartbeat, and the queues it should consume.

    Store I/O happens in ``beat()`` (heartbeat thread, or directly in tests);
    ``apply(consumer)`` makes the consumer's queues match, on the event loop.
    """

    def __init__(
        self,
        app: Celery,
        node: str,
        info: hardware.HardwareInfo,
        store: Store,
        *,
        pools: Sequence[str] = ("default",),
        extra_queues: Sequence[str] = (),
        interval: float = HEARTBEAT_INTERVAL,
        ttl: float = HEARTBEAT_TTL,
        in_flight_poll: float = IN_FLIGHT_POLL,
        reap_every: int = REAP_EVERY,
        reap_grace: float = REAP_GRACE,
    ) -> None:
        self.app = app
        self.node = node
        self.info = info
        self.store = store
        self.pools = tuple(pools)
        self.interval = interval
        self.ttl = ttl
        self.in_flight_poll = in_flight_poll
        self.reap_every = reap_every
        self.reap_grace = reap_grace
        self.incarnation = uuid.uuid4().hex
        self.devices = node_devices(info)
        self.queues = queues_for(node, info)
        self.identity = _identity_of(info)
        self.state = "running"
        self.extra_queues = [q for q in extra_queues if q not in self.queues]
        self._lock = threading.Lock()
        self._queues = _QueueState(wanted=[*self.queues, *self.extra_queues], consuming=[])
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_alone_warning = False
        self._released = False
        self._recorded_orphanable: frozenset[str] = frozenset()
        #: Tasks in flight in the last record the store accepted (ack_on_record may ack them).
        self._recorded_in_flight: frozenset[str] = frozenset()
        self._events: list[dict[str, Any]] = []

    # -- the record --------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The JSON-safe record this node writes to the registry on every heartbeat."""
        with self._lock:
            consuming = list(self._queues.consuming)
            tainted = self._queues.tainted
        in_flight = _in_flight_tasks()
        self._recorded_orphanable = _orphanable(in_flight)
        return {
            "node": self.node,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "state": self.state,
            "identity": self.identity,
            "accelerator": self.identity.get("accelerator"),
            "devices": [dict(d) for d in self.devices],
            "queues": consuming,
            "tainted": tainted,
            "in_flight": sorted(in_flight),
            "in_flight_tasks": in_flight,
            "incarnation": self.incarnation,
            "heartbeat_interval": self.interval,
        }

    # -- store side (heartbeat thread) ------------------------------------------------
    def register(self) -> None:
        """Write this node's record now (refreshing its TTL)."""
        record = self.record()
        self.store.node_register(self.node, record, ttl=self.ttl)
        self._recorded_in_flight = frozenset(record["in_flight"])

    def ack_recorded(self) -> int:
        """Acknowledge the ``ack_on_record`` tasks the store's record lists (event loop only).

        From here on the orphan reaper gives such a task a final state if this
        node dies; before, its message would come back. Returns how many.
        """
        recorded = self._recorded_in_flight
        if not recorded:
            return 0
        acked = 0
        for request in _active_requests():
            if (
                getattr(request.task, "ack_on_record", False)
                and not request.acknowledged
                and str(request.id) in recorded
            ):
                request.acknowledge()
                acked += 1
        return acked

    def release_unstarted(self, consumer: Any, reserved: Sequence[Any] = ()) -> list[str]:
        """Mark the crash-barrier messages this node gives back unstarted; returns their ids.

        Called on warm shutdown once the pool has finished (nothing starts any
        more) and before the broker connection closes, when kombu restores
        them: each comes back ``redelivered``, and the mark tells the
        crash-ledger gate that this delivery was not lost with a crash.
        ``reserved``: Celery's reserved requests as the shutdown began.
        """
        released = []
        for task_id, task in _unstarted_snakepit_messages(consumer, reserved):
            try:
                task.snakepit_runtime.barrier.ledger_release(task_id)
            except StoreUnavailableError as exc:
                report_store_error(exc, node=self.node, task_id=task_id)
                continue
            released.append(task_id)
        if released:
            logger.info(
                "node %s gives back %d unstarted task(s): %s",
                self.node,
                len(released),
                ", ".join(released),
                extra={"node": self.node, "task_ids": released},
            )
        return released

    def beat(self, *, register: bool = True) -> None:
        """One heartbeat: read the fleet, decide the queues, refresh the record.

        ``register=False`` only decides (at start, before the queues are applied,
        so the first record the fleet sees already lists them).
        """
        snapshot = fleet_snapshot(self.store, self.pools)
        wanted, alone = desired_queues(
            self.node, self.queues, self.devices, snapshot, extra_queues=self.extra_queues
        )
        with self._lock:
            self._queues.wanted = wanted
            self._queues.tainted = snapshot.node_tainted(self.node)
            self._queues.alone_tainted = alone
        if alone and not self._last_alone_warning:
            logger.error(
                "node %s is tainted but it is the only live node: it keeps consuming its queues",
                self.node,
                extra={"node": self.node},
            )
        self._last_alone_warning = alone
        if register:
            self.register()

    def safe_beat(self, *, register: bool = True) -> None:
        """``beat()`` that never raises: store errors are reported (fail-open) or logged."""
        try:
            self.beat(register=register)
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)
        except Exception:
            logger.exception("heartbeat of %s failed", self.node, extra={"node": self.node})

    def start_heartbeat(self) -> None:
        """Start the heartbeat thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"snakepit-heartbeat-{self.node}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        beats = 0
        next_beat = time.monotonic() + self.interval
        while not self._stop.wait(self._until_next_look(next_beat)):
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.interval
                self.safe_beat()
                beats += 1
                if self.reap_every > 0 and beats % self.reap_every == 0:
                    self.safe_reap()
            elif self._orphanable_started():
                self.safe_register()

    def _until_next_look(self, next_beat: float) -> float:
        wait = max(0.0, next_beat - time.monotonic())
        return min(wait, self.in_flight_poll) if self.in_flight_poll > 0 else wait

    def _orphanable_started(self) -> bool:
        """True when an early-acked barrier task started since the record was last written."""
        return not _orphanable_in_flight() <= self._recorded_orphanable

    def safe_register(self) -> None:
        """``register()`` that never raises (store errors reported, fail-open)."""
        try:
            self.register()
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)
        except Exception:
            logger.exception("registering %s failed", self.node, extra={"node": self.node})

    # -- orphan reaper (heartbeat thread) ---------------------------------------------
    def reap(self) -> list[str]:
        """Claim dead nodes and end their orphaned tasks FAILURE; returns those tasks' ids.

        An orphan is a task the dead node's last record lists in flight that
        was acknowledged early (not ``acks_late``) under an enabled crash
        barrier, and has no final state in the result backend.
        """
        failed: list[str] = []
        for record in self.store.node_reap(grace=self.reap_grace):
            failed.extend(self._reap_node(record))
        return failed

    def safe_reap(self) -> None:
        """``reap()`` that never raises: store errors are reported (fail-open) or logged."""
        try:
            self.reap()
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)
        except Exception:
            logger.exception("orphan reaper of %s failed", self.node, extra={"node": self.node})

    def _reap_node(self, record: Mapping[str, Any]) -> list[str]:
        dead = str(record.get("node"))
        age = float(record.get("heartbeat_age") or 0.0)
        tasks = record.get("in_flight_tasks")
        orphans = sorted(_orphanable(tasks if isinstance(tasks, Mapping) else {}))
        logger.warning(
            "node %s is dead (no heartbeat for %.1fs); reaped by %s: %d early-acked task(s) "
            "in flight%s",
            dead,
            age,
            self.node,
            len(orphans),
            f" ({', '.join(orphans)})" if orphans else "",
            extra={"node": self.node, "dead_node": dead, "task_ids": orphans},
        )
        failed = []
        for task_id in orphans:
            entry = (tasks or {})[task_id]
            name = str(entry.get("name") or "")
            try:
                if self._fail_orphan(dead, task_id, name, age, entry.get("context")):
                    failed.append(task_id)
            except StoreUnavailableError as exc:
                report_store_error(exc, node=self.node, task_id=task_id)
            except Exception:
                logger.exception(
                    "could not give task %s of dead node %s a final state",
                    task_id,
                    dead,
                    extra={"node": self.node, "dead_node": dead, "task_id": task_id},
                )
        return failed

    def _fail_orphan(
        self, dead: str, task_id: str, name: str, age: float, context: Any = None
    ) -> bool:
        """Store FAILURE (``WorkerCrashedError``) for ``task_id`` unless it has a final state.

        ``context``: the task's errbacks, chain and chord/group membership as
        its record kept them (``_failure_context``): they are honoured as the
        pool parent would have (errbacks called, chord counted, chain failed).
        """
        backend = self.app.backend
        if isinstance(backend, DisabledBackend):  # no result backend: no state to give
            return False
        state = final_state(self.app, task_id)
        if state is not None:
            logger.info(
                "task %s of dead node %s already ended %s",
                task_id,
                dead,
                state,
                extra={"node": self.node, "dead_node": dead, "task_id": task_id},
            )
            return False
        error = WorkerCrashedError(
            "unknown",
            None,
            None,
            dead,
            None,
            message=(
                f"node {dead} was lost while running task {name}[{task_id}] (no heartbeat for "
                f"{age:.0f}s); the task is not idempotent, so it is not run again"
            ),
        )
        task = self.app.tasks.get(name)
        runtime = task.snakepit_runtime if isinstance(task, SnakepitTask) else None
        if runtime is not None:
            runtime.barrier.ledger_crash(task_id)
        backend.mark_as_failure(task_id, error, request=_failed_request(task_id, name, context))
        if runtime is not None:
            runtime.health.record_crash(dead, reason="unknown", task_id=task_id)
        with self._lock:
            self._events.append(
                {"uuid": task_id, "exception": repr(error), "traceback": "", "dead_node": dead}
            )
        logger.warning(
            "task %s[%s] was running on dead node %s: marked FAILURE (WorkerCrashedError)",
            name,
            task_id,
            dead,
            extra={"node": self.node, "dead_node": dead, "task_id": task_id},
        )
        return True

    def send_events(self, dispatcher: Any) -> None:
        """Send ``task-failed`` for the orphans reaped since the last call (event loop only)."""
        with self._lock:
            events, self._events = self._events, []
        if not events or dispatcher is None or not getattr(dispatcher, "enabled", False):
            return
        for fields in events:
            dispatcher.send("task-failed", **fields)

    def close(self) -> None:
        """Stop the heartbeat and remove the node from the registry."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, self.interval * 2))
        try:
            self.store.node_remove(self.node)
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)
        logger.info("node %s left the fleet", self.node, extra={"node": self.node})

    # -- consumer side (event loop) ---------------------------------------------------
    def apply(self, consumer: Any) -> None:
        """Make ``consumer`` consume exactly the wanted queues (cancel and re-add as needed)."""
        with self._lock:
            wanted = list(self._queues.wanted)
            consuming = list(self._queues.consuming)
        if wanted == consuming:
            return
        for queue in consuming:
            if queue not in wanted:
                consumer.cancel_task_queue(queue)
        for queue in wanted:
            if queue not in consuming:
                _add_task_queue(consumer, queue)
        released = [q for q in (*self.queues, *self.extra_queues) if q not in wanted]
        if released:
            logger.warning(
                "node %s released queues %s (tainted)",
                self.node,
                ", ".join(released),
                extra={"node": self.node, "released": released},
            )
        elif self._released:
            logger.info("node %s consumes all its queues again", self.node)
        self._released = bool(released)
        with self._lock:
            self._queues.consuming = wanted


def _identity_of(info: hardware.HardwareInfo) -> dict[str, Any]:
    """``hardware.identity()`` for ``info`` (the detected one is cached, so they agree)."""
    identity = hardware.identity()
    if identity.get("accelerator") != info.accelerator.value:  # pragma: no cover - defensive
        identity = {**identity, "accelerator": info.accelerator.value}
    return identity


def _active_requests() -> tuple[Any, ...]:
    """The requests this worker is running.

    Read from another thread than the event loop's, so a race (the set changed
    size while copied) is retried.
    """
    for _ in range(5):
        try:
            return tuple(worker_state.active_requests)
        except RuntimeError:  # set changed size during iteration
            continue
    return ()


def _in_flight_tasks() -> dict[str, dict[str, Any]]:
    """Tasks this worker is running: id -> name, ``early_ack``, crash barrier (and context)."""
    return {str(request.id): _in_flight_entry(request) for request in _active_requests()}


def _orphanable_in_flight() -> frozenset[str]:
    """Ids of the running tasks a death of this node would orphan (cheap: no entries built)."""
    return frozenset(
        str(request.id)
        for request in _active_requests()
        if _acked_early(getattr(request, "task", None))
        and _barrier_enabled(getattr(request, "task", None))
    )


def _in_flight_entry(request: Any) -> dict[str, Any]:
    task = getattr(request, "task", None)
    entry: dict[str, Any] = {
        "name": str(getattr(request, "name", None) or getattr(task, "name", "")),
        # acknowledged before it ends: its message does not come back if the node dies
        "early_ack": _acked_early(task),
        "crash_barrier": _barrier_enabled(task),
    }
    if entry["early_ack"] and entry["crash_barrier"]:
        context = _failure_context(request)
        if context:
            entry["context"] = context
    return entry


#: Request fields the reaper needs to fail a task as its pool parent would.
_CONTEXT_FIELDS = ("errbacks", "chain", "chord", "group", "group_index", "root_id", "parent_id")


def _failure_context(request: Any) -> dict[str, Any] | None:
    """Errbacks, chain and chord/group membership of a request; None when it has none.

    Kept in the node's record (only for tasks that have any) so the orphan
    reaper can call the errbacks, count the chord part and fail the chain.
    """
    try:
        embed = request._payload[2] or {}
        fields = {
            "errbacks": embed.get("errbacks"),
            "chain": embed.get("chain"),
            "chord": embed.get("chord"),
            "group": request.group,
            "group_index": request.group_index,
        }
    except Exception:  # a request without Celery's message layout: nothing to honour
        return None
    if not any(value for key, value in fields.items() if key != "group_index"):
        return None
    fields["root_id"] = getattr(request, "root_id", None)
    fields["parent_id"] = getattr(request, "parent_id", None)
    return {key: value for key, value in fields.items() if value is not None}


def _failed_request(task_id: str, name: str, context: Any) -> Context | None:
    """The request ``mark_as_failure`` honours errbacks and chords by (None: nothing to honour)."""
    if not isinstance(context, Mapping):
        return None
    fields = {key: context[key] for key in _CONTEXT_FIELDS if key in context}
    return Context(id=task_id, task=name, delivery_info={"is_eager": False}, **fields)


def _acked_early(task: Any) -> bool:
    """True when Celery (no ``acks_late``) or the node (``ack_on_record``) acks before the end."""
    return not getattr(task, "acks_late", False) or bool(getattr(task, "ack_on_record", False))


def _barrier_enabled(task: Any) -> bool:
    """True for a ``SnakepitTask`` whose crash barrier is enabled."""
    if not isinstance(task, SnakepitTask):
        return False
    try:
        return task.snakepit_runtime.barrier.enabled
    except Exception:  # a task whose options cannot be resolved here: not ours to reap
        return False


def _orphanable(tasks: Mapping[str, Any]) -> frozenset[str]:
    """Ids of the tasks a dead node would orphan: acknowledged early, crash barrier on."""
    return frozenset(
        task_id
        for task_id, info in tasks.items()
        if isinstance(info, Mapping) and info.get("crash_barrier") and info.get("early_ack")
    )


def _unstarted_snakepit_messages(
    consumer: Any, reserved: Sequence[Any]
) -> list[tuple[str, SnakepitTask]]:
    """(task id, task) of the crash-barrier messages this node holds unacknowledged, unstarted.

    Redis and the other kombu virtual transports expose every unacknowledged
    delivery of the channel (tasks waiting for their ETA included); other
    transports (AMQP) fall back on ``reserved``, Celery's reserved requests
    as the shutdown began. Requests the pool accepted are left out: they started.
    """
    started = {str(request.id) for request in _active_requests()}
    unstarted = []
    for task_id, name in _held_messages(consumer, reserved):
        task = consumer.app.tasks.get(name)
        if task_id in started or not isinstance(task, SnakepitTask):
            continue
        if _barrier_enabled(task):
            unstarted.append((task_id, task))
    return unstarted


def _held_messages(consumer: Any, reserved: Sequence[Any]) -> list[tuple[str, str]]:
    """(task id, task name) of every message the consumer holds unacknowledged.

    ``reserved``: Celery's reserved requests as the shutdown began (the
    consumer clears its own list when it closes); used where the channel does
    not expose its deliveries, less those the pool accepted or acknowledged.
    """
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    qos = getattr(channel, "qos", None)
    delivered = getattr(qos, "_delivered", None)
    if not isinstance(delivered, Mapping):
        return [
            (str(request.id), str(request.name))
            for request in reserved
            if request.time_start is None and not request.acknowledged
        ]
    acked = set(getattr(qos, "_dirty", ()))  # acknowledged, not yet dropped from _delivered
    held = []
    for tag, message in tuple(delivered.items()):
        headers = getattr(message, "headers", None) or {}
        if tag not in acked and headers.get("id") and headers.get("task"):
            held.append((str(headers["id"]), str(headers["task"])))
    return held


def _add_task_queue(consumer: Any, queue: str) -> None:
    """Consume ``queue`` too; before the event loop runs, only add it to the task consumer.

    Celery's ``add_task_queue`` starts consuming at once. Before the loop has
    set the consumer's ``on_message`` an AMQP broker would deliver waiting
    messages to a consumer without callbacks (kombu raises
    ``NotImplementedError``); the loop starts consuming every added queue.
    """
    task_consumer = consumer.task_consumer
    if task_consumer.on_message is not None or task_consumer.callbacks:
        consumer.add_task_queue(queue)
        return
    queues = consumer.app.amqp.queues
    if queue in queues:
        declared = queues.select_add(queues[queue])
    else:
        declared = queues.select_add(queue, exchange=queue, exchange_type="direct")
    if not task_consumer.consuming_from(queue):
        task_consumer.add_queue(declared)
        logger.info("node will consume from %s", queue)


def _consumer_queue_names(consumer: Any) -> list[str]:
    queues = consumer.app.amqp.queues
    return [str(name) for name in queues.consume_from] if queues.consume_from else []


def check_lock_file(path: str, node: str) -> None:
    """Refuse to start when the lock file does not match this host.

    Logs one critical line with the reason and raises ``WorkerShutdown(1)``,
    which stops the worker with exit code 1.
    """
    try:
        lockfile.validate(path)
    except (LockMismatchError, ConfigError) as exc:
        reason = getattr(exc, "reason", "unusable_lock_file")
        logger.critical(
            "snakepit: node %s refuses to start: %s (lock file %s)",
            node,
            exc,
            path,
            extra={"node": node, "lock_file": path, "reason": reason},
        )
        raise WorkerShutdown(1) from exc


def preflight(app: Celery, node: str) -> hardware.HardwareInfo:
    """Detect this host's hardware and check the lock file; refuse to start on a problem.

    A broken hardware override or a lock-file mismatch logs one critical line
    with the reason and raises ``WorkerShutdown(1)`` (the worker exits 1).
    """
    settings = settings_for(app)
    own_override = os.environ.get(NODE_MARKER_ENV) and os.environ.get("SNAKEPIT_HARDWARE")
    try:
        if own_override:  # a --per-device node: its own file wins over the app's setting
            hardware.configure(own_override)
        elif settings.hardware:
            hardware.configure(settings.hardware)
        info = hardware.detect()
    except ConfigError as exc:
        logger.critical("snakepit: node %s refuses to start: %s", node, exc, extra={"node": node})
        raise WorkerShutdown(1) from exc
    if settings.lock_file:
        check_lock_file(str(settings.lock_file), node)
    return info


class SnakepitPreflightStep(bootsteps.Step):  # type: ignore[misc]
    """Worker bootstep: hardware detection and lock-file check before the pool or broker start.

    Runs while the worker is being built, so a host that does not match its
    lock file never forks pool processes nor connects to the broker.
    """

    name = "snakepit.preflight"
    label = "snakepit preflight"

    def __init__(self, w: Any, **kwargs: Any) -> None:
        super().__init__(w, **kwargs)
        w.snakepit_hardware = preflight(w.app, str(w.hostname))
        # ``-E`` sets only the worker's own flag; make it visible to the pool
        # children, which send the per-run ``task-snakepit-run`` event only then.
        w.app.conf.worker_send_task_events = bool(w.task_events)
        acked_on_record = ack_on_record_tasks(w.app)
        if acked_on_record:
            logger.info(
                "snakepit: acknowledged on record (crash barrier, not idempotent): %s",
                ", ".join(acked_on_record),
            )


class SnakepitWorkerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: hardware, lock file, queues, node registry, heartbeat and taint watch.

    Starts once the task consumer exists (after ``Tasks``) and before the
    event loop. A lock-file mismatch or a broken hardware override stops the
    worker with exit code 1 and a one-line reason in its log.
    """

    name = "snakepit.worker"
    label = "snakepit"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.agent: NodeAgent | None = None
        self.tref: Any = None
        self.ack_tref: Any = None
        #: Celery's reserved requests when the shutdown began (``worker_shutting_down``).
        self.reserved_at_shutdown: tuple[Any, ...] = ()
        c.snakepit = None
        _note_worker_node(c.app, c.hostname)

    def _create_agent(self, c: Any) -> NodeAgent:
        app = c.app
        node = str(c.hostname)
        info = getattr(c.controller, "snakepit_hardware", None) or preflight(app, node)
        agent = NodeAgent(
            app,
            node,
            info,
            app_store(app),
            pools=taint_pools(app),
            extra_queues=_consumer_queue_names(c),
        )
        logger.info(
            "node %s: %s, queues %s",
            node,
            info.accelerator.value,
            ", ".join(agent.queues),
            extra={"node": node, "queues": agent.queues},
        )
        return agent

    def start(self, c: Any) -> None:
        """Create the node (first start), consume its queues, register it, start the heartbeat."""
        if self.agent is None:
            self.agent = self._create_agent(c)
            _connect_shutdown(c, self)
            _connect_taint_watch(c, self)
        agent = self.agent
        c.snakepit = agent
        agent.safe_beat(register=False)
        with agent._lock:
            agent._queues.consuming = _consumer_queue_names(c)
        agent.apply(c)
        try:
            agent.register()
        except StoreUnavailableError as exc:
            report_store_error(exc, node=agent.node)
        agent.start_heartbeat()
        self.tref = c.timer.call_repeatedly(APPLY_INTERVAL, self._apply, (c,), priority=10)
        self.ack_tref = c.timer.call_repeatedly(ACK_INTERVAL, self._ack, (), priority=10)

    def _ack(self) -> None:
        agent = self.agent
        if agent is None:
            return
        try:
            agent.ack_recorded()
        except Exception:
            logger.exception("snakepit: could not acknowledge recorded tasks of %s", agent.node)

    def _apply(self, c: Any) -> None:
        agent = self.agent
        if agent is None or c.task_consumer is None:
            return
        try:
            agent.apply(c)
        except Exception:
            logger.exception("snakepit: could not change the queues of %s", agent.node)
        try:
            agent.send_events(getattr(c, "event_dispatcher", None))
        except Exception:
            logger.exception("snakepit: could not send the reaper's events from %s", agent.node)

    def stop(self, c: Any) -> None:
        """Stop applying queue changes; on shutdown, mark the node ``stopping`` (it still beats)."""
        for tref in (self.tref, self.ack_tref):
            if tref is not None:
                tref.cancel()
        self.tref = self.ack_tref = None
        agent = self.agent
        if agent is not None and c.blueprint.state != bootsteps.RUN:
            agent.state = "stopping"
            try:
                agent.register()
            except StoreUnavailableError as exc:
                report_store_error(exc, node=agent.node)

    def shutdown(self, c: Any) -> None:
        """Consumer shutdown: stop, and on a warm one mark the messages given back unstarted.

        The pool has finished by now and the broker connection is still open
        (kombu restores the unacknowledged messages when it closes). A cold
        shutdown marks nothing: the tasks it killed did start. The node leaves
        the registry on ``worker_shutdown``.
        """
        self.stop(c)
        agent = self.agent
        if agent is not None and not worker_state.should_terminate:
            try:
                agent.release_unstarted(c, self.reserved_at_shutdown)
            except Exception:
                logger.exception("snakepit: could not mark the unstarted tasks of %s", agent.node)

    def leave(self) -> None:
        """Remove the node from the fleet (after the pool finished its tasks)."""
        agent, self.agent = self.agent, None
        if agent is not None:
            agent.close()


def _connect_shutdown(c: Any, step: SnakepitWorkerStep) -> None:
    controller = getattr(c, "controller", None)

    def on_worker_shutdown(sender: Any = None, **_: Any) -> None:
        if controller is None or sender is controller:
            step.leave()

    def on_shutting_down(sender: Any = None, **_: Any) -> None:
        if sender == c.hostname:
            step.reserved_at_shutdown = tuple(worker_state.reserved_requests)

    celery_signals.worker_shutdown.connect(on_worker_shutdown, weak=False)
    celery_signals.worker_shutting_down.connect(on_shutting_down, weak=False)


def _connect_taint_watch(c: Any, step: SnakepitWorkerStep) -> None:
    """React at once when this node's own pool parent taints it (or one of its devices).

    A crash is handled in the worker's main process, which taints the node and
    then re-publishes the task: releasing the queues right here, before the
    re-publish, is what sends the re-run to another node instead of back to
    this one. The periodic heartbeat would only notice seconds later.
    """
    main_pid = os.getpid()

    def on_taint(sender: Any = None, **fields: Any) -> None:
        agent = step.agent
        if agent is None or os.getpid() != main_pid:
            return
        if fields.get("worker_id", fields.get("node")) != agent.node:
            return
        agent.safe_beat()
        step._apply(c)

    snakepit_signals.worker_tainted.connect(on_taint, weak=False)
    snakepit_signals.device_tainted.connect(on_taint, weak=False)


# -- the worker's node name, for the event bridge --------------------------------------

_worker_nodes: dict[int, str] = {}


def _note_worker_node(app: Celery, node: str) -> None:
    _worker_nodes[id(app)] = node


def worker_node(app: Celery) -> str | None:
    """The node name of the worker running ``app`` in this process (and its pool children)."""
    return _worker_nodes.get(id(app))


def install_worker(app: Celery) -> None:
    """Add the snakepit bootsteps to ``app``'s worker (preflight) and consumer (idempotent)."""
    app.steps["worker"].add(SnakepitPreflightStep)
    app.steps["consumer"].add(SnakepitWorkerStep)
