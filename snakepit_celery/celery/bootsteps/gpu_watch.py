"""The GPU health watch of a worker node: NVML findings turned into taints, events and recycling.

``GpuWatchStep`` (consumer bootstep, after ``SnakepitWorkerStep``) starts one
``GpuHealthService`` per node when the node has CUDA GPUs with UUIDs; its
``NvmlWatcher`` thread (never the task path) reports findings, and the
service follows ``policy.gpu_health``'s table: a hardware-class finding
taints that GPU by UUID in the store (sticky: until ``celery snakepit
untaint``), a transient one for a backoff-doubled while, after which the GPU
comes back only once a probe passes. The node beats at once, so its queue
reconciler releases the GPU's queues within the next apply (0.5 s). Each
finding sends ``signals.gpu_health`` (events, metrics) and is counted by
class and Xid. Pool children read the service's ``HealthNotice``: a task
that ran on a GPU with a finding recycles its child once its result is stored
(``bootsteps.gpu_recycle``, connected here).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import bootsteps

from snakepit_celery import signals
from snakepit_celery.celery.app_context import app_store, settings_for, taint_pools
from snakepit_celery.celery.bootsteps.gpu_recycle import connect_child_recycling
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.hardware.gpu_health import NvmlWatcher
from snakepit_celery.hardware.gpu_notice import HealthNotice, remove_notice, write_notice
from snakepit_celery.hardware.types import Accelerator, Device
from snakepit_celery.metrics.gpu import enable_gpu_metrics
from snakepit_celery.metrics.hooks import metrics_enabled
from snakepit_celery.policy.gpu_health import (
    HEALTH_ACTIONS,
    STICKY_TAINT_SECONDS,
    FindingKind,
    GpuFinding,
    HealthAction,
    HealthClass,
    TaintBackoff,
)
from snakepit_celery.policy.taints import device_member
from snakepit_celery.store import report_store_error
from snakepit_celery.store.base import Store

__all__ = ["GpuHealthService", "GpuWatchStep"]

logger = logging.getLogger(__name__)


@dataclass
class _Taint:
    until: float  # monotonic
    health_class: HealthClass
    finding: FindingKind


@dataclass(eq=False)
class GpuHealthService:
    """Findings on the GPUs of ``node`` (registry device dicts) -> taints, signals, notices."""

    node: str
    devices: Sequence[Mapping[str, Any]]
    store: Store
    pools: Sequence[str] = ("default",)
    backoff: TaintBackoff = field(default_factory=TaintBackoff)
    probe_interval: float = 2.0
    event_timeout: float = 0.2
    on_change: Callable[[], None] | None = None
    clock: Callable[[], float] = time.monotonic
    #: Findings seen, by (class, Xid or None).
    counts: Counter[tuple[str, int | None]] = field(default_factory=Counter)
    taints: dict[str, _Taint] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    recycle: dict[str, float] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    watcher: NvmlWatcher = field(init=False)

    def __post_init__(self) -> None:
        self.gpus = {
            str(d["uuid"]): d for d in self.devices if d.get("kind") == "cuda" and d.get("uuid")
        }
        self.watcher = NvmlWatcher(
            list(self.gpus),
            self.handle,
            on_tick=self.tick,
            event_timeout=self.event_timeout,
            probe_interval=self.probe_interval,
        )

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> bool:
        """Start the watcher; False (nothing started) when the node has no CUDA GPU UUIDs.

        Publishes an empty notice first, replacing any left by a dead process
        that had this pid.
        """
        if not self.gpus:
            return False
        self._publish()
        self.watcher.start()
        return True

    def stop(self) -> None:
        """Stop the watcher and withdraw the notice."""
        self.watcher.stop()
        remove_notice(os.getpid())

    # -- findings -----------------------------------------------------------------------
    def handle(self, finding: GpuFinding) -> None:
        """Act on one finding as ``HEALTH_ACTIONS`` says (watcher thread)."""
        device = self.gpus.get(finding.uuid)
        if device is None:
            logger.warning(
                "GPU finding on an unknown GPU %s", finding.uuid, extra=finding.as_dict()
            )
            return
        health_class = finding.health_class
        action = HEALTH_ACTIONS[health_class]
        self.counts[(str(health_class), finding.xid)] += 1
        if not finding.known:
            logger.warning(
                "unknown Xid %s on GPU %s of %s: blamed on the GPU (%s)",
                finding.xid,
                finding.uuid,
                self.node,
                health_class,
                extra={"node": self.node, **finding.as_dict()},
            )
        with self._lock:
            done = self._apply(finding, health_class, action)
        self._publish()
        self._signal(finding, done)

    def _apply(self, finding: GpuFinding, health_class: HealthClass, action: HealthAction) -> str:
        done = "recycle" if action.recycle_child else "none"
        if action.recycle_child:
            self.recycle[finding.uuid] = time.time()
        if not action.taint:
            return "blame_task" if action.blame_task else done
        current = self.taints.get(finding.uuid)
        if current is not None and not (action.sticky and current.health_class != health_class):
            return "already_tainted"
        now = self.clock()
        if action.sticky:
            duration = STICKY_TAINT_SECONDS
        else:
            duration = self.backoff.duration(self.history.get(finding.uuid, ()), now)
            earlier = self.backoff.recent(self.history.get(finding.uuid, ()), now)
            self.history[finding.uuid] = [*earlier, now]
        self._taint(finding, health_class, duration)
        self.taints[finding.uuid] = _Taint(now + duration, health_class, finding.kind)
        return "tainted"

    def _member(self, uuid: str) -> str:
        device = self.gpus[uuid]
        return device_member(self.node, Device(Accelerator.CUDA, int(device["index"]), uuid))

    def _taint(self, finding: GpuFinding, health_class: HealthClass, duration: float) -> None:
        sticky = health_class is HealthClass.HARDWARE
        device = self.gpus[finding.uuid]
        details = {
            "kind": "device",
            "node": self.node,
            "device": f"cuda:{device['index']}",
            "uuid": finding.uuid,
            "classification": "gpu",
            "reason": f"GPU health: {finding.kind}"
            + (f" (Xid {finding.xid})" if finding.xid is not None else "")
            + (f": {finding.detail}" if finding.detail else ""),
            "gpu_health": str(health_class),
            "sticky": sticky,
        }
        # A transient taint outlives its time by a few probes: the GPU comes back
        # only when ``tick`` saw a probe pass and cleared it.
        stored = duration if sticky else duration + 3 * self.probe_interval + 1.0
        member = self._member(finding.uuid)
        for pool in self.pools:
            self._guarded(
                functools.partial(
                    self.store.taint_set, pool, member, duration=stored, details=details
                )
            )
        logger.error(
            "GPU %s (%s) of %s tainted for %.0fs: %s",
            finding.uuid,
            details["device"],
            self.node,
            duration,
            details["reason"],
            extra={"node": self.node, "uuid": finding.uuid, "gpu_health": str(health_class)},
        )

    def _guarded(self, operation: Callable[[], Any]) -> Any:
        try:
            return operation()
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node, snakepit_component="gpu_health")
            return None

    def _signal(self, finding: GpuFinding, done: str) -> None:
        device = self.gpus[finding.uuid]
        signals.gpu_health.send(
            sender=self,
            node=self.node,
            gpu_uuid=finding.uuid,
            device=f"cuda:{device['index']}",
            finding=str(finding.kind),
            health_class=str(finding.health_class),
            xid=finding.xid,
            action=done,
            detail=finding.detail,
        )

    def _publish(self) -> None:
        with self._lock:
            notice = HealthNotice(frozenset(self.taints), dict(self.recycle))
        try:
            write_notice(os.getpid(), notice)
        except OSError as exc:
            logger.warning("could not publish the GPU health notice: %r", exc)
        if self.on_change is not None:
            self.on_change()

    # -- recovery -----------------------------------------------------------------------
    def tick(self) -> None:
        """After each probe round: bring back transient taints whose time is up and probe clean."""
        changed = False
        for uuid, taint in list(self.taints.items()):
            if taint.health_class is HealthClass.HARDWARE:
                changed |= self._operator_cleared(uuid)
            elif self.clock() >= taint.until:
                changed |= self._recover(uuid, taint)
        if changed:
            self._publish()

    def _operator_cleared(self, uuid: str) -> bool:
        member = self._member(uuid)
        active = self._guarded(
            lambda: any(self.store.taint_active(pool, member) for pool in self.pools)
        )
        if active is None or active:
            return False
        with self._lock:
            self.taints.pop(uuid, None)
        logger.warning("GPU %s of %s untainted by an operator", uuid, self.node)
        return True

    def _recover(self, uuid: str, taint: _Taint) -> bool:
        found = self.watcher.probe(uuid)
        if found:
            with self._lock:
                self.taints.pop(uuid, None)
            for finding in found:
                self.handle(finding)
            return False
        member = self._member(uuid)
        for pool in self.pools:
            self._guarded(functools.partial(self.store.taint_clear, pool, member))
        with self._lock:
            self.taints.pop(uuid, None)
        logger.warning("GPU %s of %s is back: its health probe passed", uuid, self.node)
        finding = GpuFinding(uuid, taint.finding, detail="health probe passed")
        self._signal(finding, "recovered")
        return True

    # -- what the heartbeat carries -------------------------------------------------------
    def status(self) -> dict[str, dict[str, Any]]:
        """GPU UUID -> free/total memory (MB) and health, for the node's record.

        Empty until NVML answered (no NVML: the record does not change).
        """
        if not self.watcher.ready.is_set():
            return {}
        memory = self.watcher.memory()
        with self._lock:
            taints = dict(self.taints)
        out: dict[str, dict[str, Any]] = {}
        for uuid in self.gpus:
            sample = memory.get(uuid)
            taint = taints.get(uuid)
            entry: dict[str, Any] = {"health": "ok" if taint is None else str(taint.health_class)}
            if sample is not None:
                entry["memory_free_mb"] = sample.free_mb
                entry["memory_total_mb"] = sample.total_mb
            out[uuid] = entry
        return out


class GpuWatchStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: the node's GPU health watch (only on nodes with CUDA GPU UUIDs)."""

    name = "snakepit.gpu_watch"
    label = "snakepit GPU health"
    requires = ("snakepit_celery.celery.bootsteps.steps:SnakepitWorkerStep",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.service: GpuHealthService | None = None

    def start(self, c: Any) -> None:
        """Start the watch once the node's services exist (first consumer start)."""
        services = getattr(c, "snakepit", None)
        if self.service is not None or services is None:
            return
        service = GpuHealthService(
            services.node,
            services.queues.devices,
            app_store(c.app),
            taint_pools(c.app),
            backoff=settings_for(c.app).gpu_health,
            on_change=services.heartbeat.beat,
        )
        if service.start():
            self.service = service
            services.registry.gpu_status = service.status
            if metrics_enabled():
                enable_gpu_metrics()
            logger.info("GPU health watch started on %s", services.node)

    def shutdown(self, c: Any) -> None:
        """Stop the watch with the consumer."""
        service, self.service = self.service, None
        if service is not None:
            service.stop()


connect_child_recycling()
