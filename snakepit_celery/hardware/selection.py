"""Which device a preference means on a given host (pure: ``HardwareInfo`` in, ``Device`` out).

``parse_preference`` validates one spelling, ``resolve`` finds it on a
``HardwareInfo`` (None when absent), ``describe`` gives a chosen device's
details. ``hardware.select()`` and friends apply them to the detected host.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

from snakepit_celery.errors import ConfigError
from snakepit_celery.hardware.types import (
    DEVICE_SPELLINGS,
    Accelerator,
    CudaInfo,
    Device,
    GpuDevice,
    HardwareInfo,
    RocmInfo,
)

__all__ = ["DevicePreference", "as_list", "describe", "find_gpu", "parse_preference", "resolve"]

#: What ``select()`` accepts: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``, ``"rocm"``,
#: ``"cuda:N"``, ``"rocm:N"``, ``("cuda", N)``, ``("rocm", N)`` or a :class:`Device`.
DevicePreference: TypeAlias = str | Device | tuple[str, int]


def parse_preference(pref: object) -> Device | None:
    """Validate one device preference; None means ``"auto"``. Unknown spellings: ConfigError."""
    if isinstance(pref, Device):
        return pref
    if isinstance(pref, str):
        if pref.strip().lower() == "auto":
            return None
        return Device.parse(pref)
    if (
        isinstance(pref, tuple | list)
        and len(pref) == 2
        and isinstance(pref[0], str)
        and isinstance(pref[1], int)
        and not isinstance(pref[1], bool)
    ):
        kind = pref[0].strip().lower()
        if kind not in (Accelerator.CUDA, Accelerator.ROCM):
            raise ConfigError("device", pref, DEVICE_SPELLINGS)
        return Device(Accelerator(kind), pref[1])
    raise ConfigError("device", pref, DEVICE_SPELLINGS)


def find_gpu(section: CudaInfo | RocmInfo | None, index: int | None) -> GpuDevice | None:
    """Device ``index`` of ``section`` (the lowest id when None); None when absent."""
    if section is None or not section.devices:
        return None
    if index is None:
        return min(section.devices, key=lambda d: d.id)
    return next((d for d in section.devices if d.id == index), None)


def resolve(wanted: Device | None, info: HardwareInfo) -> Device | None:
    """The device of ``info`` for ``wanted`` (None: "auto"), with its UUID; None when absent."""
    if wanted is None:
        # "auto" follows the primary accelerator, so an override's choice is honoured.
        wanted = Device(info.accelerator)
        if info.accelerator in (Accelerator.CUDA, Accelerator.ROCM):
            gpu = find_gpu(info.cuda if info.accelerator == Accelerator.CUDA else info.rocm, None)
            return Device(info.accelerator, gpu.id, gpu.uuid) if gpu else Device(Accelerator.CPU)
    if wanted.kind == Accelerator.CPU:
        return Device(Accelerator.CPU)
    if wanted.kind == Accelerator.MPS:
        available = info.mps is not None and info.mps.available
        return Device(Accelerator.MPS) if available else None
    section = info.cuda if wanted.kind == Accelerator.CUDA else info.rocm
    gpu = find_gpu(section, wanted.index)
    return Device(wanted.kind, gpu.id, gpu.uuid) if gpu is not None else None


def as_list(prefs: DevicePreference | Iterable[DevicePreference]) -> list[DevicePreference]:
    """One preference or several, as a list (a ``("cuda", 1)`` tuple is one)."""
    if isinstance(prefs, str | Device):
        return [prefs]
    if (
        isinstance(prefs, tuple)
        and len(prefs) == 2
        and isinstance(prefs[1], int)
        and not isinstance(prefs[1], bool)
    ):
        return [prefs]
    return list(prefs)


def describe(chosen: Device, info: HardwareInfo) -> dict[str, Any]:
    """Details of ``chosen`` (a result of ``resolve`` on ``info``) with the upstream keys."""
    if chosen.kind == Accelerator.CPU:
        return {
            "type": "cpu",
            "name": info.cpu.model,
            "cores": info.cpu.cores,
            "threads": info.cpu.threads,
            "memory_mb": info.cpu.memory_total_mb,
        }
    if chosen.kind == Accelerator.MPS and info.mps is not None:
        return {
            "type": "mps",
            "name": info.mps.device_name,
            "memory_mb": info.mps.memory_total_mb,
        }
    section = info.cuda if chosen.kind == Accelerator.CUDA else info.rocm
    assert section is not None
    found = find_gpu(section, chosen.index)
    assert found is not None
    details: dict[str, Any] = {
        "type": chosen.kind.value,
        "device_id": found.id,
        "name": found.name,
        "memory_total_mb": found.memory_total_mb,
        "memory_free_mb": found.memory_free_mb,
    }
    if isinstance(section, CudaInfo):
        details["cuda_version"] = section.version
        details["compute_capability"] = found.compute_capability
    else:
        details["rocm_version"] = section.version
    return details
