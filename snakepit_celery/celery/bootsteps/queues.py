"""Queue reconciliation: the queues a node consumes follow its taints.

While the node is tainted it releases all its queues (unless no other live
node could take the work), while one of its devices is tainted it releases
that device's queues; they come back when the taint expires or is cleared.
The decision (``decide()``) reads the store from the heartbeat thread; the
change (``apply()``) runs on the worker's own event loop, since kombu
consumers are not thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snakepit_celery import hardware
from snakepit_celery.celery.router import fleet_snapshot
from snakepit_celery.policy.queues import desired_queues
from snakepit_celery.policy.routing import QUEUE_PREFIX, node_devices, queues_for
from snakepit_celery.store.base import DEFAULT_GROUP, Store

__all__ = ["APPLY_INTERVAL", "QueueReconciler", "consumer_queue_names"]

logger = logging.getLogger(__name__)

#: Seconds between two checks, on the worker's event loop, for queue changes to apply.
APPLY_INTERVAL = 0.5


@dataclass
class _QueueState:
    """What the heartbeat thread decided and what the event loop applied (guarded by a lock)."""

    wanted: list[str]
    consuming: list[str]
    alone_tainted: bool = False
    tainted: bool = False


class QueueReconciler:
    """The queues one node should consume, decided from the fleet and applied to its consumer."""

    def __init__(
        self,
        node: str,
        info: hardware.HardwareInfo,
        store: Store,
        *,
        pools: Sequence[str] = ("default",),
        extra_queues: Sequence[str] = (),
        group: str = DEFAULT_GROUP,
        prefix: str = QUEUE_PREFIX,
    ) -> None:
        self.node = node
        self.prefix = prefix
        self.store = store
        self.group = group
        self.pools = tuple(pools)
        self.devices = node_devices(info)
        self.queues = queues_for(node, info, prefix=prefix)
        self.extra_queues = [q for q in extra_queues if q not in self.queues]
        self._lock = threading.Lock()
        self._state = _QueueState(wanted=[*self.queues, *self.extra_queues], consuming=[])
        self._last_alone_warning = False
        self._released = False

    @property
    def consuming(self) -> list[str]:
        """The queues the consumer consumes, as last applied."""
        with self._lock:
            return list(self._state.consuming)

    @property
    def tainted(self) -> bool:
        """Whether the node was tainted at the last decision."""
        with self._lock:
            return self._state.tainted

    def decide(self) -> None:
        """Read the fleet and decide the wanted queues (store side: the heartbeat thread)."""
        snapshot = fleet_snapshot(self.store, self.pools, self.group)
        wanted, alone = desired_queues(
            self.node,
            self.queues,
            self.devices,
            snapshot,
            extra_queues=self.extra_queues,
            prefix=self.prefix,
        )
        with self._lock:
            self._state.wanted = wanted
            self._state.tainted = snapshot.node_tainted(self.node)
            self._state.alone_tainted = alone
        if alone and not self._last_alone_warning:
            logger.error(
                "node %s is tainted but it is the only live node: it keeps consuming its queues",
                self.node,
                extra={"node": self.node},
            )
        self._last_alone_warning = alone

    def start(self, consumer: Any) -> None:
        """Take the consumer's queues as they are, then apply the decision (event loop)."""
        with self._lock:
            self._state.consuming = consumer_queue_names(consumer)
        self.apply(consumer)

    def apply(self, consumer: Any) -> None:
        """Make ``consumer`` consume exactly the wanted queues (cancel and re-add as needed)."""
        with self._lock:
            wanted = list(self._state.wanted)
            consuming = list(self._state.consuming)
        if wanted == consuming:
            return
        for queue in consuming:
            if queue not in wanted:
                consumer.cancel_task_queue(queue)
        for queue in wanted:
            if queue not in consuming:
                _add_task_queue(consumer, queue)
        self._log_released([q for q in (*self.queues, *self.extra_queues) if q not in wanted])
        with self._lock:
            self._state.consuming = wanted

    def _log_released(self, released: list[str]) -> None:
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


def consumer_queue_names(consumer: Any) -> list[str]:
    """The queues the consumer's app consumes from (``-Q`` and Celery's defaults)."""
    queues = consumer.app.amqp.queues
    return [str(name) for name in queues.consume_from] if queues.consume_from else []


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
