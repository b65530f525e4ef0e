"""What ``MemoryStore`` keeps per object: breaker and ledger state, and each pool's ``CrashLog``.

A ``CrashLog`` follows the model of a pool's Redis keys: crashes kept oldest
first (pruned to the window and capped), each worker's crashes, and each
worker's latest kept crash, so that counts inside the window are binary
searches and a crash costs O(log n) plus O(1) per crash it prunes.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from snakepit_celery.store.base import WorkerCrashes

__all__ = ["BreakerState", "CrashLog", "LedgerState"]

#: One crash: (time, sequence number, worker id); sequence numbers break time ties.
Crash = tuple[float, int, str]


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
    expires_at: float = 0.0
    #: A node gave the message back unstarted; the next delivery is no crash.
    released: bool = False
    #: The running delivery followed such a give-back.
    released_run: bool = False


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
