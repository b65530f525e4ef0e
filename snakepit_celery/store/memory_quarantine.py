"""Quarantine and GPU-memory reservations of ``MemoryStore`` (a mixin).

``MemoryQuarantine`` holds the quarantined messages, the per-task crash
histories and the GPU reservations of an in-process store; ``MemoryStore``
provides the lock, the clock and the crash ledgers these operations share.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

from snakepit_celery.store.memory_state import ForkSafeRLock, LedgerState
from snakepit_celery.store.records import QuarantineEntry

__all__ = ["MemoryQuarantine"]


class MemoryQuarantine:
    """Quarantine and GPU-reservation operations of ``MemoryStore``."""

    _lock: ForkSafeRLock
    _ledgers: dict[str, LedgerState]
    _quarantine: dict[str, QuarantineEntry]
    # task id -> (expiry, crash history)
    _crash_history: dict[str, tuple[float, list[dict[str, Any]]]]

    @abstractmethod
    def now(self) -> float:
        """The store's clock."""

    # -- GPU memory reservations ----------------------------------------------
    def gpu_reserve(
        self, gpu: str, reservation: str, *, mb: int, capacity_mb: int, ttl: float
    ) -> bool:
        """Reserve ``mb`` on ``gpu`` when its live reservations leave room (see ``Store``)."""
        with self._lock:
            now = self.now()
            live = self._gpu_live(now)
            taken = sum(size for (g, r), (size, _) in live.items() if g == gpu and r != reservation)
            if taken + mb > capacity_mb:
                return False
            live[(gpu, reservation)] = (int(mb), now + ttl)
            self._reservations = live
            return True

    def gpu_reservations(self) -> dict[str, int]:
        """MB reserved per GPU over live reservations."""
        with self._lock:
            totals: dict[str, int] = {}
            for (gpu, _), (size, _) in self._gpu_live(self.now()).items():
                totals[gpu] = totals.get(gpu, 0) + size
            return totals

    def _gpu_live(self, now: float) -> dict[tuple[str, str], tuple[int, float]]:
        reservations: dict[tuple[str, str], tuple[int, float]] = getattr(self, "_reservations", {})
        return {key: value for key, value in reservations.items() if value[1] > now}

    # -- quarantine ---------------------------------------------------------------
    def _live_quarantine(self, now: float) -> list[QuarantineEntry]:
        for entry_id in [i for i, e in self._quarantine.items() if e.expires_at <= now]:
            del self._quarantine[entry_id]
        return sorted(self._quarantine.values(), key=lambda e: (e.expires_at, e.entry_id))

    def quarantine_add(
        self, entry_id: str, record: Mapping[str, Any], *, ttl: float, max_entries: int
    ) -> list[str]:
        """Keep ``record`` as ``entry_id`` until now+``ttl``; returns the ids evicted."""
        with self._lock:
            now = self.now()
            self._live_quarantine(now)
            copied = json.loads(json.dumps(dict(record), default=str))
            self._quarantine[entry_id] = QuarantineEntry(entry_id, now, now + ttl, copied)
            live = self._live_quarantine(now)
            evicted = [e.entry_id for e in live[: max(0, len(live) - max(1, max_entries))]]
            for gone in evicted:
                del self._quarantine[gone]
            return evicted

    def quarantine_list(self) -> list[QuarantineEntry]:
        """The live quarantined messages, oldest first."""
        with self._lock:
            return sorted(self._live_quarantine(self.now()), key=lambda e: e.quarantined_at)

    def quarantine_get(self, entry_id: str) -> QuarantineEntry | None:
        """One live quarantined message, or None."""
        with self._lock:
            self._live_quarantine(self.now())
            return self._quarantine.get(entry_id)

    def quarantine_remove(self, entry_id: str) -> QuarantineEntry | None:
        """Take one message out of the quarantine; returns it, or None."""
        with self._lock:
            self._live_quarantine(self.now())
            return self._quarantine.pop(entry_id, None)

    def quarantine_note(
        self, task_id: str, crash: Mapping[str, Any], *, ttl: float, max_entries: int
    ) -> None:
        """Append one crash to ``task_id``'s history (newest ``max_entries`` kept)."""
        with self._lock:
            now = self.now()
            expires, history = self._crash_history.get(task_id, (0.0, []))
            if expires <= now:
                history = []
            history = [*history, json.loads(json.dumps(dict(crash), default=str))]
            self._crash_history[task_id] = (now + ttl, history[-max(1, max_entries) :])

    def quarantine_history(self, task_id: str) -> list[dict[str, Any]]:
        """``task_id``'s crash history, oldest first."""
        with self._lock:
            expires, history = self._crash_history.get(task_id, (0.0, []))
            return list(history) if expires > self.now() else []

    def quarantine_forget(self, task_id: str) -> None:
        """Drop ``task_id``'s crash ledger and crash history (its replay counts afresh)."""
        with self._lock:
            self._ledgers.pop(task_id, None)
            self._crash_history.pop(task_id, None)
