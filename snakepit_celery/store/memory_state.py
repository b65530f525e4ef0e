"""What ``MemoryStore`` keeps per object: breaker and ledger state, each pool's ``CrashLog``
and ``TaintTable``; and the ``ForkSafeRLock`` that makes every operation atomic.

A ``CrashLog`` follows the model of a pool's Redis keys: crashes kept oldest
first (pruned to the window and capped), each worker's crashes, and each
worker's latest kept crash, so that counts inside the window are binary
searches and a crash costs O(log n) plus O(1) per crash it prunes.
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from snakepit_celery.store.records import TaintRecord, WorkerCrashes

__all__ = ["BreakerState", "CrashLog", "ForkSafeRLock", "LedgerState", "TaintTable"]

#: One crash: (time, sequence number, worker id); sequence numbers break time ties.
Crash = tuple[float, int, str]


class ForkSafeRLock:
    """A re-entrant lock that a forked child gets back unlocked.

    A fork while another thread held it must not leave the child's copy held
    forever (prefork pools fork from threaded parents).
    """

    _all: weakref.WeakSet[ForkSafeRLock] = weakref.WeakSet()

    def __init__(self) -> None:
        self._lock = threading.RLock()
        ForkSafeRLock._all.add(self)

    def __enter__(self) -> bool:
        return self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()

    @classmethod
    def reinit_all(cls) -> None:
        """Give every lock of this process a fresh, unlocked ``RLock`` (after a fork)."""
        for lock in list(cls._all):
            lock._lock = threading.RLock()


os.register_at_fork(after_in_child=ForkSafeRLock.reinit_all)


@dataclass
class BreakerState:
    """One breaker: state, counts, when it opened, and half-open probe leases (token -> expiry)."""

    state: str = "closed"
    failures: int = 0
    successes: int = 0
    opened_at: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)
    #: The breaker's configuration, stored by its first ``breaker_record`` that gave one.
    config: dict[str, Any] | None = None

    def judged(self, name: str, given: float) -> float:
        """The stored configuration's number ``name``, else ``given``."""
        return float(self.config[name]) if self.config and name in self.config else given

    def purge_leases(self, now: float) -> None:
        """Drop probe leases that expired by ``now``."""
        for token in [t for t, expiry in self.leases.items() if expiry <= now]:
            del self.leases[token]


@dataclass
class LedgerState:
    """The crash ledger of one task (see ``LedgerEntry``), with its lease and expiry."""

    starts: int = 0
    finishes: int = 0
    crashes: int = 0
    running_on: str | None = None
    lease_until: float = 0.0
    #: When ``running_on`` last took or renewed its lease.
    lease_at: float = 0.0
    expires_at: float = 0.0
    #: A node gave the message back unstarted; the next delivery is no crash.
    released: bool = False
    #: The running delivery followed such a give-back.
    released_run: bool = False
    #: Nodes that stopped with an error while holding the message unstarted.
    deaths: int = 0

    def hold(self, worker_id: str, lease: float, now: float) -> None:
        """``worker_id`` takes or renews the lease until ``now + lease``."""
        self.running_on, self.lease_until, self.lease_at = worker_id, now + lease, now

    def let_go(self) -> None:
        """No worker holds the lease."""
        self.running_on, self.lease_until, self.lease_at = None, 0.0, 0.0

    def held_for(self, now: float) -> float | None:
        """Seconds since the live lease was taken or renewed (None without one)."""
        if self.running_on is None or self.lease_until <= now:
            return None
        return max(0.0, now - self.lease_at)


def _time(item: tuple[Any, ...]) -> float:
    return float(item[0])


class _Queue:
    """Items in ascending order, removed from the front (amortized O(1)); O(log n) counts."""

    __slots__ = ("_head", "_items")

    def __init__(self) -> None:
        self._items: list[Crash] = []
        self._head = 0

    def __len__(self) -> int:
        return len(self._items) - self._head

    def add(self, item: Crash) -> None:
        if not self or item >= self._items[-1]:
            self._items.append(item)
        else:
            bisect.insort(self._items, item, lo=self._head)

    def first(self) -> Crash:
        return self._items[self._head]

    def last(self) -> Crash:
        return self._items[-1]

    def pop_first(self) -> Crash:
        item = self._items[self._head]
        self._head += 1
        if self._head > 64 and 2 * self._head > len(self._items):
            del self._items[: self._head]
            self._head = 0
        return item

    def count_after(self, cutoff: float) -> int:
        """How many items have a time later than ``cutoff``."""
        start = bisect.bisect_right(self._items, cutoff, lo=self._head, key=_time)
        return len(self._items) - start


