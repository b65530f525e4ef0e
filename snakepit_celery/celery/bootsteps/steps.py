"""The thin Celery steps that start and stop the node's services, and ``install_worker``.

``SnakepitPreflightStep`` (worker blueprint) checks the host before the pool
or the broker start. ``SnakepitWorkerStep`` (consumer blueprint, after
``Tasks``) builds the node's services once and, on every consumer start,
decides and applies its queues, registers it, starts the heartbeat and two
event-loop timers (queue changes and reaper events; acknowledgements on
record); on stop it marks the node ``stopping``, on a warm shutdown it marks
the messages given back unstarted, and on ``worker_shutdown`` the node leaves.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import Celery, bootsteps
from celery import signals as celery_signals
from celery.exceptions import WorkerShutdown
from celery.worker import state as worker_state

from snakepit_celery import signals as snakepit_signals
from snakepit_celery.celery.app_context import (
    app_group,
    app_store,
    check_store,
    namespace,
    taint_pools,
)
from snakepit_celery.celery.bootsteps.ack import ACK_INTERVAL, AckOnRecord, ack_on_record_tasks
from snakepit_celery.celery.bootsteps.children import PoolChildWatch, pool_pids
from snakepit_celery.celery.bootsteps.current import note_worker_node
from snakepit_celery.celery.bootsteps.fence import fence_node
from snakepit_celery.celery.bootsteps.giveback import release_unstarted, stopping_error
from snakepit_celery.celery.bootsteps.gpu_watch import GpuWatchStep
from snakepit_celery.celery.bootsteps.in_flight import held_deliveries
from snakepit_celery.celery.bootsteps.message_guard import MessageGuardStep
from snakepit_celery.celery.bootsteps.metrics import SnakepitMetricsStep
from snakepit_celery.celery.bootsteps.preflight import preflight
from snakepit_celery.celery.bootsteps.queues import (
    APPLY_INTERVAL,
    QueueReconciler,
    consumer_queue_names,
)
from snakepit_celery.celery.bootsteps.reaper import OrphanReaper
from snakepit_celery.celery.bootsteps.registry import Heartbeat, NodeRegistry, never_raise
from snakepit_celery.celery.bootsteps.visibility import VisibilityKeeper
from snakepit_celery.errors import ConfigError

__all__ = ["NodeServices", "SnakepitPreflightStep", "SnakepitWorkerStep", "install_worker"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeServices:
    """The services of one worker node, built once by ``SnakepitWorkerStep``."""

    node: str
    queues: QueueReconciler
    registry: NodeRegistry
    reaper: OrphanReaper
    heartbeat: Heartbeat
    ack: AckOnRecord

    @classmethod
    def create(cls, c: Any) -> NodeServices:
        """Build the services of the consumer's node (hardware from the preflight step)."""
        app = c.app
        node = str(c.hostname)
        info = getattr(c.controller, "snakepit_hardware", None) or preflight(app, node)
        store = app_store(app)
        group = app_group(app)
        queues = QueueReconciler(
            node,
            info,
            store,
            pools=taint_pools(app),
            extra_queues=consumer_queue_names(c),
            group=group,
            prefix=namespace(app),
        )
        registry = NodeRegistry(
            node,
            info,
            store,
            queues,
            held=lambda: held_deliveries(c),
            children=lambda: pool_pids(c.pool),
            group=group,
        )
        reaper = OrphanReaper(app, node, store, held=lambda: held_deliveries(c))
        logger.info(
            "node %s: %s, queues %s",
            node,
            info.accelerator.value,
            ", ".join(queues.queues),
            extra={"node": node, "queues": queues.queues},
        )
        heartbeat = Heartbeat(
            registry,
            reaper,
            VisibilityKeeper(c, registry.interval),
            on_reaped=lambda: fence_node(node, c, reaper.restorer),
        )
        return cls(node, queues, registry, reaper, heartbeat, AckOnRecord(registry))


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
        try:
            check_store(w.app)
        except ConfigError as exc:
            logger.critical("snakepit: node %s refuses to start: %s", w.hostname, exc)
            raise WorkerShutdown(1) from exc
        # ``-E`` sets only the worker's own flag; make it visible to the pool
        # children, which send the per-run ``snakepit-run`` event only then.
        w.app.conf.worker_send_task_events = bool(w.task_events)
        acked_on_record = ack_on_record_tasks(w.app)
        if acked_on_record:
            logger.info(
                "snakepit: acknowledged on record (crash barrier, not idempotent): %s",
                ", ".join(acked_on_record),
            )


class SnakepitWorkerStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: queues, node registry, heartbeat, taint watch, reaper, give-back.

    Starts once the task consumer exists (after ``Tasks``) and before the
    event loop. A lock-file mismatch or a broken hardware override stops the
    worker with exit code 1 and a one-line reason in its log.
    """

    name = "snakepit.worker"
    label = "snakepit"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.services: NodeServices | None = None
        self.tref: Any = None
        self.ack_tref: Any = None
        #: Celery's reserved requests when the shutdown began (``worker_shutting_down``).
        self.reserved_at_shutdown: tuple[Any, ...] = ()
        c.snakepit = None
        note_worker_node(c.app, c.hostname)

    def start(self, c: Any) -> None:
        """Create the node (first start), consume its queues, register it, start the heartbeat."""
        if self.services is None:
            self.services = NodeServices.create(c)
            _connect_shutdown(c, self)
            _connect_taint_watch(c, self)
        services = c.snakepit = self.services
        services.heartbeat.beat(register=False)
        services.queues.start(c)
        services.registry.try_register()
        services.heartbeat.start()
        self.tref = c.timer.call_repeatedly(APPLY_INTERVAL, self._apply, (c,), priority=10)
        self.ack_tref = c.timer.call_repeatedly(ACK_INTERVAL, self._ack, (), priority=10)

    def _ack(self) -> None:
        services = self.services
        if services is not None:
            never_raise(
                services.ack.ack_recorded,
                "snakepit: could not acknowledge recorded tasks of %s",
                services.node,
            )

    def _apply(self, c: Any) -> None:
        """Apply queue changes and send the reaper's events (event loop)."""
        services = self.services
        if services is None or c.task_consumer is None:
            return
        never_raise(
            lambda: services.queues.apply(c),
            "snakepit: could not change the queues of %s",
            services.node,
        )
        never_raise(
            lambda: services.reaper.send_events(getattr(c, "event_dispatcher", None)),
            "snakepit: could not send the reaper's events from %s",
            services.node,
        )

    def stop(self, c: Any) -> None:
        """Stop applying queue changes; on shutdown, mark the node ``stopping`` (it still beats)."""
        for tref in (self.tref, self.ack_tref):
            if tref is not None:
                tref.cancel()
        self.tref = self.ack_tref = None
        services = self.services
        if services is not None and c.blueprint.state != bootsteps.RUN:
            services.registry.state = "stopping"
            services.registry.try_register()

    def shutdown(self, c: Any) -> None:
        """Consumer shutdown: stop, and on a warm one mark the messages given back unstarted.

        The pool has finished by now and the broker connection is still open
        (kombu restores the unacknowledged messages when it closes). A cold
        shutdown marks nothing: the tasks it killed did start. A shutdown
        caused by an error counts a death against each message given back
        (``giveback``). The node leaves the registry on ``worker_shutdown``.
        """
        died = stopping_error()
        self.stop(c)
        services = self.services
        if services is not None and not worker_state.should_terminate:
            never_raise(
                lambda: release_unstarted(services.node, c, self.reserved_at_shutdown, died=died),
                "snakepit: could not mark the unstarted tasks of %s",
                services.node,
            )

    def leave(self) -> None:
        """Remove the node from the fleet (after the pool finished its tasks)."""
        services, self.services = self.services, None
        if services is not None:
            services.heartbeat.stop()
            services.registry.leave()


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
        services = step.services
        if services is None or os.getpid() != main_pid:
            return
        if fields.get("worker_id", fields.get("node")) != services.node:
            return
        services.heartbeat.beat()
        step._apply(c)

    snakepit_signals.worker_tainted.connect(on_taint, weak=False)
    snakepit_signals.device_tainted.connect(on_taint, weak=False)


def install_worker(app: Celery) -> None:
    """Add the snakepit bootsteps to ``app``'s worker (preflight) and consumer (idempotent)."""
    app.steps["worker"].add(SnakepitPreflightStep)
    app.steps["worker"].add(SnakepitMetricsStep)
    app.steps["consumer"].add(SnakepitWorkerStep)
    app.steps["consumer"].add(GpuWatchStep)
    app.steps["consumer"].add(PoolChildWatch)
    app.steps["consumer"].add(MessageGuardStep)
