"""The ``Store`` protocol: the atomic operations shared state needs.

The store is not a key/value bag: each method is one atomic operation (one
Lua script on Redis), so every decision stays correct when many processes on
many machines race. Time always comes from the store's own clock
(Redis ``TIME``), never from the caller, so hosts with skewed clocks agree.

Backends: ``RedisStore`` (``store/redis.py``) and ``MemoryStore``
(``store/memory.py``, one process only). Pick one by URL with
``store_from_url()``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from snakepit_celery.store.records import (
    BreakerDecision,
    BreakerRecord,
    BreakerSnapshot,
    HealthSnapshot,
    LedgerEntry,
    QuarantineEntry,
    TaintRecord,
    WorkerCrashes,
)

__all__ = [
    "DEFAULT_GROUP",
    "NODE_RETENTION",
    "REAP_RECLAIM",
    "STORE_SILENCE",
    "Store",
]


#: The node group of callers that name none (an app's is ``celery.app_context.app_group``).
DEFAULT_GROUP = "default"
#: How long (s) the last record of a node incarnation is kept after its heartbeat
#: expired, hidden from ``node_list``, for ``node_reap`` to claim: long enough for
#: a fleet that was down as a whole (power loss) to restart and reap its own dead.
NODE_RETENTION = 3600.0
#: How long (s) a dead incarnation ``node_reap`` handed out stays claimed: not given
#: back by the caller as done (``done=``) by then (the caller died, or the store's reply
#: was lost), it is handed out again.
REAP_RECLAIM = 15.0
#: A node group none of whose nodes wrote its record for longer than this (s) was cut off
#: from the store (down, restarting) or stopped as a whole: that silence counts against
#: no node's heartbeat (each beats every 0.5 s), so no live node is reaped for it.
STORE_SILENCE = 1.0


def node_incarnation(data: Mapping[str, Any]) -> str:
    """The incarnation id of a node record (``data["incarnation"]``, "" without one).

    One incarnation is one run of a node: a node restarted under the same name
    is a new incarnation, so the record of the dead one survives for the reaper.
    ``|`` separates fields in the store, so it is replaced.
    """
    return str(data.get("incarnation") or "").replace("|", "/")


@runtime_checkable
class Store(Protocol):
    """Atomic shared-state operations. All durations are seconds (float)."""

    url: str

    def now(self) -> float:
        """The store's clock, epoch seconds."""
        ...

    def ping(self) -> bool:
        """True when the store answers."""
        ...

    # -- circuit breaker ------------------------------------------------------
    def breaker_acquire(
        self, name: str, *, reset_timeout: float, half_open_max_calls: int, probe_ttl: float
    ) -> BreakerDecision:
        """Ask to make a call; in half-open this takes a probe slot (lease of ``probe_ttl``).

        The breaker's stored configuration, when it has one, gives
        ``reset_timeout`` and ``half_open_max_calls`` instead of the arguments.
        """
        ...

    def breaker_record(
        self,
        name: str,
        *,
        success: bool,
        failure_threshold: int,
        probe: str | None = None,
        count: int = 1,
        config: Mapping[str, Any] | None = None,
    ) -> BreakerRecord:
        """Record ``count`` successes or failures (releasing ``probe`` if given).

        ``config`` (``failure_threshold``, ``reset_timeout``,
        ``half_open_max_calls``) is stored with the breaker's state unless one
        is stored already: the first wins, and its numbers replace the
        arguments here, in ``breaker_acquire`` and in ``breaker_peek``.
        """
        ...

    def breaker_peek(self, name: str, *, reset_timeout: float) -> BreakerSnapshot:
        """Current state without side effects (open past its timeout reads half_open)."""
        ...

    def breaker_reset(self, name: str) -> str:
        """Forget everything about the breaker (closed, zero counts); return its state before.

        Atomic: of racing resets of an open breaker exactly one sees it not closed.
        An unknown breaker was ``"closed"``.
        """
        ...

    def breaker_names(self) -> list[str]:
        """Names of the breakers with state in the store, sorted (a scan: not for hot paths)."""
        ...

    def pool_names(self) -> list[str]:
        """Pools with crash records or taints in the store, sorted (a scan: not for hot paths)."""
        ...

    # -- health monitor -------------------------------------------------------
    def health_record(
        self,
        pool: str,
        worker_id: str,
        *,
        window: float,
        max_entries: int,
        reason: str | None = None,
        info: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> HealthSnapshot:
        """Record one crash, prune entries older than ``window`` (and beyond ``max_entries``).

        The result's ``workers`` holds only ``worker_id`` (its crashes inside
        the window), so recording stays O(log n) under a crash storm; use
        ``health_stats`` for every worker. ``reason``/``info`` are not stored.
        ``config`` (the pool's settings) is stored with the pool's state unless
        one is stored already: the first wins, and its ``crash_window`` replaces
        ``window`` here and in ``health_stats``/``health_worker``.
        """
        ...

    def health_stats(self, pool: str, *, window: float) -> HealthSnapshot:
        """Crash counts of ``pool`` inside the window (no write; O(log n), ``workers`` empty)."""
        ...

    def health_worker(self, pool: str, worker_id: str, *, window: float) -> WorkerCrashes:
        """Crashes of one worker inside the window (no write; O(log n), for ``worker_health``)."""
        ...

    # -- taints ---------------------------------------------------------------
    def taint_set(
        self, pool: str, member: str, *, duration: float, details: Mapping[str, Any]
    ) -> bool:
        """Taint ``member`` for ``duration``; True when it was not tainted before."""
        ...

    def taint_list(self, pool: str) -> list[TaintRecord]:
        """Active (unexpired) taints of ``pool``."""
        ...

    def taint_active(self, pool: str, member: str) -> bool:
        """True while ``member`` is tainted."""
        ...

    def taint_clear(self, pool: str, member: str | None = None) -> int:
        """Lift one taint (or all of ``pool`` when ``member`` is None); returns how many."""
        ...

    # -- crash ledger ---------------------------------------------------------
    def ledger_start(
        self,
        task_id: str,
        *,
        worker_id: str,
        lease: float,
        ttl: float,
        known: int = 0,
        came_back: bool = False,
    ) -> LedgerEntry:
        """Record that ``worker_id`` starts an execution; returns the entry *before* it.

        A start while an earlier one never finished and its lease ran out
        counts that earlier one as a crash; the count is then raised to what
        the message proves: ``known`` (its crash header), plus its lost delivery
        when it ``came_back`` and was not given back unstarted. While
        *another* worker still holds a live lease nothing is written and the
        result's ``running_on`` names that worker (``held_for``: since when it
        last took or renewed that lease): the caller must not run the task
        while that worker lives (duplicate delivery).
        ``released`` is true when this delivery follows a ``ledger_release``
        (the mark is consumed; ``ledger_crash`` of this run reports it too).
        """
        ...

    def ledger_hold(self, holds: Mapping[str, str], *, lease: float, ttl: float) -> list[bool]:
        """Take or extend the lease of each running task ``task_id -> worker_id`` (one batch).

        Creates the entry of a first delivery (it lives at least ``ttl``), so a
        copy of its message delivered while it runs is not run again; False for
        a task another worker holds a live lease on (nothing written).
        ``lease <= 0`` lets go of the worker's leases instead (always True).
        """
        ...

    def ledger_finish(self, task_id: str) -> None:
        """Record that the running execution ended (any outcome); no-op without an entry."""
        ...

    def ledger_crash(self, task_id: str, *, ttl: float, holder: str | None = None) -> LedgerEntry:
        """Record that the running execution died; returns the entry after it.

        ``released`` is true when the delivery that died followed a
        ``ledger_release`` (whether or not its run got to ``ledger_start``).
        With ``holder``, only a run the ledger shows on that worker is counted:
        otherwise nothing is written (it was counted already, or another
        worker has taken the task over), so two observers of one death count
        it once.
        """
        ...

    def ledger_release(self, task_id: str, *, ttl: float, died: bool = False) -> int:
        """Mark the task's message as given back to the broker unstarted (warm shutdown).

        Its next delivery comes back ``redelivered`` but was not lost with a
        crash; the entry lives at least ``ttl`` seconds. ``died``: the node
        giving it back stops with an error, which counts a death against the
        message (not a crash: it never ran). Returns the deaths counted so far.
        """
        ...

    def ledger_get(self, task_id: str) -> LedgerEntry | None:
        """The entry for ``task_id``, or None."""
        ...

    # -- node registry --------------------------------------------------------
    def node_register(
        self, node: str, data: Mapping[str, Any], *, ttl: float, group: str = DEFAULT_GROUP
    ) -> bool:
        """Write (or refresh) a node's record; it vanishes ``ttl`` after the last refresh.

        Every node operation acts on one ``group`` of nodes: an app's fleet
        (``celery.app_context.app_group``), so apps sharing a store never see
        nor reap each other's nodes.

        The record is also kept per incarnation (``data["incarnation"]``, see
        ``node_incarnation``) for ``NODE_RETENTION`` seconds past its expiry,
        hidden from ``node_list``, so ``node_reap`` can claim the last record of
        a node that died, even when a node of the same name has started since.
        Returns False, writing nothing, when ``node_reap`` claimed this
        incarnation (within ``NODE_RETENTION``): it was declared dead and is fenced.
        """
        ...

    def node_list(self, *, group: str = DEFAULT_GROUP) -> list[dict[str, Any]]:
        """Records of the group's live nodes (each with ``node`` and ``heartbeat_age`` added)."""
        ...

    def node_remove(self, node: str, *, group: str = DEFAULT_GROUP) -> None:
        """Drop a node's record and its current incarnation's (clean shutdown: nothing to reap)."""
        ...

    def node_reap(
        self,
        *,
        grace: float,
        group: str = DEFAULT_GROUP,
        done: Iterable[tuple[str, str]] = (),
    ) -> list[dict[str, Any]]:
        """Claim the last records of dead node incarnations (heartbeat expired > ``grace`` ago).

        Each returned record (with ``node``, ``incarnation`` and
        ``heartbeat_age`` added) is claimed in the same atomic step, so one
        caller fleet-wide gets each dead incarnation, and the incarnation is
        fenced: ``node_register`` refuses it from then on. A claimed record is
        dropped once a caller gives its ``(node, incarnation)`` back in
        ``done`` (the next call, no round trip of its own); until then it is
        hidden, and handed out again after ``REAP_RECLAIM`` s (its claimer died
        before it was done, or the reply of the claim was lost with the
        store). Sorted by node, oldest first.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...

    # -- GPU memory reservations ----------------------------------------------
    def gpu_reserve(
        self, gpu: str, reservation: str, *, mb: int, capacity_mb: int, ttl: float
    ) -> bool:
        """Reserve ``mb`` on GPU ``gpu`` for ``ttl`` s when its live reservations leave room.

        True (reserved) when the MB already reserved on ``gpu`` by other live
        reservations plus ``mb`` is at most ``capacity_mb``; atomic, so two
        senders racing for the last room cannot both get it.
        """
        ...

    def gpu_reservations(self) -> dict[str, int]:
        """MB reserved per GPU UUID over live (unexpired) reservations."""

    # -- quarantine -----------------------------------------------------------
    def quarantine_add(
        self, entry_id: str, record: Mapping[str, Any], *, ttl: float, max_entries: int
    ) -> list[str]:
        """Keep ``record`` (JSON-safe) as ``entry_id`` for ``ttl``; returns the ids evicted.

        Adding an id again replaces its record. Expired entries go first, then
        the oldest beyond ``max_entries``.
        """
        ...

    def quarantine_list(self) -> list[QuarantineEntry]:
        """The live quarantined messages, oldest first (no write)."""
        ...

    def quarantine_get(self, entry_id: str) -> QuarantineEntry | None:
        """One live quarantined message, or None (no write)."""
        ...

    def quarantine_remove(self, entry_id: str) -> QuarantineEntry | None:
        """Take one message out of the quarantine; returns it (None when it was not there)."""
        ...

    def quarantine_note(
        self, task_id: str, crash: Mapping[str, Any], *, ttl: float, max_entries: int
    ) -> None:
        """Append one crash (JSON-safe) to ``task_id``'s history, newest ``max_entries`` kept."""
        ...

    def quarantine_history(self, task_id: str) -> list[dict[str, Any]]:
        """``task_id``'s crash history, oldest first (no write)."""
        ...

    def quarantine_forget(self, task_id: str) -> None:
        """Drop ``task_id``'s crash ledger and crash history: a replay counts its crashes afresh."""
        ...
