"""Value types of the hardware layer: what detection found and what a task may select.

Every result is a frozen dataclass with ``as_dict()`` giving JSON-safe plain
types (keys equal the field names). ``HardwareInfo.from_dict()`` reads that
same shape back, which is what an override file (``snakepit_hardware``) holds.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from snakepit_celery.errors import ConfigError

__all__ = [
    "Accelerator",
    "AcceleratorDevice",
    "Capabilities",
    "CpuInfo",
    "CudaInfo",
    "Device",
    "GpuDevice",
    "HardwareInfo",
    "MpsInfo",
    "RocmInfo",
    "ShapeError",
]

_T = TypeVar("_T")


class Accelerator(enum.StrEnum):
    """A kind of compute device; also the ``kind`` of a :class:`Device`."""

    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"
    ROCM = "rocm"


class ShapeError(ValueError):
    """A mapping does not have the ``as_dict()`` shape; the message says where."""


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU: physical cores, logical threads, model name, ISA features, RAM."""

    cores: int
    threads: int
    model: str
    features: tuple[str, ...]
    memory_total_mb: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict (features as a sorted list)."""
        return {
            "cores": self.cores,
            "threads": self.threads,
            "model": self.model,
            "features": sorted(self.features),
            "memory_total_mb": self.memory_total_mb,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "cpu") -> CpuInfo:
        """Read the ``as_dict()`` shape; missing keys get neutral defaults."""
        obj = _mapping(data, where, {"cores", "threads", "model", "features", "memory_total_mb"})
        cores = _get(obj, "cores", where, _int, 1)
        return cls(
            cores=cores,
            threads=_get(obj, "threads", where, _int, cores),
            model=_get(obj, "model", where, _str, "unknown"),
            features=tuple(sorted(set(_get(obj, "features", where, _str_list, list[str]())))),
            memory_total_mb=_get(obj, "memory_total_mb", where, _int, 0),
        )


@dataclass(frozen=True)
class GpuDevice:
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

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {
            "id": self.id,
            "name": self.name,
            "memory_total_mb": self.memory_total_mb,
            "memory_free_mb": self.memory_free_mb,
            "compute_capability": self.compute_capability,
            "uuid": self.uuid,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str, position: int) -> GpuDevice:
        """Read the ``as_dict()`` shape; ``id`` defaults to the list position."""
        obj = _mapping(
            data,
            where,
            {"id", "name", "memory_total_mb", "memory_free_mb", "compute_capability", "uuid"},
        )
        return cls(
            id=_get(obj, "id", where, _int, position),
            name=_get(obj, "name", where, _str, "unknown"),
            memory_total_mb=_get(obj, "memory_total_mb", where, _opt(_int), None),
            memory_free_mb=_get(obj, "memory_free_mb", where, _opt(_int), None),
            compute_capability=_get(obj, "compute_capability", where, _opt(_str), None),
            uuid=_get(obj, "uuid", where, _opt(_str), None),
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
class CudaInfo:
    """NVIDIA CUDA: CUDA driver API version, driver version, cuDNN version, visible devices."""

    version: str | None
    driver_version: str | None
    cudnn_version: str | None
    devices: tuple[GpuDevice, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {
            "version": self.version,
            "driver_version": self.driver_version,
            "cudnn_version": self.cudnn_version,
            "devices": [d.as_dict() for d in self.devices],
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "cuda") -> CudaInfo:
        """Read the ``as_dict()`` shape."""
        obj = _mapping(data, where, {"version", "driver_version", "cudnn_version", "devices"})
        return cls(
            version=_get(obj, "version", where, _opt(_str), None),
            driver_version=_get(obj, "driver_version", where, _opt(_str), None),
            cudnn_version=_get(obj, "cudnn_version", where, _opt(_str), None),
            devices=_devices_from(obj, where),
        )


@dataclass(frozen=True)
class MpsInfo:
    """Apple Metal Performance Shaders: the Apple-silicon GPU (unified memory)."""

    available: bool
    device_name: str
    memory_total_mb: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {
            "available": self.available,
            "device_name": self.device_name,
            "memory_total_mb": self.memory_total_mb,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "mps") -> MpsInfo:
        """Read the ``as_dict()`` shape."""
        obj = _mapping(data, where, {"available", "device_name", "memory_total_mb"})
        return cls(
            available=_get(obj, "available", where, _bool, True),
            device_name=_get(obj, "device_name", where, _str, "Apple GPU"),
            memory_total_mb=_get(obj, "memory_total_mb", where, _int, 0),
        )


@dataclass(frozen=True)
class RocmInfo:
    """AMD ROCm: ROCm version and visible devices."""

    version: str | None
    devices: tuple[GpuDevice, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {"version": self.version, "devices": [d.as_dict() for d in self.devices]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "rocm") -> RocmInfo:
        """Read the ``as_dict()`` shape."""
        obj = _mapping(data, where, {"version", "devices"})
        return cls(
            version=_get(obj, "version", where, _opt(_str), None),
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
class HardwareInfo:
    """Everything detection found; ``accelerator`` is the primary one (CUDA > MPS > ROCm > CPU)."""

    accelerator: Accelerator
    cpu: CpuInfo
    cuda: CudaInfo | None
    mps: MpsInfo | None
    rocm: RocmInfo | None
    platform: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict; this is also the shape of an override file."""
        return {
            "accelerator": str(self.accelerator),
            "cpu": self.cpu.as_dict(),
            "cuda": self.cuda.as_dict() if self.cuda is not None else None,
            "mps": self.mps.as_dict() if self.mps is not None else None,
            "rocm": self.rocm.as_dict() if self.rocm is not None else None,
            "platform": self.platform,
        }

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
        obj = _mapping(data, "", {"accelerator", "cpu", "cuda", "mps", "rocm", "platform"})
        if "cpu" in obj:
            cpu = CpuInfo.from_dict(obj["cpu"])
        elif default_cpu is not None:
            cpu = default_cpu()
        else:
            raise ShapeError("cpu: missing")
        if "platform" in obj:
            platform = _str(obj["platform"], "platform")
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


