"""What this host offers at a glance: ``Capabilities`` flags and the ``AcceleratorDevice`` list.

The results of ``hardware.capabilities()`` and ``hardware.devices()``, both
derived from the detected ``HardwareInfo``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from snakepit_celery.hardware.types import Accelerator, Device

__all__ = ["AcceleratorDevice", "Capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """Boolean capability flags for quick checks (upstream ``capabilities/0``)."""

    cuda: bool
    mps: bool
    rocm: bool
    avx: bool
    avx2: bool
    avx512: bool
    cuda_version: str | None
    cudnn_version: str | None
    cudnn: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {
            "cuda": self.cuda,
            "mps": self.mps,
            "rocm": self.rocm,
            "avx": self.avx,
            "avx2": self.avx2,
            "avx512": self.avx512,
            "cuda_version": self.cuda_version,
            "cudnn_version": self.cudnn_version,
            "cudnn": self.cudnn,
        }


@dataclass(frozen=True)
class AcceleratorDevice:
    """One accelerator device of this host, as the routing layer lists it."""

    kind: Accelerator
    index: int | None
    uuid: str | None
    name: str
    memory_total_mb: int | None

    @property
    def device(self) -> Device:
        """The :class:`Device` for this entry (with its uuid)."""
        return Device(self.kind, self.index, self.uuid)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {
            "kind": self.kind.value,
            "index": self.index,
            "uuid": self.uuid,
            "name": self.name,
            "memory_total_mb": self.memory_total_mb,
        }
