"""Hardware detection and device selection (upstream ``Snakepit.Hardware``).

``detect()`` probes the CPU (psutil, /proc/cpuinfo, sysctl), NVIDIA GPUs
(NVML, then ``nvidia-smi``), Apple MPS (sysctl) and AMD GPUs (``rocm-smi``)
once per process and caches the result; every probe is time-bounded and a
missing or broken tool just means "absent". An override file (setting
``snakepit_hardware``, env ``SNAKEPIT_HARDWARE``, or :func:`configure`)
replaces detection for containers and tests.

``select()`` / ``select_with_fallback()`` turn a device preference into a
:class:`Device`; ``identity()`` is the small stable map lock files and the
node registry compare.
"""

from __future__ import annotations

import logging
import os
import platform as _platform
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from snakepit_celery.errors import ConfigError, DeviceNotAvailableError
from snakepit_celery.hardware import cpu, mps, nvidia, rocm, tools
from snakepit_celery.hardware.inventory import AcceleratorDevice, Capabilities
from snakepit_celery.hardware.override import ENV_VAR, SETTING, load_override, restrict
from snakepit_celery.hardware.selection import (
    DevicePreference,
    as_list,
    describe,
    parse_preference,
    resolve,
)
from snakepit_celery.hardware.types import (
    Accelerator,
    CpuInfo,
    CudaInfo,
    Device,
    GpuDevice,
    HardwareInfo,
    MpsInfo,
    RocmInfo,
    primary_accelerator,
)

__all__ = [
    "ENV_VAR",
    "SETTING",
    "Accelerator",
    "AcceleratorDevice",
    "Capabilities",
    "CpuInfo",
    "CudaInfo",
    "Device",
    "DevicePreference",
    "GpuDevice",
    "HardwareInfo",
    "MpsInfo",
    "RocmInfo",
    "capabilities",
    "clear_cache",
    "configure",
    "detect",
    "device_info",
    "devices",
    "identity",
    "parse_preference",
    "platform_string",
    "probe_host",
    "restrict",
    "select",
    "select_with_fallback",
]

log = logging.getLogger(__name__)

_lock = threading.RLock()
_cached: HardwareInfo | None = None
_configured: HardwareInfo | None = None


def _fresh_lock_after_fork() -> None:
    global _lock
    _lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    # A fork while another thread was detecting must not leave the child's lock held.
    os.register_at_fork(after_in_child=_fresh_lock_after_fork)


# -- detection ----------------------------------------------------------------------------


def platform_string(system: str | None = None, machine: str | None = None) -> str:
    """``"linux-x86_64"``, ``"macos-arm64"``, ``"windows-x86_64"``… for this (or the given) host."""
    system = _platform.system() if system is None else system
    machine = _platform.machine() if machine is None else machine
    os_name = {"Linux": "linux", "Darwin": "macos", "Windows": "windows"}.get(
        system, system.lower() or "unknown"
    )
    arch = machine.lower()
    if arch in ("x86_64", "amd64", "x64"):
        arch = "x86_64"
    elif arch in ("aarch64", "arm64", "armv8l"):
        arch = "arm64"
    elif arch.startswith("arm"):
        arch = "arm"
    return f"{os_name}-{arch or 'unknown'}"


def probe_host(
    *,
    system: str | None = None,
    machine: str | None = None,
    environ: Mapping[str, str] | None = None,
    cpuinfo_path: Path | None = None,
) -> HardwareInfo:
    """Probe this host now: no cache, no override. Never raises."""
    system = _platform.system() if system is None else system
    machine = _platform.machine() if machine is None else machine
    sysctl = tools.read_sysctl() if system == "Darwin" else {}
    cpu_info = cpu.probe(system=system, machine=machine, cpuinfo_path=cpuinfo_path, sysctl=sysctl)
    cuda_info = nvidia.probe(environ)
    mps_info = mps.probe(system=system, machine=machine, sysctl=sysctl)
    rocm_info = rocm.probe(environ)
    info = HardwareInfo(
        accelerator=primary_accelerator(cuda_info, mps_info, rocm_info),
        cpu=cpu_info,
        cuda=cuda_info,
        mps=mps_info,
        rocm=rocm_info,
        platform=platform_string(system, machine),
    )
    log.debug("hardware detected", extra={"hardware": info.as_dict()})
    return info


def _load(path: str | os.PathLike[str], source: str) -> HardwareInfo:
    return load_override(
        path,
        default_cpu=lambda: cpu.probe(sysctl=tools.read_sysctl() if _is_darwin() else {}),
        default_platform=platform_string,
        source=source,
    )


def _is_darwin() -> bool:
    return _platform.system() == "Darwin"


