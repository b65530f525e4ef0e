"""NVIDIA CUDA detection: NVML (nvidia-ml-py) first, ``nvidia-smi`` as the fallback.

NVML and ``nvidia-smi`` list every GPU of the machine in PCI bus order and
ignore ``CUDA_VISIBLE_DEVICES``; :func:`probe` applies that variable so device
ids match what CUDA frameworks in this process call ``cuda:<id>`` (assuming
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` where GPU models are mixed). UUIDs stay
stable across processes. Every step is bounded by ``tools.PROBE_TIMEOUT``
and never raises.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import re
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from snakepit_celery.hardware import tools
from snakepit_celery.hardware.types import CudaInfo, GpuDevice

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None

__all__ = [
    "NVIDIA_SMI_FIELDS",
    "GpuScan",
    "cudnn_version",
    "format_cuda_version",
    "format_cudnn_version",
    "parse_cuda_version",
    "parse_query_csv",
    "probe",
    "probe_nvidia_smi",
    "probe_nvml",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Fields asked of ``nvidia-smi --query-gpu`` (``compute_cap`` is dropped for old drivers).
NVIDIA_SMI_FIELDS = (
    "index",
    "name",
    "memory.total",
    "memory.free",
    "uuid",
    "compute_cap",
    "driver_version",
)

_MIB = 2**20


@dataclass(frozen=True)
class GpuScan:
    """Every NVIDIA GPU of the machine (physical indices) plus driver-level versions."""

    devices: tuple[GpuDevice, ...]
    driver_version: str | None
    cuda_version: str | None
    source: str


def probe(environ: Mapping[str, str] | None = None) -> CudaInfo | None:
    """CUDA devices visible to this process, or None when there are none (or no driver)."""
    scan = probe_nvml()
    if scan is None:
        scan = probe_nvidia_smi()
    if scan is None:
        return None
    spec = tools.env_value(environ, "CUDA_VISIBLE_DEVICES")
    devices = tools.visible(scan.devices, spec)
    if not devices:
        log.debug(
            "no visible CUDA device",
            extra={"found": len(scan.devices), "cuda_visible_devices": spec},
        )
        return None
    return CudaInfo(
        version=scan.cuda_version,
        driver_version=scan.driver_version,
        cudnn_version=cudnn_version(),
        devices=tuple(devices),
    )


# -- NVML ---------------------------------------------------------------------------------


def probe_nvml() -> GpuScan | None:
    """Enumerate GPUs through NVML; None when NVML is missing, fails or hangs."""
    if pynvml is None:
        log.debug("nvidia-ml-py not installed")
        return None
    return _bounded(lambda: _nvml_scan(pynvml), "nvml")


def _bounded(fn: Callable[[], _T | None], what: str) -> _T | None:
    """Run ``fn`` in a daemon thread; give up after the probe timeout, swallow errors."""
    box: list[_T | None] = []

    def target() -> None:
        try:
            box.append(fn())
        except Exception as exc:
            log.debug("probe failed", extra={"probe": what, "error": repr(exc)})
            box.append(None)

    thread = threading.Thread(target=target, name=f"snakepit-{what}-probe", daemon=True)
    thread.start()
    thread.join(tools.PROBE_TIMEOUT)
    if not box:
        log.debug("probe timed out", extra={"probe": what, "timeout": tools.PROBE_TIMEOUT})
        return None
    return box[0]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _optional(fn: Callable[[], _T]) -> _T | None:
    try:
        return fn()
    except Exception as exc:
        log.debug("NVML query failed", extra={"error": repr(exc)})
        return None


def format_cuda_version(version: int) -> str:
    """NVML's integer CUDA driver version (12040) as ``"12.4"``."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _uuid_of(nvml: Any, handle: Any) -> str:
    return _text(nvml.nvmlDeviceGetUUID(handle))


