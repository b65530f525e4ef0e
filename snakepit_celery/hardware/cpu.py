"""CPU detection: model, cores, threads and memory (psutil) and instruction-set features.

Features come from the ``flags``/``Features`` line of ``/proc/cpuinfo`` on
Linux and from ``sysctl machdep.cpu`` on macOS, mapped onto the closed set
:data:`CPU_FEATURES` so lock files compare like with like across hosts.
"""

from __future__ import annotations

import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path

import psutil

from snakepit_celery.hardware.types import CpuInfo

__all__ = ["CPUINFO_PATH", "CPU_FEATURES", "darwin_features", "parse_cpuinfo", "probe"]

log = logging.getLogger(__name__)

#: Where Linux exposes CPU details.
CPUINFO_PATH = Path("/proc/cpuinfo")

#: Every feature name detection can report.
CPU_FEATURES = frozenset({"avx", "avx2", "avx512", "fma", "sse4_1", "sse4_2", "neon", "sve"})

_LINUX_FLAGS = {
    "avx": "avx",
    "avx2": "avx2",
    "avx512f": "avx512",
    "fma": "fma",
    "sse4_1": "sse4_1",
    "sse4_2": "sse4_2",
    "neon": "neon",
    "asimd": "neon",
    "sve": "sve",
}

_DARWIN_FLAGS = {
    "AVX1.0": "avx",
    "AVX2": "avx2",
    "AVX512F": "avx512",
    "FMA": "fma",
    "SSE4.1": "sse4_1",
    "SSE4.2": "sse4_2",
}

# Arm cores without a "model name" line: (implementer, part) -> marketing name.
_ARM_IMPLEMENTERS = {
    "0x41": "ARM",
    "0x42": "Broadcom",
    "0x48": "HiSilicon",
    "0x4e": "NVIDIA",
    "0x51": "Qualcomm",
    "0x61": "Apple",
    "0xc0": "Ampere",
}
_ARM_PARTS = {
    ("0x41", "0xd08"): "Cortex-A72",
    ("0x41", "0xd0b"): "Cortex-A76",
    ("0x41", "0xd0c"): "Neoverse-N1",
    ("0x41", "0xd40"): "Neoverse-V1",
    ("0x41", "0xd49"): "Neoverse-N2",
    ("0x41", "0xd4f"): "Neoverse-V2",
    ("0xc0", "0xac3"): "AmpereOne",
}


def parse_cpuinfo(text: str) -> tuple[str | None, frozenset[str]]:
    """Model name and features from ``/proc/cpuinfo`` text (first processor entry)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    flags = (fields.get("flags") or fields.get("features") or "").split()
    features = frozenset(_LINUX_FLAGS[f] for f in flags if f in _LINUX_FLAGS)
    model = fields.get("model name") or fields.get("hardware")
    if not model and "cpu implementer" in fields:
        implementer = fields["cpu implementer"].lower()
        part = fields.get("cpu part", "").lower()
        vendor = _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
        model = f"{vendor} {_ARM_PARTS.get((implementer, part), f'part {part}')}".strip()
    return model or None, features


def darwin_features(sysctl: Mapping[str, str], machine: str) -> frozenset[str]:
    """Features of a Mac: NEON on Apple silicon, else the ``machdep.cpu`` feature words."""
    if _is_arm(machine):
        return frozenset({"neon"})
    words = " ".join(
        sysctl.get(key, "") for key in ("machdep.cpu.features", "machdep.cpu.leaf7_features")
    ).split()
    return frozenset(_DARWIN_FLAGS[w] for w in words if w in _DARWIN_FLAGS)


def _is_arm(machine: str) -> bool:
    return machine.lower() in ("arm64", "aarch64") or machine.lower().startswith("arm")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as exc:
        log.debug("cannot read cpuinfo", extra={"path": str(path), "error": str(exc)})
        return ""


def probe(
    *,
    system: str | None = None,
    machine: str | None = None,
    cpuinfo_path: Path | None = None,
    sysctl: Mapping[str, str] | None = None,
) -> CpuInfo:
    """Describe the host CPU; never raises (unknown values become neutral defaults)."""
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    model: str | None = None
    features: frozenset[str] = frozenset()
    memory_mb = 0
    if system == "Linux":
        model, features = parse_cpuinfo(_read(cpuinfo_path or CPUINFO_PATH))
    elif system == "Darwin":
        values = sysctl or {}
        model = values.get("machdep.cpu.brand_string") or None
        features = darwin_features(values, machine)
        memsize = values.get("hw.memsize", "")
        memory_mb = int(memsize) // 2**20 if memsize.isdigit() else 0
    try:
        threads = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        cores = psutil.cpu_count(logical=False) or threads
        memory_mb = psutil.virtual_memory().total // 2**20 or memory_mb
    except Exception as exc:  # psutil can fail inside odd sandboxes
        log.debug("psutil probe failed", extra={"error": str(exc)})
        threads = os.cpu_count() or 1
        cores = threads
    return CpuInfo(
        cores=cores,
        threads=threads,
        model=model or platform.processor() or machine or "unknown",
        features=tuple(sorted(features)),
        memory_total_mb=memory_mb,
    )
