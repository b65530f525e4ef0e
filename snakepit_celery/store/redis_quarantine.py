"""Quarantine and GPU-memory reservations of ``RedisStore`` (a mixin).

``RedisQuarantine`` runs the quarantine, crash-history and GPU-reservation
scripts; ``RedisStore`` adds the other operations of the ``Store`` protocol.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from snakepit_celery.store.records import QuarantineEntry
from snakepit_celery.store.redis_connect import RedisConnection
from snakepit_celery.store.redis_schema import (
    count_arg,
    quarantine_entry,
    seconds_arg,
    text,
    ttl_ms_arg,
)

__all__ = ["RedisQuarantine"]


class RedisQuarantine(RedisConnection):
    """Quarantine and GPU-reservation operations of ``RedisStore``."""

    # -- GPU memory reservations ----------------------------------------------
    def _gpu_keys(self) -> list[str]:
        return [self.key("gpumem"), self.key("gpumem", None, "mb")]

    def gpu_reserve(
        self, gpu: str, reservation: str, *, mb: int, capacity_mb: int, ttl: float
    ) -> bool:
        """Reserve ``mb`` on ``gpu`` when its live reservations leave room (see ``Store``)."""
        args = [
            gpu,
            reservation,
            count_arg("mb", mb),
            count_arg("capacity_mb", max(0, capacity_mb)),
            seconds_arg("ttl", ttl),
        ]
        return bool(self._run("gpu_reserve", self._gpu_keys(), args))

    def gpu_reservations(self) -> dict[str, int]:
        """MB reserved per GPU over live reservations."""
        reply = self._run("gpu_reservations", self._gpu_keys(), [])
        return {text(reply[i]): int(float(reply[i + 1])) for i in range(0, len(reply), 2)}

    # -- quarantine -----------------------------------------------------------
    def _quarantine_keys(self) -> list[str]:
        return [self.key("quarantine"), self.key("quarantine", part="records")]

    def quarantine_add(
        self, entry_id: str, record: Mapping[str, Any], *, ttl: float, max_entries: int
    ) -> list[str]:
        """Keep ``record`` as ``entry_id`` until now+``ttl``; returns the ids evicted."""
        payload = json.dumps(dict(record), default=str, sort_keys=True)
        reply = self._run(
            "quarantine_add",
            self._quarantine_keys(),
            [
                entry_id,
                seconds_arg("ttl", ttl),
                max(1, count_arg("max_entries", max_entries)),
                payload,
            ],
        )
        return [text(gone) for gone in reply[1:]]

    def _quarantine_entries(self, entry_id: str) -> list[QuarantineEntry]:
        reply = self._run("quarantine_list", self._quarantine_keys(), [entry_id])
        return [quarantine_entry(reply[i : i + 3]) for i in range(1, len(reply), 3)]

    def quarantine_list(self) -> list[QuarantineEntry]:
        """The live quarantined messages, oldest first."""
        return sorted(self._quarantine_entries(""), key=lambda e: e.quarantined_at)

    def quarantine_get(self, entry_id: str) -> QuarantineEntry | None:
        """One live quarantined message, or None."""
        found = self._quarantine_entries(entry_id) if entry_id else []
        return found[0] if found else None

    def quarantine_remove(self, entry_id: str) -> QuarantineEntry | None:
        """Take one message out of the quarantine; returns it, or None."""
        reply = self._run("quarantine_remove", self._quarantine_keys(), [entry_id])
        return quarantine_entry(reply[1:4]) if len(reply) > 1 else None

    def quarantine_note(
        self, task_id: str, crash: Mapping[str, Any], *, ttl: float, max_entries: int
    ) -> None:
        """Append one crash to ``task_id``'s history (newest ``max_entries`` kept)."""
        self._run(
            "quarantine_note",
            [self.key("task", task_id, "crashes")],
            [
                json.dumps(dict(crash), default=str, sort_keys=True),
                max(1, count_arg("max_entries", max_entries)),
                ttl_ms_arg(ttl),
            ],
        )

    def quarantine_history(self, task_id: str) -> list[dict[str, Any]]:
        """``task_id``'s crash history, oldest first."""
        reply = self._run("quarantine_history", [self.key("task", task_id, "crashes")], [])
        return [json.loads(text(item).partition("|")[2]) for item in reply]

    def quarantine_forget(self, task_id: str) -> None:
        """Drop ``task_id``'s crash ledger and crash history (its replay counts afresh)."""
        task = self.key("task", task_id)
        self._run("quarantine_forget", [task, f"{task}:crashes"], [])
