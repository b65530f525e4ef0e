"""AMD ROCm detection through ``rocm-smi --json``.

Device names come from ``--showproductname``, memory from ``--showmeminfo
vram`` and UUIDs from ``--showuniqueid``; the ROCm version from
``$ROCM_PATH/.info/version``. ``HIP_VISIBLE_DEVICES`` /
``ROCR_VISIBLE_DEVICES`` / ``CUDA_VISIBLE_DEVICES`` (which HIP also honours)
renumber devices like CUDA does. Never raises; a missing tool means absent.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from snakepit_celery.hardware import tools
from snakepit_celery.hardware.types import GpuDevice, RocmInfo

__all__ = ["ROCM_SMI_ARGS", "parse_rocm_json", "probe", "read_rocm_version"]

log = logging.getLogger(__name__)

#: The one ``rocm-smi`` invocation detection makes.
ROCM_SMI_ARGS = (
    "rocm-smi",
    "--showproductname",
    "--showmeminfo",
    "vram",
    "--showuniqueid",
    "--json",
)

_MIB = 2**20


def probe(
    environ: Mapping[str, str] | None = None, version_file: Path | None = None
) -> RocmInfo | None:
    """ROCm devices visible to this process, or None when there are none (or no rocm-smi)."""
    out = tools.run_tool(list(ROCM_SMI_ARGS))
    if out is None:
        return None
    devices = parse_rocm_json(out.stdout)
    spec = tools.env_value(
        environ, "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"
    )
    devices = tools.visible(devices, spec)
    if not devices:
        return None
    return RocmInfo(version=read_rocm_version(version_file, environ), devices=tuple(devices))


def _field(card: Mapping[str, Any], *names: str) -> str | None:
    lowered = {str(k).lower(): v for k, v in card.items()}
    for name in names:
        value = lowered.get(name.lower())
        if isinstance(value, str | int) and str(value).strip() not in ("", "N/A"):
            return str(value).strip()
    return None


def _bytes(raw: str | None) -> int | None:
    return int(raw) if raw is not None and raw.isdigit() else None


def parse_rocm_json(text: str) -> list[GpuDevice]:
    """Devices from ``rocm-smi ... --json`` output (warnings before the JSON are skipped)."""
    start = text.find("{")
    if start < 0:
        return []
    try:
        data = json.loads(text[start:])
    except ValueError as exc:
        log.debug("rocm-smi printed invalid JSON", extra={"error": str(exc)})
        return []
    if not isinstance(data, dict):
        return []
    devices = []
    for key, card in data.items():
        if not (isinstance(key, str) and key.startswith("card") and key[4:].isdigit()):
            continue
        if not isinstance(card, dict):
            continue
        total = _bytes(_field(card, "VRAM Total Memory (B)"))
        used = _bytes(_field(card, "VRAM Total Used Memory (B)"))
        free = total - used if total is not None and used is not None else None
        devices.append(
            GpuDevice(
                id=int(key[4:]),
                name=_field(card, "Card Series", "Card series", "Card Model", "Card model")
                or "AMD GPU",
                memory_total_mb=total // _MIB if total is not None else None,
                memory_free_mb=free // _MIB if free is not None else None,
                compute_capability=_field(card, "GFX Version"),
                uuid=_field(card, "Unique ID"),
            )
        )
    return sorted(devices, key=lambda d: d.id)


def read_rocm_version(
    version_file: Path | None = None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The installed ROCm version ("6.1.2") from ``$ROCM_PATH/.info/version``, else None."""
    env = os.environ if environ is None else environ
    path = version_file or Path(env.get("ROCM_PATH", "/opt/rocm"), ".info", "version")
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text.split("-")[0] or None
