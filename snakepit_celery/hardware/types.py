"""Value types of the hardware layer: what detection found and what a task may select.

Every result is a frozen dataclass with ``as_dict()`` giving JSON-safe plain
types (keys equal the field names). ``HardwareInfo.from_dict()`` reads that
same shape back, which is what an override file (``snakepit_hardware``) holds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from snakepit_celery.errors import ConfigError
from snakepit_celery.hardware.shape import (
    PlainData,
    ShapeError,
    boolean,
    get,
    integer,
    mapping,
    optional_integer,
    optional_string,
    string,
    string_list,
)

__all__ = [
    "DEVICE_SPELLINGS",
    "Accelerator",
    "CpuInfo",
    "CudaInfo",
    "Device",
    "GpuDevice",
    "HardwareInfo",
    "MpsInfo",
    "RocmInfo",
]


class Accelerator(enum.StrEnum):
    """A kind of compute device; also the ``kind`` of a :class:`Device`."""

    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"
    ROCM = "rocm"


@dataclass(frozen=True)
class CpuInfo(PlainData):
    """The host CPU: physical cores, logical threads, model name, ISA features, RAM."""

    cores: int
    threads: int
    model: str
    features: tuple[str, ...]
    memory_total_mb: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict (features as a sorted list)."""
        return {**super().as_dict(), "features": sorted(self.features)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "cpu") -> CpuInfo:
        """Read the ``as_dict()`` shape; missing keys get neutral defaults."""
        obj = mapping(data, where, {"cores", "threads", "model", "features", "memory_total_mb"})
        cores = get(obj, "cores", where, integer, 1)
        return cls(
            cores=cores,
            threads=get(obj, "threads", where, integer, cores),
            model=get(obj, "model", where, string, "unknown"),
            features=tuple(sorted(set(get(obj, "features", where, string_list, list[str]())))),
            memory_total_mb=get(obj, "memory_total_mb", where, integer, 0),
        )


@dataclass(frozen=True)
class GpuDevice(PlainData):
    """One CUDA or ROCm device as this process sees it.

    ``id`` is the index the framework uses in this process (``cuda:<id>``), i.e.
    after ``CUDA_VISIBLE_DEVICES`` renumbering; ``uuid`` is stable across
    processes and is what taints are keyed by. Unknown values are None.
    """

    id: int
    name: str
    memory_total_mb: int | None = None
    memory_free_mb: int | None = None
    compute_capability: str | None = None
    uuid: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str, position: int) -> GpuDevice:
        """Read the ``as_dict()`` shape; ``id`` defaults to the list position."""
        obj = mapping(
            data,
            where,
            {"id", "name", "memory_total_mb", "memory_free_mb", "compute_capability", "uuid"},
        )
        return cls(
            id=get(obj, "id", where, integer, position),
            name=get(obj, "name", where, string, "unknown"),
            memory_total_mb=get(obj, "memory_total_mb", where, optional_integer, None),
            memory_free_mb=get(obj, "memory_free_mb", where, optional_integer, None),
            compute_capability=get(obj, "compute_capability", where, optional_string, None),
            uuid=get(obj, "uuid", where, optional_string, None),
        )


def _devices_from(obj: Mapping[str, Any], where: str) -> tuple[GpuDevice, ...]:
    raw = obj.get("devices", [])
    if not isinstance(raw, list):
        raise ShapeError(f"{where}.devices: expected a list, got {type(raw).__name__}")
    devices = tuple(
        GpuDevice.from_dict(item, f"{where}.devices[{i}]", i) for i, item in enumerate(raw)
    )
    ids = [d.id for d in devices]
    if len(set(ids)) != len(ids):
        raise ShapeError(f"{where}.devices: duplicate device ids {ids}")
    return devices


@dataclass(frozen=True)
class CudaInfo(PlainData):
    """NVIDIA CUDA: CUDA driver API version, driver version, cuDNN version, visible devices."""

    version: str | None
    driver_version: str | None
    cudnn_version: str | None
    devices: tuple[GpuDevice, ...]

    @classmethod
    def from_dict(cls, data: Any, where: str = "cuda") -> CudaInfo:
        """Read the ``as_dict()`` shape."""
        obj = mapping(data, where, {"version", "driver_version", "cudnn_version", "devices"})
        return cls(
            version=get(obj, "version", where, optional_string, None),
            driver_version=get(obj, "driver_version", where, optional_string, None),
            cudnn_version=get(obj, "cudnn_version", where, optional_string, None),
            devices=_devices_from(obj, where),
        )


@dataclass(frozen=True)
class MpsInfo(PlainData):
    """Apple Metal Performance Shaders: the Apple-silicon GPU (unified memory)."""

    available: bool
    device_name: str
    memory_total_mb: int

    @classmethod
    def from_dict(cls, data: Any, where: str = "mps") -> MpsInfo:
        """Read the ``as_dict()`` shape."""
        obj = mapping(data, where, {"available", "device_name", "memory_total_mb"})
        return cls(
            available=get(obj, "available", where, boolean, True),
            device_name=get(obj, "device_name", where, string, "Apple GPU"),
            memory_total_mb=get(obj, "memory_total_mb", where, integer, 0),
        )


@dataclass(frozen=True)
class RocmInfo(PlainData):
    """AMD ROCm: ROCm version and visible devices."""

    version: str | None
    devices: tuple[GpuDevice, ...]

    @classmethod
    def from_dict(cls, data: Any, where: str = "rocm") -> RocmInfo:
        """Read the ``as_dict()`` shape."""
        obj = mapping(data, where, {"version", "devices"})
        return cls(
            version=get(obj, "version", where, optional_string, None),
            devices=_devices_from(obj, where),
        )