class CrashLog:
    """One pool's crashes: lifetime ``total``, kept crashes, per-worker indexes."""

    def __init__(self) -> None:
        self.total = 0
        self.expires_at = 0.0
        self._seq = 0
        self._crashes = _Queue()
        self._by_worker: dict[str, _Queue] = {}
        #: Each worker's latest kept crash, sorted: workers with a crash after a cutoff.
        self._latest: list[Crash] = []
        #: The pool's configuration, stored by its first ``health_record`` that gave one.
        self.config: dict[str, Any] | None = None

    def window(self, given: float) -> float:
        """The stored configuration's ``crash_window``, else ``given``."""
        return float(self.config["crash_window"]) if self.config else given

    def add(self, now: float, worker: str) -> None:
        """Record one crash of ``worker`` at ``now``."""
        self._seq += 1
        self.total += 1
        crash = (now, self._seq, worker)
        self._crashes.add(crash)
        mine = self._by_worker.setdefault(worker, _Queue())
        if mine:
            self._forget_latest(mine.last())
        mine.add(crash)
        bisect.insort(self._latest, mine.last())

    def prune(self, cutoff: float, cap: int) -> None:
        """Drop crashes at or before ``cutoff``, then the oldest beyond ``cap``."""
        crashes = self._crashes
        while crashes and (crashes.first()[0] <= cutoff or len(crashes) > cap):
            _, _, worker = crashes.pop_first()
            mine = self._by_worker[worker]
            latest = mine.last()
            mine.pop_first()
            if not mine:
                self._forget_latest(latest)
                del self._by_worker[worker]

    def _forget_latest(self, crash: Crash) -> None:
        index = bisect.bisect_left(self._latest, crash)
        del self._latest[index]

    @property
    def kept(self) -> int:
        """How many crashes are kept."""
        return len(self._crashes)

    @property
    def workers(self) -> int:
        """How many workers have a kept crash."""
        return len(self._latest)

    def in_window(self, cutoff: float) -> int:
        """Kept crashes later than ``cutoff``."""
        return self._crashes.count_after(cutoff)

    def workers_in_window(self, cutoff: float) -> int:
        """Workers with a kept crash later than ``cutoff``."""
        return len(self._latest) - bisect.bisect_right(self._latest, cutoff, key=_time)

    def worker(self, worker: str, cutoff: float) -> WorkerCrashes:
        """Kept crashes of ``worker`` later than ``cutoff``, and the latest one's time."""
        mine = self._by_worker.get(worker)
        count = mine.count_after(cutoff) if mine else 0
        return WorkerCrashes(count, mine.last()[0] if mine and count else None)


class TaintTable:
    """One pool's taints: member -> (expiry, details); expired ones count as absent."""

    def __init__(self) -> None:
        self._taints: dict[str, tuple[float, dict[str, Any]]] = {}

    def any_live(self, now: float) -> bool:
        """True while some taint has not expired."""
        return any(expires > now for expires, _ in self._taints.values())

    def set(self, member: str, now: float, duration: float, details: Mapping[str, Any]) -> bool:
        """Taint ``member`` for ``duration`` (never shortening a live taint); True when new."""
        taints = self._taints
        old = taints.get(member)
        fresh = old is None or old[0] <= now
        expires = now + duration if fresh or old is None else max(old[0], now + duration)
        taints[member] = (expires, json.loads(json.dumps(dict(details), default=str)))
        return fresh

    def live(self, now: float) -> list[TaintRecord]:
        """Drop expired taints; the others, soonest expiry first."""
        taints = self._taints
        for member in [m for m, (exp, _) in taints.items() if exp <= now]:
            del taints[member]
        return [
            TaintRecord(member, exp, exp - now, details)
            for member, (exp, details) in sorted(taints.items(), key=lambda kv: kv[1][0])
        ]

    def active(self, member: str, now: float) -> bool:
        """True while ``member`` is tainted."""
        entry = self._taints.get(member)
        return entry is not None and entry[0] > now

    def clear(self, member: str | None, now: float) -> int:
        """Lift one taint (or all with ``member`` None); how many were live."""
        taints = self._taints
        if member is None:
            cleared = sum(1 for exp, _ in taints.values() if exp > now)
            taints.clear()
            return cleared
        entry = taints.pop(member, None)
        return 1 if entry is not None and entry[0] > now else 0
