"""Apple MPS detection: the GPU of Apple silicon (macOS on arm64).

Apple silicon always carries a Metal GPU sharing the machine's memory, so
on Darwin/arm64 MPS is available; ``sysctl`` supplies the chip name
(``machdep.cpu.brand_string``) and the unified memory size (``hw.memsize``).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping

import psutil

from snakepit_celery.hardware.types import MpsInfo

__all__ = ["probe"]


def probe(
    *,
    system: str | None = None,
    machine: str | None = None,
    sysctl: Mapping[str, str] | None = None,
) -> MpsInfo | None:
    """MPS on macOS arm64, else None; never raises."""
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    if system != "Darwin" or machine.lower() not in ("arm64", "aarch64"):
        return None
    values = sysctl or {}
    brand = values.get("machdep.cpu.brand_string", "").strip()
    name = f"{brand} GPU" if brand.startswith("Apple M") else "Apple silicon GPU"
    memsize = values.get("hw.memsize", "")
    if memsize.isdigit():
        memory_mb = int(memsize) // 2**20
    else:
        try:
            memory_mb = psutil.virtual_memory().total // 2**20
        except Exception:
            memory_mb = 0
    return MpsInfo(available=True, device_name=name, memory_total_mb=memory_mb)