def primary_accelerator(
    cuda: CudaInfo | None, mps: MpsInfo | None, rocm: RocmInfo | None
) -> Accelerator:
    """The primary accelerator by upstream priority: CUDA > MPS > ROCm > CPU."""
    if cuda is not None and cuda.devices:
        return Accelerator.CUDA
    if mps is not None and mps.available:
        return Accelerator.MPS
    if rocm is not None and rocm.devices:
        return Accelerator.ROCM
    return Accelerator.CPU


@dataclass(frozen=True)
class HardwareInfo(PlainData):
    """Everything detection found; ``accelerator`` is the primary one (CUDA > MPS > ROCm > CPU).

    Its ``as_dict()`` is also the shape of an override file.
    """

    accelerator: Accelerator
    cpu: CpuInfo
    cuda: CudaInfo | None
    mps: MpsInfo | None
    rocm: RocmInfo | None
    platform: str

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        default_cpu: Callable[[], CpuInfo] | None = None,
        default_platform: Callable[[], str] | None = None,
    ) -> HardwareInfo:
        """Read the ``as_dict()`` shape; raise :class:`ShapeError` saying what is wrong.

        ``cuda``/``mps``/``rocm`` may be omitted (absent). ``cpu`` and ``platform``
        may be omitted when defaults are given (the override loader passes the
        detected ones). ``accelerator`` defaults to the priority rule; when given
        it must name a present accelerator.
        """
        obj = mapping(data, "", {"accelerator", "cpu", "cuda", "mps", "rocm", "platform"})
        if "cpu" in obj:
            cpu = CpuInfo.from_dict(obj["cpu"])
        elif default_cpu is not None:
            cpu = default_cpu()
        else:
            raise ShapeError("cpu: missing")
        if "platform" in obj:
            platform = string(obj["platform"], "platform")
        elif default_platform is not None:
            platform = default_platform()
        else:
            raise ShapeError("platform: missing")
        cuda = None if obj.get("cuda") is None else CudaInfo.from_dict(obj["cuda"])
        mps = None if obj.get("mps") is None else MpsInfo.from_dict(obj["mps"])
        rocm = None if obj.get("rocm") is None else RocmInfo.from_dict(obj["rocm"])
        accelerator = primary_accelerator(cuda, mps, rocm)
        if obj.get("accelerator") is not None:
            raw = obj["accelerator"]
            try:
                accelerator = Accelerator(raw)
            except ValueError:
                allowed = ", ".join(a.value for a in Accelerator)
                raise ShapeError(f"accelerator: {raw!r} is not one of {allowed}") from None
            present = {
                Accelerator.CPU: True,
                Accelerator.CUDA: cuda is not None and bool(cuda.devices),
                Accelerator.MPS: mps is not None and mps.available,
                Accelerator.ROCM: rocm is not None and bool(rocm.devices),
            }
            if not present[accelerator]:
                raise ShapeError(
                    f"accelerator: {accelerator.value!r} needs a {accelerator.value!r} section "
                    "with at least one device (mps: available=true)"
                )
        return cls(accelerator, cpu, cuda, mps, rocm, platform)


#: Every spelling of a device preference, for error messages.
DEVICE_SPELLINGS = "auto, cpu, cuda, mps, rocm, cuda:N, rocm:N, ('cuda', N), ('rocm', N), Device"


@dataclass(frozen=True)
class Device(PlainData):
    """A selectable device; ``str()`` is torch's spelling (``"cuda:1"``, ``"mps"``, ``"cpu"``).

    CUDA/ROCm devices always have an index (default 0); CPU and MPS have none.
    ``uuid`` is informational (filled in by ``select()`` where known) and takes
    no part in equality or hashing, so ``Device("cuda", 0) == select("cuda")``.
    """

    kind: Accelerator
    index: int | None = None
    uuid: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        try:
            kind = Accelerator(self.kind)
        except ValueError:
            raise ConfigError("device", self.kind, DEVICE_SPELLINGS) from None
        object.__setattr__(self, "kind", kind)
        index = self.index
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise ConfigError("device", index, "a device index must be an int >= 0")
        if kind in (Accelerator.CUDA, Accelerator.ROCM):
            if index is None:
                index = 0
            if index < 0:
                raise ConfigError("device", f"{kind}:{index}", "a device index must be >= 0")
        elif index not in (None, 0):
            raise ConfigError("device", f"{kind}:{index}", f"{kind} has no device index")
        else:
            index = None
        object.__setattr__(self, "index", index)

    def __str__(self) -> str:
        return self.kind.value if self.index is None else f"{self.kind.value}:{self.index}"

    @classmethod
    def parse(cls, text: str) -> Device:
        """Parse ``"cpu"``, ``"mps"``, ``"cuda"``, ``"cuda:1"``, ``"rocm:0"``; else ConfigError."""
        spelled = text.strip().lower()
        kind, sep, index_text = spelled.partition(":")
        if kind not in {a.value for a in Accelerator}:
            raise ConfigError("device", text, DEVICE_SPELLINGS)
        if not sep:
            return cls(Accelerator(kind))
        if kind not in (Accelerator.CUDA, Accelerator.ROCM) or not index_text.isdigit():
            raise ConfigError("device", text, DEVICE_SPELLINGS)
        return cls(Accelerator(kind), int(index_text))