def _nvml_scan(nvml: Any) -> GpuScan | None:
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("NVML unavailable", extra={"error": repr(exc)})
        return None
    try:
        driver = _optional(lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        cuda_raw = _optional(nvml.nvmlSystemGetCudaDriverVersion)
        cuda = format_cuda_version(int(cuda_raw)) if cuda_raw else None
        devices = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = _optional(partial(nvml.nvmlDeviceGetMemoryInfo, handle))
            capability = _optional(partial(nvml.nvmlDeviceGetCudaComputeCapability, handle))
            devices.append(
                GpuDevice(
                    id=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total_mb=int(memory.total) // _MIB if memory is not None else None,
                    memory_free_mb=int(memory.free) // _MIB if memory is not None else None,
                    compute_capability=(
                        f"{capability[0]}.{capability[1]}" if capability is not None else None
                    ),
                    uuid=_optional(partial(_uuid_of, nvml, handle)),
                )
            )
        return GpuScan(tuple(devices), driver, cuda, "nvml")
    finally:
        _optional(nvml.nvmlShutdown)


# -- nvidia-smi ---------------------------------------------------------------------------


def _query(fields: Sequence[str]) -> tools.ToolOutput | None:
    return tools.run_tool(
        ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    )


def probe_nvidia_smi() -> GpuScan | None:
    """Enumerate GPUs with ``nvidia-smi --query-gpu``; None when absent or broken."""
    fields = list(NVIDIA_SMI_FIELDS)
    out = _query(fields)
    if out is not None and not out.ok and "not a valid field" in out.stdout + out.stderr:
        # Drivers before ~510 do not know compute_cap; ask again without it.
        fields.remove("compute_cap")
        out = _query(fields)
    if out is None or not out.ok:
        return None
    devices, driver = parse_query_csv(out.stdout, fields)
    if not devices:
        log.debug("nvidia-smi listed no GPU", extra={"output": out.stdout.strip()[:200]})
        return None
    table = tools.run_tool(["nvidia-smi"])
    cuda = parse_cuda_version(table.stdout) if table is not None and table.ok else None
    return GpuScan(tuple(devices), driver, cuda, "nvidia-smi")


def _value(raw: str) -> str | None:
    value = raw.strip()
    if not value or value.strip("[]").lower() in ("n/a", "not supported", "unknown error"):
        return None
    return value


def _mb(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


def parse_query_csv(text: str, fields: Sequence[str]) -> tuple[list[GpuDevice], str | None]:
    """Parse ``--format=csv,noheader,nounits`` lines for ``fields``; skip malformed lines."""
    devices: list[GpuDevice] = []
    driver: str | None = None
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != len(fields):
            if line.strip():
                log.debug("unexpected nvidia-smi line", extra={"line": line[:200]})
            continue
        row = dict(zip(fields, parts, strict=True))
        index_text = row.get("index", "")
        if not index_text.isdigit():
            continue
        driver = driver or _value(row.get("driver_version", ""))
        devices.append(
            GpuDevice(
                id=int(index_text),
                name=_value(row.get("name", "")) or "unknown",
                memory_total_mb=_mb(_value(row.get("memory.total", ""))),
                memory_free_mb=_mb(_value(row.get("memory.free", ""))),
                compute_capability=_value(row.get("compute_cap", "")),
                uuid=_value(row.get("uuid", "")),
            )
        )
    return devices, driver


_CUDA_VERSION = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)")


def parse_cuda_version(table: str) -> str | None:
    """The ``CUDA Version: 12.4`` of the plain ``nvidia-smi`` header (None before ~410)."""
    found = _CUDA_VERSION.search(table)
    return found.group(1) if found else None


# -- cuDNN --------------------------------------------------------------------------------


def format_cudnn_version(version: int) -> str:
    """``cudnnGetVersion()``'s integer as text: 8902 -> "8.9.2", 90100 -> "9.1.0"."""
    if version >= 10000:
        major, rest = divmod(version, 10000)
    else:
        major, rest = divmod(version, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def _cudnn_candidates() -> list[str]:
    names = ["libcudnn.so.9", "libcudnn.so.8", "libcudnn.so", "cudnn64_9.dll", "cudnn64_8.dll"]
    candidates: list[str] = []
    try:
        spec = importlib.util.find_spec("nvidia.cudnn")
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        for location in spec.submodule_search_locations or ():
            for folder in ("lib", "bin"):
                candidates += [str(Path(location, folder, n)) for n in names]
    return [c for c in candidates if Path(c).exists()] + names


def _torch_cudnn_version(torch: Any) -> Any:
    return torch.backends.cudnn.version()


def cudnn_version() -> str | None:
    """cuDNN's version when discoverable (an already imported torch, or the library), else None.

    Never imports torch: it is consulted only when the application already did.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        raw = _optional(lambda: _torch_cudnn_version(torch))
        if isinstance(raw, int) and raw > 0:
            return format_cudnn_version(raw)
    for candidate in _cudnn_candidates():
        try:
            library = ctypes.CDLL(candidate)
            get_version = library.cudnnGetVersion
        except (OSError, AttributeError):
            continue
        get_version.restype = ctypes.c_size_t
        get_version.argtypes = []
        raw = _optional(get_version)
        if isinstance(raw, int) and raw > 0:
            return format_cudnn_version(raw)
    return None
