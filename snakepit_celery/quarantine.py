"""The quarantine: messages the crash barrier stopped for good, kept to look at and replay.

A task that reached ``max_restarts`` (or that its barrier may not re-run), and
a message that kills the worker's main process, are not simply dropped: the
message (body, headers, properties, where it was routed) goes into a bounded
quarantine in the store with the task's crash history (classification,
node, device of each crash), for ``quarantine_ttl`` seconds and at most
``quarantine_max_entries`` messages (the oldest go first), and the
``task_quarantined`` signal is sent (a Celery event through the bridge).
``celery -A proj snakepit quarantine`` lists, shows, replays and drops them.

This module holds what needs no Celery: the message as stored
(:class:`QuarantinedMessage`) and :class:`Quarantine` over a ``Store``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from snakepit_celery import signals
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.store.base import Store
from snakepit_celery.store.records import QuarantineEntry

__all__ = [
    "REASON_KILLED_NODES",
    "REASON_MALFORMED",
    "REASON_STOPPED",
    "Quarantine",
    "QuarantinedMessage",
    "message_digest",
]

logger = logging.getLogger(__name__)

#: The crash barrier ended the task (``max_restarts`` reached, or no re-run allowed).
REASON_STOPPED = "stopped"
#: The message itself made the worker's main process fail.
REASON_MALFORMED = "malformed"
#: More than ``max_restarts`` nodes whose main process stopped with an error held it.
REASON_KILLED_NODES = "killed_nodes"


@dataclass(frozen=True)
class QuarantinedMessage:
    """A broker message as it is stored, enough to publish it again unchanged.

    ``body`` is the encoded body as text: itself when it was text, else base64
    (``body_encoding="base64"``).
    """

    body: str
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    headers: Mapping[str, Any] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)
    exchange: str = ""
    routing_key: str = ""
    body_encoding: str = "text"

    @classmethod
    def of(
        cls, body: bytes | str, *, headers: Mapping[str, Any], **fields: Any
    ) -> QuarantinedMessage:
        """The stored form of a message whose encoded body is ``body``."""
        fields["properties"] = _json_safe(fields.get("properties") or {})
        if isinstance(body, bytes):
            try:
                return cls(body.decode("utf-8"), headers=_json_safe(headers), **fields)
            except UnicodeDecodeError:
                encoded = base64.b64encode(body).decode("ascii")
                return cls(encoded, headers=_json_safe(headers), body_encoding="base64", **fields)
        return cls(str(body), headers=_json_safe(headers), **fields)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuarantinedMessage:
        """Read back ``as_dict()``."""
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict that ``from_dict`` reads back."""
        data: dict[str, Any] = _json_safe(asdict(self))
        return data

    def raw_body(self) -> bytes | str:
        """The encoded body as it was published."""
        if self.body_encoding == "base64":
            return base64.b64decode(self.body)
        return self.body


def message_digest(body: bytes | str, headers: Mapping[str, Any]) -> str:
    """A stable id for a message without a usable task id: ``msg-<16 hex>``."""
    raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
    canonical = json.dumps(_json_safe(headers), sort_keys=True).encode()
    return "msg-" + hashlib.sha256(canonical + b"\0" + raw).hexdigest()[:16]


class Quarantine:
    """The quarantine of one crash barrier configuration, on ``store``."""

    def __init__(self, store: Store, config: CrashBarrierConfig) -> None:
        self.store = store
        self.config = config

    def __repr__(self) -> str:
        return (
            f"Quarantine(ttl={self.config.quarantine_ttl}, "
            f"max_entries={self.config.quarantine_max_entries})"
        )

    def note_crash(self, task_id: str, crash: Mapping[str, Any]) -> None:
        """Add one crash to the task's history (kept for its quarantine record)."""
        if self.config.quarantine:
            self.store.quarantine_note(
                task_id,
                _json_safe(crash),
                ttl=self.config.quarantine_ttl,
                max_entries=self.config.max_restarts + 2,
            )

    def add(
        self,
        entry_id: str,
        message: QuarantinedMessage,
        *,
        reason: str,
        node: str,
        error: str,
        crashes: int = 0,
        task_id: str | None = None,
    ) -> bool:
        """Keep ``message`` (with the task's crash history); False when the quarantine is off."""
        if not self.config.quarantine:
            return False
        task_name = str(message.headers.get("task") or "") or None
        history = self.store.quarantine_history(task_id) if task_id else []
        record = {
            "task_id": task_id,
            "task": task_name,
            "reason": reason,
            "node": node,
            "error": error,
            "crashes": crashes,
            "history": history,
            "message": message.as_dict(),
        }
        evicted = self.store.quarantine_add(
            entry_id,
            record,
            ttl=self.config.quarantine_ttl,
            max_entries=self.config.quarantine_max_entries,
        )
        logger.error(
            "message %s (task %s) quarantined on %s: %s",
            entry_id,
            task_name,
            node,
            error,
            extra={"entry_id": entry_id, "task_id": task_id, "reason": reason, "evicted": evicted},
        )
        signals.task_quarantined.send(
            sender=self,
            entry_id=entry_id,
            task_id=task_id,
            task_name=task_name,
            reason=reason,
            crashes=crashes,
            node=node,
        )
        return True

    def entries(self) -> list[QuarantineEntry]:
        """Every live quarantined message, oldest first."""
        return self.store.quarantine_list()

    def get(self, entry_id: str) -> QuarantineEntry | None:
        """One quarantined message, or None."""
        return self.store.quarantine_get(entry_id)

    def drop(self, entry_id: str) -> QuarantineEntry | None:
        """Delete one quarantined message; returns it (None when it was not there)."""
        return self.store.quarantine_remove(entry_id)


def _json_safe(value: Any) -> Any:
    """``value`` through JSON (``str`` for what JSON cannot hold)."""
    return json.loads(json.dumps(value, default=str))
