"""Taints as values: what a taint keeps work away from, and its key in the store (pure).

A worker taint is the member ``worker:<id>``; a device taint is
``device:<node>:<key>``, keyed by the GPU's UUID where known (NVML ignores
``CUDA_VISIBLE_DEVICES``, so indices differ between processes), else by its
string form ``cuda:0``. ``Taint`` is one active taint as read back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from snakepit_celery.policy.crash import Classification, classification_or_none

if TYPE_CHECKING:
    from snakepit_celery.hardware.types import Device
    from snakepit_celery.store.records import TaintRecord

__all__ = ["Taint", "TaintKind", "device_key", "device_member", "worker_member"]


class TaintKind(StrEnum):
    """What a taint keeps work away from."""

    WORKER = "worker"
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class Taint:
    """One active taint of the barrier's pool.

    A worker taint has ``worker_id``; a device taint has ``node`` and
    ``device`` (its string form, e.g. ``"cuda:0"``) and ``uuid`` when the GPU's
    UUID was known. ``expires_at`` is epoch seconds on the store's clock,
    ``remaining`` seconds from the moment the taints were read.
    """

    kind: TaintKind
    worker_id: str | None
    node: str | None
    device: str | None
    expires_at: float
    remaining: float
    classification: Classification | None
    reason: str | None
    uuid: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict; keys are the field names."""
        classification = None if self.classification is None else str(self.classification)
        return {**asdict(self), "kind": str(self.kind), "classification": classification}

    @classmethod
    def from_record(cls, record: TaintRecord) -> Taint:
        """Read a store record (``worker:<id>`` / ``device:<node>:<key>`` plus its details)."""
        details = record.details
        kind_text, _, rest = record.member.partition(":")
        classification = classification_or_none(details.get("classification"))
        reason = details.get("reason")
        expires_at = record.expires_at
        remaining = max(0.0, record.remaining)
        text = None if reason is None else str(reason)
        if kind_text == TaintKind.WORKER:
            worker_device = _opt_str(details.get("device"))
            return cls(
                TaintKind.WORKER,
                rest,
                None,
                worker_device,
                expires_at,
                remaining,
                classification,
                text,
            )
        node, _, key = rest.partition(":")
        return cls(
            TaintKind.DEVICE,
            None,
            _opt_str(details.get("node")) or node,
            _opt_str(details.get("device")) or key,
            expires_at,
            remaining,
            classification,
            text,
            uuid=_opt_str(details.get("uuid")),
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def device_key(device: Device | str) -> str:
    """The store key of a device: its GPU UUID where known, else its string form ("cuda:0").

    NVML lists GPUs in PCI order and ignores ``CUDA_VISIBLE_DEVICES``, so an
    index means different GPUs in different processes; a UUID does not.
    """
    uuid = getattr(device, "uuid", None)
    if isinstance(uuid, str) and uuid:
        return uuid
    return str(device)


def worker_member(worker_id: str) -> str:
    """Taint member of a worker: ``worker:<id>``."""
    return f"worker:{worker_id}"


def device_member(node: str, device: Device | str) -> str:
    """Taint member of a device: ``device:<node>:<uuid or cuda:N>``."""
    return f"device:{node}:{device_key(device)}"
