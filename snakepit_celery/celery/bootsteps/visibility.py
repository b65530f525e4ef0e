"""Keep the broker from restoring the messages of this node's long tasks while they run.

Kombu's Redis transport keeps each unacknowledged message in the ``unacked``
hash and its delivery time in the ``unacked_index`` sorted set; any consumer
restores a message whose delivery time is older than ``visibility_timeout``,
so a task running longer than that would start a second time elsewhere. From
the heartbeat thread (never the task's path), ``VisibilityKeeper.keep`` moves
the delivery time of every message this node still holds (reserved, waiting
for its countdown, or running) to now, once it is older than half the
timeout: one ``ZADD XX`` per such message and half-timeout, in one round trip,
nothing for tasks shorter than that (on snakepit's transport "now" is the
broker's clock, as its pop stamps deliveries). It also takes or renews, in one store
batch, the crash-ledger lease of each running crash-barrier task among them
(``CrashBarrier.ledger_hold``), so a copy restored in a race is dropped by the
ledger gate; it lets go of those leases when the tasks end. Other transports
(AMQP) have no visibility timeout: the broker redelivers a message as soon
as its consumer's connection drops, even while its task runs on, so there the
keeper takes the lease of each running crash-barrier task at the first beat
that sees it (one batched store call per beat, in this thread; nothing for a
task that ends within a beat), renews it on the schedule of the app's
configured (or kombu's default) timeout, as the lease is 0.8 x that, and a
copy redelivered meanwhile waits for the run (``ledger_gate``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from celery.worker import state as worker_state

from snakepit_celery.celery.bootsteps.in_flight import active_requests, barrier_enabled
from snakepit_celery.celery.runtime import TaskRuntime, visibility_timeout
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.transport.redis import Channel as BrokerTimedChannel

__all__ = ["VisibilityKeeper", "held_requests"]

logger = logging.getLogger(__name__)


def held_requests() -> tuple[Any, ...]:
    """Requests whose messages this node holds unacknowledged: reserved, scheduled, running.

    Read from the heartbeat thread, so a race (a set changed size while
    copied) is retried.
    """
    for _ in range(5):
        try:
            held = {
                *worker_state.reserved_requests,
                *getattr(worker_state, "scheduled_requests", ()),
                *worker_state.active_requests,
            }
        except RuntimeError:  # set changed size during iteration
            continue
        return tuple(r for r in held if not getattr(r, "acknowledged", False))
    return ()


class VisibilityKeeper:
    """Refreshes the broker's delivery time and the ledger lease of this node's long tasks.

    ``consumer`` is Celery's consumer (its task channel is read on each call,
    so a reconnection is followed); ``interval`` the heartbeat's period.
    """

    def __init__(self, consumer: Any, interval: float) -> None:
        self.consumer = consumer
        self.interval = interval
        #: delivery tag -> monotonic time its delivery time was last known fresh.
        self._fresh: dict[str, float] = {}
        #: task id -> worker id of the ledger leases this node holds.
        self._leases: dict[str, str] = {}
        #: The runtime of a task that took a lease (its barrier and lease length).
        self._runtime: TaskRuntime | None = None
        #: Ids of running tasks already offered an eager lease (brokers without a timeout).
        self._seen: set[str] = set()

    def _channel(self) -> Any:
        task_consumer = getattr(self.consumer, "task_consumer", None)
        channel = getattr(task_consumer, "channel", None)
        if channel is None or not hasattr(channel, "unacked_index_key"):
            return None
        return channel

    def keep(self) -> None:
        """One pass (heartbeat thread): refresh what is due, let go of leases of ended tasks."""
        channel = self._channel()
        if channel is not None:
            timeout = float(channel.visibility_timeout)
        else:
            timeout = visibility_timeout(self.consumer.app)
        now = time.monotonic()
        held = {str(r.message.delivery_tag): r for r in held_requests() if _tag(r) is not None}
        for tag in [t for t in self._fresh if t not in held]:
            del self._fresh[tag]
        due = [
            request
            for tag, request in held.items()
            if now - self._fresh.setdefault(tag, now - self.interval) >= self.threshold(timeout)
        ]
        try:  # leases first: each then ends before the broker could restore its message
            self._hold(due, eager=channel is None)
        finally:
            if due:
                if channel is not None:
                    self._extend(channel, [str(r.message.delivery_tag) for r in due])
                for request in due:
                    self._fresh[str(request.message.delivery_tag)] = now

    def threshold(self, timeout: float) -> float:
        """Age (s) past which a delivery time is refreshed: half the timeout, minus two beats."""
        return max(0.0, timeout / 2 - 2 * self.interval)

    def _extend(self, channel: Any, tags: list[str]) -> None:
        """Move the delivery time of ``tags`` to now (``XX``: an acknowledged one stays gone):
        the broker's now on snakepit's transport (whose pop stamps it so), else this host's."""
        if isinstance(channel, BrokerTimedChannel):
            channel.keep_visible(tags)
        else:
            stamp = time.time()
            with channel.conn_or_acquire() as client:
                pipe = client.pipeline()
                for tag in tags:
                    pipe.zadd(channel.unacked_index_key, {tag: stamp}, xx=True)
                pipe.execute()
        logger.debug("kept %d message(s) from being restored", len(tags))

    def _hold(self, due: Iterable[Any], *, eager: bool = False) -> None:
        """Take or renew the ledger leases of the due running tasks; let go of ended ones.

        ``eager`` (a broker that redelivers at once on a connection loss):
        also take the lease of every running task seen for the first time.
        """
        active = {str(r.id): r for r in active_requests()}
        self._seen &= active.keys()
        ended = {t: w for t, w in self._leases.items() if t not in active}
        candidates = {str(r.id): r for r in due}
        if eager:
            for task_id in active.keys() - self._seen:
                candidates.setdefault(task_id, active[task_id])
            self._seen |= active.keys()
        holds = {
            task_id: (f"{r.hostname}/{r.worker_pid}", r.task.snakepit_runtime)
            for task_id, r in candidates.items()
            if task_id in active and r.worker_pid and _gated(r)
        }
        if holds:
            self._runtime = next(iter(holds.values()))[1]
        runtime = self._runtime
        if runtime is None:
            return
        if ended:
            runtime.barrier.ledger_hold(ended, 0.0)
            for task_id in ended:
                del self._leases[task_id]
        if holds:
            leases = {task_id: worker for task_id, (worker, _) in holds.items()}
            for task_id, ok in runtime.barrier.ledger_hold(leases, runtime.lease).items():
                if ok:
                    self._leases[task_id] = leases[task_id]
                else:
                    logger.warning(
                        "task %s: another worker holds its lease",
                        task_id,
                        extra={"task_id": task_id},
                    )


def _tag(request: Any) -> Any:
    message = getattr(request, "message", None)
    return getattr(message, "delivery_tag", None)


def _gated(request: Any) -> bool:
    """A running crash-barrier task whose message can come back (acknowledged late)."""
    task = getattr(request, "task", None)
    return isinstance(task, SnakepitTask) and bool(task.acks_late) and barrier_enabled(task)
