"""Text for the ``hardware`` command (``python -m snakepit_celery`` and ``celery snakepit``).

Functions return strings so both command-line front ends print the same thing.
"""

from __future__ import annotations

import json

from snakepit_celery.hardware.types import GpuDevice, HardwareInfo

__all__ = ["hardware_json", "hardware_table"]


def hardware_json(info: HardwareInfo) -> str:
    """``detect().as_dict()`` as pretty JSON (also a valid override file)."""
    return json.dumps(info.as_dict(), indent=2)


def _mb(value: int | None) -> str:
    return "?" if value is None else f"{value} MB"


def _gpu_line(kind: str, gpu: GpuDevice) -> str:
    parts = [f"{kind}:{gpu.id}", gpu.name, f"total {_mb(gpu.memory_total_mb)}"]
    parts.append(f"free {_mb(gpu.memory_free_mb)}")
    if gpu.compute_capability:
        parts.append(f"cc {gpu.compute_capability}" if kind == "cuda" else gpu.compute_capability)
    if gpu.uuid:
        parts.append(gpu.uuid)
    return "  " + "  ".join(parts)


def hardware_table(info: HardwareInfo) -> str:
    """A short human-readable summary of ``info``, one fact per line."""
    cpu = info.cpu
    lines = [
        f"platform      {info.platform}",
        f"accelerator   {info.accelerator.value}",
        f"cpu           {cpu.model} ({cpu.cores} cores, {cpu.threads} threads, "
        f"{_mb(cpu.memory_total_mb)})",
        f"cpu features  {' '.join(sorted(cpu.features)) or '-'}",
    ]
    if info.cuda is None:
        lines.append("cuda          -")
    else:
        cuda = info.cuda
        lines.append(
            f"cuda          {cuda.version or '?'} (driver {cuda.driver_version or '?'}, "
            f"cuDNN {cuda.cudnn_version or '-'})"
        )
        lines += [_gpu_line("cuda", gpu) for gpu in cuda.devices]
    if info.mps is None or not info.mps.available:
        lines.append("mps           -")
    else:
        lines.append(f"mps           {info.mps.device_name} ({_mb(info.mps.memory_total_mb)})")
    if info.rocm is None:
        lines.append("rocm          -")
    else:
        lines.append(f"rocm          {info.rocm.version or '?'}")
        lines += [_gpu_line("rocm", gpu) for gpu in info.rocm.devices]
    return "\n".join(lines)