_DEVICE_SPELLINGS = "auto, cpu, cuda, mps, rocm, cuda:N, rocm:N, ('cuda', N), ('rocm', N), Device"


@dataclass(frozen=True)
class Device:
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
            raise ConfigError("device", self.kind, _DEVICE_SPELLINGS) from None
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

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {"kind": self.kind.value, "index": self.index, "uuid": self.uuid}

    @classmethod
    def parse(cls, text: str) -> Device:
        """Parse ``"cpu"``, ``"mps"``, ``"cuda"``, ``"cuda:1"``, ``"rocm:0"``; else ConfigError."""
        spelled = text.strip().lower()
        kind, sep, index_text = spelled.partition(":")
        if kind not in {a.value for a in Accelerator}:
            raise ConfigError("device", text, _DEVICE_SPELLINGS)
        if not sep:
            return cls(Accelerator(kind))
        if kind not in (Accelerator.CUDA, Accelerator.ROCM) or not index_text.isdigit():
            raise ConfigError("device", text, _DEVICE_SPELLINGS)
        return cls(Accelerator(kind), int(index_text))


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


# -- shape checking helpers (used by the from_dict readers) ------------------------------


def _mapping(data: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
    label = where or "top level"
    if not isinstance(data, Mapping):
        raise ShapeError(f"{label}: expected an object, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise ShapeError(
            f"{label}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )
    return data


def _get(
    obj: Mapping[str, Any], key: str, where: str, conv: Callable[[Any, str], _T], default: _T
) -> _T:
    if key not in obj:
        return default
    return conv(obj[key], f"{where}.{key}" if where else key)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ShapeError(f"{where}: expected an integer >= 0, got {value!r}")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ShapeError(f"{where}: expected a string, got {value!r}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ShapeError(f"{where}: expected true or false, got {value!r}")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ShapeError(f"{where}: expected a list of strings, got {value!r}")
    return [_str(item, f"{where}[{i}]") for i, item in enumerate(value)]


def _opt(conv: Callable[[Any, str], _T]) -> Callable[[Any, str], _T | None]:
    def convert(value: Any, where: str) -> _T | None:
        return None if value is None else conv(value, where)

    return convert
