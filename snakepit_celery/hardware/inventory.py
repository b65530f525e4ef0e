"""What this host offers at a glance: ``Capabilities`` flags and the ``AcceleratorDevice`` list.

The results of ``hardware.capabilities()`` and ``hardware.devices()``, both
derived from the detected ``HardwareInfo``.
"""

from __future__ import annotations

from dataclasses import dataclass

from snakepit_celery.hardware.shape import PlainData
from snakepit_celery.hardware.types import Accelerator, Device

__all__ = ["AcceleratorDevice", "Capabilities"]


@dataclass(frozen=True)
class Capabilities(PlainData):
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


@dataclass(frozen=True)
class AcceleratorDevice(PlainData):
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
