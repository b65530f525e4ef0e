"""``MemoryStore``: the ``Store`` protocol inside one process.

Same semantics as ``RedisStore`` (the store tests run against both), with
``time.time()`` as the clock and one lock making every operation atomic.
Useful outside Celery and for tests of the parts above the store; state is
not shared between processes.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from snakepit_celery.store.memory_nodes import MemoryNodes
from snakepit_celery.store.memory_quarantine import MemoryQuarantine
from snakepit_celery.store.memory_state import (
    BreakerState,
    CrashLog,
    ForkSafeRLock,
    LedgerState,
    TaintTable,
)
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

__all__ = ["MemoryStore"]

#: Lifetime crash totals outlive the crash window by this much (seconds).
TOTAL_TTL = 7 * 24 * 3600.0


class MemoryStore(MemoryNodes, MemoryQuarantine):
    """In-process ``Store`` (``memory://``): atomic by a lock, clock ``time.time()``."""

    #: URL schemes this backend serves (see ``store.registry``).
    URL_SCHEMES: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self, url: str = "memory://", *, key_prefix: str = "snakepit") -> None:
        self.url = url
        self.key_prefix = key_prefix
        self._lock = ForkSafeRLock()
        self._tokens = itertools.count(1)
        self._breakers: dict[str, BreakerState] = {}
        self._pools: dict[str, CrashLog] = {}
        self._taints: dict[str, TaintTable] = {}
        self._ledgers: dict[str, LedgerState] = {}
        self._nodes: dict[tuple[str, str], tuple[float, float, dict[str, Any], str]] = {}
        self._incarnations: dict[tuple[str, str, str], tuple[float, float, dict[str, Any]]] = {}
        self._reaped: dict[tuple[str, str, str], float] = {}
        self._pulse: dict[str, float] = {}
        self._quarantine: dict[str, QuarantineEntry] = {}
        self._crash_history: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    def __repr__(self) -> str:
        return f"MemoryStore(url={self.url!r}, key_prefix={self.key_prefix!r})"

    def _reinit_lock(self) -> None:
        self._lock = ForkSafeRLock()

    def now(self) -> float:
        """The store's clock: this process's ``time.time()``."""
        return time.time()

    def ping(self) -> bool:
        """Always True: the store lives in this process."""
        return True

    # -- inspection ---------------------------------------------------------------
    def breaker_names(self) -> list[str]:
        """Names of the breakers with state in the store."""
        with self._lock:
            return sorted(self._breakers)

    def pool_names(self) -> list[str]:
        """Pools with crash records or taints in the store."""
        with self._lock:
            now = self.now()
            pools = {p for p, hp in self._pools.items() if hp.expires_at > now}
            tainted = {p for p, t in self._taints.items() if t.any_live(now)}
            return sorted(pools | tainted)

    # -- circuit breaker ------------------------------------------------------
    def breaker_acquire(
        self, name: str, *, reset_timeout: float, half_open_max_calls: int, probe_ttl: float
    ) -> BreakerDecision:
        """Ask to make a call; in half-open this takes a probe slot (lease of ``probe_ttl``)."""
        with self._lock:
            now = self.now()
            br = self._breakers.get(name)
            if br is None or br.state == "closed":
                return BreakerDecision(True, "closed", failures=br.failures if br else 0)
            transition = None
            if br.state == "open":
                remaining = br.opened_at + br.judged("reset_timeout", reset_timeout) - now
                if remaining > 0:
                    return BreakerDecision(
                        False, "open", retry_after=remaining, failures=br.failures
                    )
                br.state = "half_open"
                br.leases.clear()
                transition = "half_open"
            br.purge_leases(now)
            if len(br.leases) < br.judged("half_open_max_calls", half_open_max_calls):
                token = f"{now:.6f}:{next(self._tokens)}"
                br.leases[token] = now + probe_ttl
                return BreakerDecision(
                    True, "half_open", probe=token, transition=transition, failures=br.failures
                )
            retry_after = max(0.0, min(br.leases.values(), default=now) - now)
            return BreakerDecision(
                False,
                "half_open",
                retry_after=retry_after,
                transition=transition,
                failures=br.failures,
            )

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

        ``config`` is stored with the breaker unless one is (the first wins).
        """
        with self._lock:
            now = self.now()
            br = self._breakers.setdefault(name, BreakerState())
            if br.config is None and config is not None:
                br.config = json.loads(json.dumps(dict(config)))
            if probe is not None:
                br.leases.pop(probe, None)
            transition = None
            if success:
                br.successes += count
                if br.state == "half_open":
                    transition = "closed"
                    br.leases.clear()
                if br.state != "open":
                    br.state = "closed"
                    br.failures = 0
            else:
                br.failures += count
                threshold = br.judged("failure_threshold", failure_threshold)
                if (br.state == "closed" and br.failures >= threshold) or (br.state == "half_open"):
                    br.state = "open"
                    br.opened_at = now
                    br.leases.clear()
                    transition = "opened"
            return BreakerRecord(br.state, br.failures, transition, br.config)

    def breaker_peek(self, name: str, *, reset_timeout: float) -> BreakerSnapshot:
        """Current state without side effects (open past its timeout reads half_open)."""
        with self._lock:
            now = self.now()
            br = self._breakers.get(name)
            if br is None:
                return BreakerSnapshot("closed", 0, 0, 0, 0.0)
            state, retry_after = br.state, 0.0
            if state == "open":
                retry_after = br.opened_at + br.judged("reset_timeout", reset_timeout) - now
                if retry_after <= 0:
                    state, retry_after = "half_open", 0.0
            live = (
                sum(1 for exp in br.leases.values() if exp > now) if br.state == "half_open" else 0
            )
            return BreakerSnapshot(state, br.failures, br.successes, live, retry_after, br.config)

    def breaker_reset(self, name: str) -> str:
        """Forget everything about the breaker (closed, zero counts); return its state before."""
        with self._lock:
            br = self._breakers.pop(name, None)
            return br.state if br is not None else "closed"

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
        """Record one crash; the result's ``workers`` holds only ``worker_id``.

        ``config`` is stored with the pool unless one is (the first wins).
        """
        with self._lock:
            now = self.now()
            log = self._pools.get(pool)
            if log is None or log.expires_at <= now:
                log = self._pools[pool] = CrashLog()
            if log.config is None and config is not None:
                log.config = json.loads(json.dumps(dict(config)))
            window = log.window(window)
            log.add(now, worker_id)
            log.expires_at = now + max(2 * window, TOTAL_TTL)
            log.prune(now - window, max(max_entries, 1))
            crashes = log.worker(worker_id, now - window)
            workers = {worker_id: replace(crashes, config=log.config)}
            return HealthSnapshot(log.total, log.kept, workers, log.workers, log.config)

    def _crash_log(self, pool: str, now: float) -> CrashLog | None:
        log = self._pools.get(pool)
        return None if log is None or log.expires_at <= now else log

    def health_stats(self, pool: str, *, window: float) -> HealthSnapshot:
        """Crash counts of ``pool`` inside the window (no write; O(log n), ``workers`` empty)."""
        with self._lock:
            now = self.now()
            log = self._crash_log(pool, now)
            if log is None:
                return HealthSnapshot(0, 0)
            cutoff = now - log.window(window)
            return HealthSnapshot(
                log.total,
                log.in_window(cutoff),
                workers_with_crashes=log.workers_in_window(cutoff),
                config=log.config,
            )

    def health_worker(self, pool: str, worker_id: str, *, window: float) -> WorkerCrashes:
        """Crashes of one worker inside the window (no write; O(log n))."""
        with self._lock:
            now = self.now()
            log = self._crash_log(pool, now)
            if log is None:
                return WorkerCrashes(0, None)
            crashes = log.worker(worker_id, now - log.window(window))
            return replace(crashes, config=log.config)

    # -- taints ---------------------------------------------------------------
    def taint_set(
        self, pool: str, member: str, *, duration: float, details: Mapping[str, Any]
    ) -> bool:
        """Taint ``member`` for ``duration``; True when it was not tainted before."""
        with self._lock:
            table = self._taints.setdefault(pool, TaintTable())
            return table.set(member, self.now(), duration, details)

    def taint_list(self, pool: str) -> list[TaintRecord]:
        """Active (unexpired) taints of ``pool``, soonest expiry first."""
        with self._lock:
            return self._taints.get(pool, TaintTable()).live(self.now())

    def taint_active(self, pool: str, member: str) -> bool:
        """True while ``member`` is tainted."""
        with self._lock:
            return self._taints.get(pool, TaintTable()).active(member, self.now())

    def taint_clear(self, pool: str, member: str | None = None) -> int:
        """Lift one taint (or all of ``pool`` when ``member`` is None); returns how many."""
        with self._lock:
            return self._taints.get(pool, TaintTable()).clear(member, self.now())

    # -- crash ledger ---------------------------------------------------------
    def _ledger(self, task_id: str, now: float) -> LedgerState | None:
        led = self._ledgers.get(task_id)
        if led is not None and led.expires_at <= now:
            del self._ledgers[task_id]
            return None
        return led

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
        """Record that ``worker_id`` starts an execution; returns the entry before it.

        An earlier start that never finished and whose lease ran out is counted
        as a crash first, then the count is raised to what the message proves. When another
        worker still holds a live lease nothing is written and the result's
        ``running_on`` names that worker: the caller must not run the task.
        """
        with self._lock:
            now = self.now()
            led = self._ledger(task_id, now) or LedgerState()
            self._ledgers[task_id] = led
            if led.running_on is not None:
                if led.lease_until > now and led.running_on != worker_id:
                    return LedgerEntry(
                        led.starts,
                        led.finishes,
                        led.crashes,
                        led.running_on,
                        held_for=led.held_for(now),
                    )
                if led.lease_until <= now:
                    led.crashes += 1
            led.crashes = max(led.crashes, known + int(came_back and not led.released))
            before = LedgerEntry(led.starts, led.finishes, led.crashes, None, led.released)
            led.released_run, led.released = led.released, False
            led.starts += 1
            led.hold(worker_id, lease, now)
            led.expires_at = now + ttl
            return before

    def ledger_hold(self, holds: Mapping[str, str], *, lease: float, ttl: float) -> list[bool]:
        """Take, extend or (``lease <= 0``) let go of running tasks' leases."""
        with self._lock:
            now = self.now()
            return [
                self._hold(task_id, worker, lease, ttl, now) for task_id, worker in holds.items()
            ]

    def _hold(self, task_id: str, worker_id: str, lease: float, ttl: float, now: float) -> bool:
        led = self._ledger(task_id, now)
        if lease <= 0:
            if led is not None and led.running_on == worker_id:
                led.let_go()
            return True
        if led is None:
            led = self._ledgers[task_id] = LedgerState()
        elif led.running_on not in (None, worker_id) and led.lease_until > now:
            return False
        led.hold(worker_id, lease, now)
        led.expires_at = max(led.expires_at, now + ttl)
        return True

    def ledger_finish(self, task_id: str) -> None:
        """Record that the running execution ended (any outcome)."""
        with self._lock:
            led = self._ledger(task_id, self.now())
            if led is not None:
                led.finishes += 1
                led.let_go()
                led.released_run = False

    def ledger_crash(self, task_id: str, *, ttl: float, holder: str | None = None) -> LedgerEntry:
        """Record that the running execution (``holder``'s only, if named) died; the entry after."""
        with self._lock:
            now = self.now()
            led = self._ledger(task_id, now) or LedgerState()
            if holder is not None and led.running_on != holder:
                return LedgerEntry(led.starts, led.finishes, led.crashes)
            self._ledgers[task_id] = led
            led.crashes += 1
            led.let_go()
            led.expires_at = now + ttl
            released = led.released or led.released_run
            led.released = led.released_run = False
            return LedgerEntry(led.starts, led.finishes, led.crashes, None, released)

    def ledger_release(self, task_id: str, *, ttl: float, died: bool = False) -> int:
        """Mark ``task_id``'s message given back unstarted; ``died`` counts a death (returned)."""
        with self._lock:
            now = self.now()
            led = self._ledger(task_id, now) or LedgerState()
            self._ledgers[task_id] = led
            led.released = True
            led.deaths += int(died)
            led.expires_at = max(led.expires_at, now + ttl)
            return led.deaths

    def ledger_get(self, task_id: str) -> LedgerEntry | None:
        """The entry for ``task_id``, or None."""
        with self._lock:
            now = self.now()
            led = self._ledger(task_id, now)
            if led is None:
                return None
            running = led.running_on if led.lease_until > now else None
            return LedgerEntry(
                led.starts, led.finishes, led.crashes, running, led.released, led.held_for(now)
            )

    def close(self) -> None:
        """Nothing to release."""
