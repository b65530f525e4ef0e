"""What this worker node is running and holding, as its registry record lists it.

Each record lists the tasks in flight (``in_flight_tasks``: name,
``early_ack``, crash barrier on, and for tasks that have any, the errbacks,
chain and chord membership the orphan reaper needs to fail them as their pool
parent would), and the messages the node holds unacknowledged
(``held_deliveries``: delivery tag, task id and name), which the reaper moves
back to their queues should the node die. These helpers read Celery's worker
state and kombu's channel; the heartbeat thread calls them, so they never
assume the event loop's thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from time import monotonic
from typing import Any, NamedTuple

from celery.worker import state as worker_state

from snakepit_celery.celery.task import SnakepitTask

__all__ = [
    "CONTEXT_FIELDS",
    "HeldDelivery",
    "acked_early",
    "active_requests",
    "barrier_enabled",
    "barrier_in_flight",
    "channel_deliveries",
    "held_ages",
    "held_deliveries",
    "in_flight_tasks",
    "orphanable",
]

#: Request fields the reaper needs to fail a task as its pool parent would.
CONTEXT_FIELDS = ("errbacks", "chain", "chord", "group", "group_index", "root_id", "parent_id")


class HeldDelivery(NamedTuple):
    """A message the node holds unacknowledged: kombu's delivery tag, the task's id and name."""

    tag: str
    task_id: str
    name: str


def _task_qos(consumer: Any) -> Any:
    """The QoS of the consumer's task channel (None when it has none)."""
    channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
    return getattr(channel, "qos", None)


def channel_deliveries(consumer: Any) -> Mapping[Any, Any] | None:
    """kombu's delivered, unacknowledged messages of the task channel by tag (``qos._delivered``).

    None for a transport that does not keep them (AMQP).
    """
    delivered = getattr(_task_qos(consumer), "_delivered", None)
    return delivered if isinstance(delivered, Mapping) else None


def held_deliveries(consumer: Any) -> list[HeldDelivery] | None:
    """Every message the consumer's channel holds unacknowledged (reserved, ETA, running).

    Redis and kombu's other virtual transports expose their deliveries
    (``qos._delivered``); None for a transport that does not (AMQP, where the
    broker itself redelivers on connection loss). Acknowledged deliveries not
    yet dropped from ``_delivered`` are left out.
    """
    qos = _task_qos(consumer)
    delivered = channel_deliveries(consumer)
    if delivered is None:
        return None
    for _ in range(5):
        try:
            items = tuple(delivered.items())
            acked = set(getattr(qos, "_dirty", ()))
            break
        except RuntimeError:  # changed size while copied (event loop thread)
            continue
    else:
        return []
    held = []
    for tag, message in items:
        headers = getattr(message, "headers", None) or {}
        if tag not in acked and headers.get("id") and headers.get("task"):
            held.append(HeldDelivery(str(tag), str(headers["id"]), str(headers["task"])))
    return held


def held_ages(consumer: Any) -> Mapping[str, float]:
    """Seconds since the consumer's channel last stamped the delivery time of each message
    it holds, by tag: it took it, or kept it visible (snakepit's Redis transport; {} else)."""
    stamped = getattr(_task_qos(consumer), "stamped_at", None)
    if not isinstance(stamped, dict):
        return {}
    now = monotonic()
    return {tag: now - at for tag, at in tuple(stamped.items())}


def active_requests() -> tuple[Any, ...]:
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


def in_flight_tasks() -> dict[str, dict[str, Any]]:
    """Tasks this worker is running: id -> name, ``early_ack``, crash barrier (and context)."""
    return {str(request.id): _in_flight_entry(request) for request in active_requests()}


def barrier_in_flight() -> frozenset[str]:
    """Ids of the running crash-barrier tasks (cheap: no entries built).

    The record lists them within ``IN_FLIGHT_POLL`` of their start: a reaper
    tells from it an early-acked task it must end, and a late-acked one that
    was running (its loss a crash) from one that was only prefetched.
    """
    return frozenset(
        str(request.id)
        for request in active_requests()
        if barrier_enabled(getattr(request, "task", None))
    )


def orphanable(tasks: Mapping[str, Any]) -> frozenset[str]:
    """Ids of the tasks a dead node would orphan: acknowledged early, crash barrier on."""
    return frozenset(
        task_id
        for task_id, info in tasks.items()
        if isinstance(info, Mapping) and info.get("crash_barrier") and info.get("early_ack")
    )


def acked_early(task: Any) -> bool:
    """True when Celery (no ``acks_late``) or the node (``ack_on_record``) acks before the end."""
    return not getattr(task, "acks_late", False) or bool(getattr(task, "ack_on_record", False))


def barrier_enabled(task: Any) -> bool:
    """True for a ``SnakepitTask`` whose crash barrier is enabled."""
    if not isinstance(task, SnakepitTask):
        return False
    try:
        return task.snakepit_runtime.barrier.enabled
    except Exception:  # a task whose options cannot be resolved here: not ours to reap
        return False


def _in_flight_entry(request: Any) -> dict[str, Any]:
    task = getattr(request, "task", None)
    entry: dict[str, Any] = {
        "name": str(getattr(request, "name", None) or getattr(task, "name", "")),
        # acknowledged before it ends: its message does not come back if the node dies
        "early_ack": acked_early(task),
        "crash_barrier": barrier_enabled(task),
    }
    if entry["early_ack"] and entry["crash_barrier"]:
        context = _failure_context(request)
        if context:
            entry["context"] = context
    return entry


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
