"""The crash barrier: what to do when the process running a task dies.

``CrashBarrier`` turns a crash (an exit code, Celery's ``WorkerLostError``, a
``WorkerCrashedError``, a fatal CUDA error raised in the task) into a
:class:`CrashInfo`, says whether the task may run again, and taints the
worker — and the GPU, for GPU-fatal errors — in the shared store so the fleet
keeps work away from it until the taint expires (``taint_duration``) or an
operator lifts it (``clear_taint``). The pure decisions live in
``policy/crash.py`` and the taint keys in ``policy/taints.py``; this module
adds the store.

It also wraps the store's per-task crash ledger, which stops a message that
keeps killing whole nodes (nobody is left to see ``WorkerLostError``) after
``max_restarts``.

Fail-open: when the store is unreachable and ``fail_open()`` is on, taints are
neither written nor seen and the ledger reads as empty (logged at most once a
minute); otherwise ``StoreUnavailableError`` propagates. Under
``snakepit_celery.testing.set_testing(True)`` nothing is tainted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from snakepit_celery import signals
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.crash import CrashInfo
from snakepit_celery.policy.taints import Taint, TaintKind, device_member, worker_member
from snakepit_celery.store import StoreBinding, fail_open, report_store_error
from snakepit_celery.store.base import Store
from snakepit_celery.store.records import LedgerEntry, TaintRecord
from snakepit_celery.testing import is_testing

if TYPE_CHECKING:
    from snakepit_celery.hardware.types import Device

__all__ = ["CrashBarrier"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Shortest life of a crash-ledger entry: a day, so a message redelivered after
#: Redis' default one-hour visibility timeout, again and again, is still counted.
LEDGER_MIN_TTL = 86400.0
#: Ledger time added per allowed restart (one visibility timeout each).
LEDGER_TTL_PER_RESTART = 3600.0
#: Longest ``reason`` kept in a taint's details.
MAX_REASON_CHARS = 2000

_EMPTY_LEDGER = LedgerEntry(starts=0, finishes=0, crashes=0, running_on=None)


def _device_text(device: Device | str | None) -> str | None:
    return None if device is None else str(device)


class CrashBarrier:
    """Classifies crashes, taints workers and devices in the store, and gates re-runs.

    ``config`` is a :class:`CrashBarrierConfig`, a settings dict or None (the
    defaults); ``pool`` names the set of workers the taints belong to;
    ``store`` is a Store, a URL or None (the process default).
    """

    def __init__(
        self,
        config: CrashBarrierConfig | Mapping[str, Any] | None = None,
        pool: str = "default",
        store: Store | str | None = None,
    ) -> None:
        if not isinstance(config, CrashBarrierConfig):
            config = CrashBarrierConfig.from_dict(config)
        self.config = config
        self.pool = str(pool)
        self._store = StoreBinding(store)

    @property
    def store(self) -> Store:
        """The store holding taints and the ledger (the process default for ``store=None``)."""
        return self._store.get()

    @property
    def enabled(self) -> bool:
        """``config.enabled``: whether crashed tasks may be re-run at all."""
        return self.config.enabled

    def __repr__(self) -> str:
        store = self._store.describe()
        return f"CrashBarrier({self.config!r}, pool={self.pool!r}, store={store!r})"

    # -- classification ---------------------------------------------------------
    def describe(
        self, crash: BaseException | int | None, *, device: Device | str | None = None
    ) -> CrashInfo | None:
        """The :class:`CrashInfo` of any crash, taintable or not; None when it is no crash.

        See ``CrashBarrierConfig.describe`` for what counts as a crash.
        """
        return self.config.describe(crash, device=_device_text(device))[0]

    def crash_info(
        self, crash: BaseException | int | None, *, device: Device | str | None = None
    ) -> CrashInfo | None:
        """The :class:`CrashInfo` of a crash that taints, else None (upstream's ``crash_info``).

        Taints: classification in ``mark_on``, exit code in
        ``taint_on_exit_codes``, or exception type in ``taint_on_error_types``.
        """
        info, type_matched = self.config.describe(crash, device=_device_text(device))
        if info is None or not self.config.taintable(info, error_type_matched=type_matched):
            return None
        return info

    def retry_allowed(self, idempotent: bool, attempt: int) -> bool:
        """May the crashed task run again? ``attempt`` = restarts already made (from 0).

        False whenever the barrier is disabled; see ``CrashBarrierConfig.retry_allowed``.
        """
        return self.config.retry_allowed(idempotent, attempt)

    def backoff_for(self, attempt: int) -> float:
        """Countdown (s) before the restart following ``attempt`` restarts (0 when testing)."""
        return 0.0 if is_testing() else self.config.backoff_for(attempt)

    def should_taint_device(self, info: CrashInfo) -> bool:
        """Should this crash taint the GPU it ran on? See ``CrashBarrierConfig.taints_device``."""
        return self.config.taints_device(info)

    # -- taints -------------------------------------------------------------------
    def taint_worker(self, worker_id: str, info: CrashInfo | None = None) -> bool:
        """Taint ``worker_id`` for ``taint_duration``; True when it was not tainted before.

        Sends ``worker_tainted(pool, worker_id, info)`` only when newly tainted
        (a repeat extends the taint, never shortens it).
        """
        if is_testing():
            return False
        worker_id = str(worker_id)
        details = {"kind": str(TaintKind.WORKER), "worker_id": worker_id, **_info_details(info)}
        fresh = self._guarded(
            lambda store: store.taint_set(
                self.pool,
                worker_member(worker_id),
                duration=self.config.taint_duration,
                details=details,
            ),
            False,
        )
        if fresh:
            logger.warning(
                "worker %s tainted for %.1fs",
                worker_id,
                self.config.taint_duration,
                extra={"snakepit_pool": self.pool, "snakepit_worker": worker_id, **_log(info)},
            )
            signals.worker_tainted.send(sender=self, pool=self.pool, worker_id=worker_id, info=info)
        return fresh

    def worker_tainted(self, worker_id: str) -> bool:
        """True while ``worker_id`` is tainted."""
        if is_testing():
            return False
        member = worker_member(str(worker_id))
        return self._guarded(lambda store: store.taint_active(self.pool, member), False)

    def taint_device(self, node: str, device: Device | str, info: CrashInfo | None = None) -> bool:
        """Taint ``device`` of ``node`` for ``taint_duration``; True when newly tainted.

        ``device`` is a ``Device`` (keyed by its GPU UUID when it has one) or
        its string form ``"cuda:0"``. Sends ``device_tainted(pool, node,
        device, info)`` only when newly tainted.
        """
        if is_testing():
            return False
        node = str(node)
        uuid = getattr(device, "uuid", None)
        details = {
            **_info_details(info),
            "kind": str(TaintKind.DEVICE),
            "node": node,
            "device": str(device),
            "uuid": uuid if isinstance(uuid, str) and uuid else None,
        }
        member = device_member(node, device)
        fresh = self._guarded(
            lambda store: store.taint_set(
                self.pool, member, duration=self.config.taint_duration, details=details
            ),
            False,
        )
        if fresh:
            logger.error(
                "device %s on %s tainted for %.1fs",
                device,
                node,
                self.config.taint_duration,
                extra={
                    "snakepit_pool": self.pool,
                    "snakepit_node": node,
                    "snakepit_device": str(device),
                    **_log(info),
                },
            )
            signals.device_tainted.send(
                sender=self, pool=self.pool, node=node, device=str(device), info=info
            )
        return fresh

    def device_tainted(self, node: str, device: Device | str) -> bool:
        """True while ``device`` of ``node`` is tainted (same key rule as ``taint_device``)."""
        if is_testing():
            return False
        member = device_member(str(node), device)
        return self._guarded(lambda store: store.taint_active(self.pool, member), False)

    def taints(self) -> list[Taint]:
        """Active taints of the pool, soonest expiry first."""
        if is_testing():
            return []
        return [Taint.from_record(record) for record in self._taint_records()]

    def _taint_records(self) -> list[TaintRecord]:
        empty: list[TaintRecord] = []
        return self._guarded(lambda store: store.taint_list(self.pool), empty)

    def clear_taint(
        self,
        worker_id: str | None = None,
        *,
        node: str | None = None,
        device: Device | str | None = None,
    ) -> int:
        """Lift taints early; returns how many were lifted.

        ``clear_taint("w1")``: that worker; ``clear_taint(node="n", device=d)``:
        that device (by UUID and by string form); ``clear_taint(node="n")``:
        every device of the node; ``clear_taint()``: everything in the pool.
        """
        if device is not None and node is None:
            raise TypeError("clear_taint(device=...) needs node=...")
        if is_testing():
            return 0
        members: list[str] = []
        if worker_id is not None:
            members.append(worker_member(str(worker_id)))
        if node is not None and device is not None:
            members.extend(dict.fromkeys([device_member(node, device), f"device:{node}:{device}"]))
        elif node is not None:
            members.extend(
                taint.member
                for taint in self._taint_records()
                if taint.member.startswith(f"device:{node}:")
            )
        if worker_id is None and node is None:
            return self._guarded(lambda store: store.taint_clear(self.pool), 0)
        cleared = 0
        for member in members:
            cleared += self._guarded(lambda store: store.taint_clear(self.pool, member), 0)  # noqa: B023
        if cleared:
            logger.info(
                "cleared %d taint(s)",
                cleared,
                extra={"snakepit_pool": self.pool, "snakepit_members": members},
            )
        return cleared

    # -- crash ledger ---------------------------------------------------------------
    @property
    def ledger_ttl(self) -> float:
        """How long (s) a task's ledger entry outlives its last write.

        At least a day, plus an hour (Redis' default visibility timeout) per
        allowed restart beyond the first day's worth.
        """
        return max(LEDGER_MIN_TTL, LEDGER_TTL_PER_RESTART * (self.config.max_restarts + 1))

    def ledger_start(
        self,
        task_id: str,
        worker_id: str,
        lease: float,
        known: int = 0,
        came_back: bool = False,
        *,
        strict: bool = False,
    ) -> LedgerEntry:
        """Record that ``worker_id`` starts running ``task_id``; returns the entry *before*.

        An earlier start whose lease ran out without a finish has been counted
        as a crash (``crashes``: use it as ``attempt`` for ``retry_allowed``).
        When ``running_on`` names *another* worker its lease is still live: a
        duplicate delivery, do not run the task. ``known`` (the message's crash
        header) and ``came_back`` (it was redelivered: one more, unless given back
        unstarted) raise the ledger's count to what the message proves.
        Fail-open reads as empty; ``strict`` raises ``StoreUnavailableError``
        in both modes (the caller decides).
        """

        def start(store: Store) -> LedgerEntry:
            return store.ledger_start(
                task_id,
                worker_id=worker_id,
                lease=lease,
                ttl=self.ledger_ttl,
                known=known,
                came_back=came_back,
            )

        return start(self.store) if strict else self._guarded(start, _EMPTY_LEDGER)

    def ledger_hold(self, holds: Mapping[str, str], lease: float) -> dict[str, bool]:
        """Take or extend (``lease <= 0``: let go) leases of running tasks ``task_id -> worker``.

        One batch; the heartbeat thread holds the tasks that run long, so a
        copy of one delivered meanwhile is not run again. False for a task
        another worker holds. Fail-open reads as held.
        """
        ids = list(holds)
        held = self._guarded(
            lambda store: store.ledger_hold(holds, lease=lease, ttl=self.ledger_ttl),
            [True] * len(ids),
        )
        return dict(zip(ids, held, strict=True))

    def ledger_finish(self, task_id: str) -> None:
        """Record that the running execution of ``task_id`` ended (any outcome but a crash)."""
        self._guarded(lambda store: store.ledger_finish(task_id), None)

    def ledger_crash(self, task_id: str, *, holder: str | None = None) -> LedgerEntry:
        """Record that the running execution of ``task_id`` died; returns the entry after it.

        ``holder``: count only a run the ledger shows on that worker (see
        ``Store.ledger_crash``), so two observers of one death count it once.
        """
        return self._guarded(
            lambda store: store.ledger_crash(task_id, ttl=self.ledger_ttl, holder=holder),
            LedgerEntry(starts=0, finishes=0, crashes=1, running_on=None),
        )

    def ledger_release(self, task_id: str, *, died: bool = False) -> int:
        """Record that this node gives ``task_id``'s message back unstarted (warm shutdown).

        Its next delivery comes back ``redelivered`` but is then not counted
        as a delivery lost with a crash. ``died``: the node stops with an
        error, a death counted against the message; returns the deaths so far
        (fail-open: 0).
        """
        return self._guarded(
            lambda store: store.ledger_release(task_id, ttl=self.ledger_ttl, died=died), 0
        )

    def ledger_get(self, task_id: str) -> LedgerEntry | None:
        """The ledger entry of ``task_id``, or None."""
        return self._guarded(lambda store: store.ledger_get(task_id), None)

    # -- internals --------------------------------------------------------------------
    def _guarded(self, operation: Callable[[Store], _T], fallback: _T) -> _T:
        """Run one store operation; on an unreachable store fail open (or re-raise)."""
        try:
            return operation(self.store)
        except StoreUnavailableError as exc:
            if not fail_open():
                raise
            report_store_error(exc, snakepit_component="crash_barrier", snakepit_pool=self.pool)
            return fallback


def _info_details(info: CrashInfo | None) -> dict[str, Any]:
    if info is None:
        return {}
    details = info.as_dict()
    details["reason"] = info.reason[:MAX_REASON_CHARS]
    return details


def _log(info: CrashInfo | None) -> dict[str, Any]:
    if info is None:
        return {}
    return {
        "snakepit_classification": str(info.classification),
        "snakepit_exit_code": info.exit_code,
        "snakepit_signal": info.signal,
    }