def configure(source: str | os.PathLike[str] | HardwareInfo | None) -> None:
    """Set (or with None, remove) the hardware override for this process.

    ``source`` is an override file path (the ``snakepit_hardware`` setting; it
    is read and validated now, raising ``ConfigError``) or a ready
    :class:`HardwareInfo`. A configured override wins over env
    ``SNAKEPIT_HARDWARE``. Clears the detection cache.
    """
    global _configured, _cached
    info: HardwareInfo | None
    if source is None or isinstance(source, HardwareInfo):
        info = source
    elif isinstance(source, str | os.PathLike):
        info = _load(source, SETTING)
    else:
        raise ConfigError(SETTING, source, "a path to a JSON file, a HardwareInfo, or None")
    with _lock:
        _configured = info
        _cached = None


def detect() -> HardwareInfo:
    """Everything about this host's hardware, detected once per process (or overridden).

    Raises ``ConfigError`` only when an override file is named but invalid.
    """
    global _cached
    with _lock:
        if _cached is not None:
            return _cached
        if _configured is not None:
            info = _configured
        elif os.environ.get(ENV_VAR):
            info = _load(os.environ[ENV_VAR], f"env {ENV_VAR}")
        else:
            info = probe_host()
        _cached = info
        return info


def clear_cache() -> None:
    """Forget the detected hardware; the next call detects (or reads the override) again."""
    global _cached
    with _lock:
        _cached = None


def capabilities() -> Capabilities:
    """Boolean capability flags of this host (upstream ``capabilities/0``)."""
    info = detect()
    features = set(info.cpu.features)
    has_cuda = info.cuda is not None and bool(info.cuda.devices)
    cudnn_version = info.cuda.cudnn_version if info.cuda is not None and has_cuda else None
    return Capabilities(
        cuda=has_cuda,
        mps=info.mps is not None and info.mps.available,
        rocm=info.rocm is not None and bool(info.rocm.devices),
        avx="avx" in features,
        avx2="avx2" in features,
        avx512="avx512" in features,
        cuda_version=info.cuda.version if info.cuda is not None and has_cuda else None,
        cudnn_version=cudnn_version,
        cudnn=cudnn_version is not None,
    )


def _gpu_count(info: HardwareInfo) -> int:
    if info.accelerator == Accelerator.CUDA and info.cuda is not None:
        return len(info.cuda.devices)
    if info.accelerator == Accelerator.ROCM and info.rocm is not None:
        return len(info.rocm.devices)
    if info.accelerator == Accelerator.MPS:
        return 1
    return 0


def identity() -> dict[str, Any]:
    """The hardware identity lock files and the node registry compare.

    Exactly ``platform``, ``accelerator``, ``cpu_features`` (sorted) and
    ``gpu_count`` (devices of the primary accelerator; 1 for MPS, 0 for CPU).
    """
    info = detect()
    return {
        "platform": info.platform,
        "accelerator": info.accelerator.value,
        "cpu_features": sorted(info.cpu.features),
        "gpu_count": _gpu_count(info),
    }


def devices() -> list[AcceleratorDevice]:
    """Every accelerator device this process can use (CUDA, then ROCm, then MPS; no CPU)."""
    info = detect()
    listed: list[AcceleratorDevice] = []
    for kind, section in ((Accelerator.CUDA, info.cuda), (Accelerator.ROCM, info.rocm)):
        if section is not None:
            listed += [
                AcceleratorDevice(kind, d.id, d.uuid, d.name, d.memory_total_mb)
                for d in sorted(section.devices, key=lambda d: d.id)
            ]
    if info.mps is not None and info.mps.available:
        listed.append(
            AcceleratorDevice(
                Accelerator.MPS, None, None, info.mps.device_name, info.mps.memory_total_mb
            )
        )
    return listed


# -- selection ----------------------------------------------------------------------------


def select(pref: DevicePreference = "auto") -> Device:
    """The device for ``pref`` on this host (with its UUID where known).

    ``"auto"`` picks CUDA device 0 > MPS > ROCm device 0 > CPU; ``"cpu"``
    always succeeds. Raises ``DeviceNotAvailableError`` when the device is
    absent and ``ConfigError`` for an unknown spelling.
    """
    found = resolve(parse_preference(pref), detect())
    if found is None:
        raise DeviceNotAvailableError(pref)
    return found


def select_with_fallback(prefs: DevicePreference | Iterable[DevicePreference]) -> Device:
    """The first available device of ``prefs``, in order.

    Every preference is validated first (a typo raises ``ConfigError`` even if
    an earlier one would have matched); none available or an empty list
    raises ``DeviceNotAvailableError(requested=prefs)``.
    """
    wanted_list = as_list(prefs)
    parsed = [parse_preference(p) for p in wanted_list]
    info = detect()
    for wanted in parsed:
        found = resolve(wanted, info)
        if found is not None:
            return found
    raise DeviceNotAvailableError(
        wanted_list, f"no device available for any of {[str(p) for p in wanted_list]!r}"
    )


def device_info(device: DevicePreference) -> dict[str, Any]:
    """Details of one device with the upstream keys (CPU: type, name, cores, threads, memory_mb).

    Raises ``DeviceNotAvailableError`` when the device is not on this host.
    """
    return describe(select(device), detect())
