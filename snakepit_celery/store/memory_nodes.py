"""The node registry of ``MemoryStore`` (a mixin).

``MemoryNodes`` keeps the live node records, their incarnations' copies (for
``node_reap``) and the reaped incarnations' fences; ``MemoryStore`` provides
the lock and the clock.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from snakepit_celery.store.base import (
    DEFAULT_GROUP,
    NODE_RETENTION,
    REAP_RECLAIM,
    STORE_SILENCE,
    node_incarnation,
)
from snakepit_celery.store.memory_state import ForkSafeRLock

__all__ = ["MemoryNodes"]


class MemoryNodes:
    """Node-registry operations of ``MemoryStore``."""

    _lock: ForkSafeRLock
    # (group, node) -> (heartbeat, expiry, record, incarnation)
    _nodes: dict[tuple[str, str], tuple[float, float, dict[str, Any], str]]
    # (group, node, incarnation) -> (heartbeat, expiry, record): kept NODE_RETENTION past expiry;
    # a claimed one's expiry is moved REAP_RECLAIM ahead (handed out again unless done by then)
    _incarnations: dict[tuple[str, str, str], tuple[float, float, dict[str, Any]]]
    # (group, node, incarnation) -> when node_reap claimed it (fenced for NODE_RETENTION)
    _reaped: dict[tuple[str, str, str], float]
    # group -> store time of its last node write (``_resume``)
    _pulse: dict[str, float]

    @abstractmethod
    def now(self) -> float:
        """The store's clock."""

    # -- node registry --------------------------------------------------------
    def _prune_incarnations(self, now: float) -> None:
        cutoff = now - NODE_RETENTION
        for key in [k for k, (_, exp, _) in self._incarnations.items() if exp <= cutoff]:
            del self._incarnations[key]
        for key in [k for k, reaped_at in self._reaped.items() if reaped_at <= cutoff]:
            del self._reaped[key]

    def _resume(self, group: str, now: float) -> None:
        """Forgive a silence of the group longer than ``STORE_SILENCE`` (see ``_common.lua``)."""
        pulse = self._pulse.get(group)
        self._pulse[group] = now
        if pulse is None or now - pulse <= STORE_SILENCE:
            return
        silence = now - pulse
        for key, (beat, exp, record, incarnation) in list(self._nodes.items()):
            if key[0] == group and exp > pulse:
                self._nodes[key] = (beat, exp + silence, record, incarnation)
        for ikey, (beat, exp, record) in list(self._incarnations.items()):
            if ikey[0] == group and exp > pulse:
                self._incarnations[ikey] = (beat, exp + silence, record)

    def node_register(
        self, node: str, data: Mapping[str, Any], *, ttl: float, group: str = DEFAULT_GROUP
    ) -> bool:
        """Write (or refresh) a node's record; it vanishes ``ttl`` after the last refresh.

        Its incarnation's copy stays ``NODE_RETENTION`` longer, for ``node_reap``.
        False (nothing written) when this incarnation was reaped: it is fenced.
        """
        with self._lock:
            now = self.now()
            record = json.loads(json.dumps(dict(data), default=str))
            incarnation = node_incarnation(data)
            if (group, node, incarnation) in self._reaped:
                return False
            self._resume(group, now)
            self._nodes[(group, node)] = (now, now + ttl, record, incarnation)
            self._incarnations[(group, node, incarnation)] = (now, now + ttl, record)
            self._prune_incarnations(now)
            return True

    def node_list(self, *, group: str = DEFAULT_GROUP) -> list[dict[str, Any]]:
        """Records of the group's live nodes (with ``node`` and ``heartbeat_age``), by name."""
        with self._lock:
            now = self.now()
            for key in [k for k, (_, exp, _, _) in self._nodes.items() if exp <= now]:
                del self._nodes[key]
            return [
                {**record, "node": node, "heartbeat_age": max(0.0, now - beat)}
                for (owner, node), (beat, _, record, _) in sorted(self._nodes.items())
                if owner == group
            ]

    def node_remove(self, node: str, *, group: str = DEFAULT_GROUP) -> None:
        """Drop a node's record and its current incarnation's (clean shutdown)."""
        with self._lock:
            entry = self._nodes.pop((group, node), None)
            if entry is not None:
                self._incarnations.pop((group, node, entry[3]), None)

    def node_reap(
        self,
        *,
        grace: float,
        group: str = DEFAULT_GROUP,
        done: Iterable[tuple[str, str]] = (),
    ) -> list[dict[str, Any]]:
        """Claim the last records of the group's incarnations expired > ``grace`` ago."""
        with self._lock:
            for node, incarnation in done:
                self._incarnations.pop((group, node, incarnation), None)
            now = self.now()
            self._resume(group, now)
            self._prune_incarnations(now)
            cutoff = now - max(0.0, grace)
            dead = sorted(
                (
                    key
                    for key, (_, exp, _) in self._incarnations.items()
                    if key[0] == group and exp <= cutoff
                ),
                key=lambda key: (key[1], self._incarnations[key][0]),
            )
            claimed = []
            for key in dead:
                beat, _, record = self._incarnations[key]
                self._incarnations[key] = (beat, now + REAP_RECLAIM, record)
                self._reaped[key] = now
                claimed.append(
                    {
                        **record,
                        "node": key[1],
                        "incarnation": key[2],
                        "heartbeat_age": max(0.0, now - beat),
                    }
                )
            return claimed
