"""A fake NVML at the boundary: ``pynvml``'s functions monkeypatched to replay a scenario.

The scenario is a JSON file (so a test can change it while a worker
subprocess runs): ``{"gpus": [{"uuid", "name", "total_mb", "free_mb",
"lost", "pages_pending", "remap": [corr, unc, pending, failure], "ecc"}],
"events": [{"id", "uuid", "type", "data"}], "processes": [{"pid", "uuid",
"mb"}], "hang": false}``. Memory figures
default to the A100 80GB rows of a real ``nvidia-smi`` table
(``fixtures/hardware/nvidia_smi_table_4x_a100_sxm4_555.42.02.txt``). Each
event is delivered once by ``nvmlEventSetWait``; ``"hang": true`` makes every
NVML call block (a hung driver). ``install_from_env()`` installs it in a
worker subprocess when ``SNAKEPIT_FAKE_NVML`` names a scenario file.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml

FIXTURE = (
    Path(__file__).resolve().parents[1]
    / "fixtures"
    / "hardware"
    / "nvidia_smi_table_4x_a100_sxm4_555.42.02.txt"
)
XID_EVENT = 0x0008  # nvmlEventTypeXidCriticalError
DOUBLE_BIT_ECC_EVENT = 0x0002  # nvmlEventTypeDoubleBitEccError


def a100_rows() -> list[tuple[str, int, int]]:
    """(name, used MiB, total MiB) of each GPU of the captured A100 table."""
    text = FIXTURE.read_text()
    names = re.findall(r"\|\s+\d+\s+(NVIDIA [\w-]+)\s", text)
    memory = re.findall(r"(\d+)MiB /\s+(\d+)MiB", text)
    return [(n, int(u), int(t)) for n, (u, t) in zip(names, memory, strict=True)]


def scenario(gpus: int = 2, free_mb: list[int] | None = None) -> dict[str, Any]:
    """A scenario of ``gpus`` A100s (UUIDs ``GPU-test-<i>`` as ``fleet.cuda_hardware``)."""
    rows = a100_rows()
    out = []
    for i in range(gpus):
        name, used, total = rows[i % len(rows)]
        free = total - used if free_mb is None else free_mb[i]
        out.append({"uuid": f"GPU-test-{i:04d}", "name": name, "total_mb": total, "free_mb": free})
    return {"gpus": out, "events": []}


def write_scenario(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` atomically (a reader never sees half a file)."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)
    return path


def add_event(path: Path, uuid: str, event_type: int, data: int) -> None:
    """Append one NVML event to the scenario file."""
    current = json.loads(path.read_text())
    events = current.setdefault("events", [])
    events.append({"id": len(events) + 1, "uuid": uuid, "type": event_type, "data": data})
    write_scenario(path, current)


class FakeNvml:
    """Answers NVML calls from a scenario file (re-read when it changes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.delivered: set[int] = set()
        self._mtime = -1.0
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def data(self) -> dict[str, Any]:
        with self._lock:
            try:
                mtime = self.path.stat().st_mtime_ns
                if mtime != self._mtime:
                    self._data, self._mtime = json.loads(self.path.read_text()), mtime
            except (OSError, ValueError):
                pass
            if self._data.get("hang"):
                time.sleep(3600)
            return self._data

    def gpu(self, handle: int) -> dict[str, Any]:
        gpu: dict[str, Any] = self.data()["gpus"][handle]
        if gpu.get("lost"):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return gpu

    def handle_by_uuid(self, uuid: Any) -> int:
        text = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        for index, gpu in enumerate(self.data()["gpus"]):
            if gpu["uuid"] == text:
                return index
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def wait(self, event_set: Any, timeout_ms: int) -> Any:
        data = self.data()
        for event in data.get("events", ()):
            if event["id"] not in self.delivered:
                self.delivered.add(event["id"])
                return SimpleNamespace(
                    device=self.handle_by_uuid(event["uuid"]),
                    eventType=event["type"],
                    eventData=event["data"],
                    gpuInstanceId=0,
                    computeInstanceId=0,
                )
        time.sleep(timeout_ms / 1000)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)

    def memory(self, handle: int) -> Any:
        gpu = self.gpu(handle)
        total, free = gpu["total_mb"] * 2**20, gpu["free_mb"] * 2**20
        return SimpleNamespace(total=total, free=free, used=total - free)

    def processes(self, handle: int) -> list[Any]:
        uuid = self.gpu(handle)["uuid"]
        return [
            SimpleNamespace(pid=p["pid"], usedGpuMemory=p["mb"] * 2**20)
            for p in self.data().get("processes", ())
            if p["uuid"] == uuid
        ]

    def functions(self) -> dict[str, Any]:
        """pynvml name -> fake."""
        return {
            "nvmlInit": lambda: self.data() and None,
            "nvmlShutdown": lambda: None,
            "nvmlSystemGetDriverVersion": lambda: "555.42.02",
            "nvmlSystemGetCudaDriverVersion": lambda: 12050,
            "nvmlDeviceGetCount": lambda: len(self.data()["gpus"]),
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetHandleByUUID": self.handle_by_uuid,
            "nvmlDeviceGetName": lambda h: self.data()["gpus"][h]["name"],
            "nvmlDeviceGetUUID": lambda h: self.data()["gpus"][h]["uuid"],
            "nvmlDeviceGetCudaComputeCapability": lambda h: (8, 0),
            "nvmlDeviceGetMemoryInfo": self.memory,
            "nvmlDeviceGetRetiredPagesPendingStatus": lambda h: int(
                self.gpu(h).get("pages_pending", 0)
            ),
            "nvmlDeviceGetRemappedRows": lambda h: tuple(self.gpu(h).get("remap", (0, 0, 0, 0))),
            "nvmlDeviceGetTotalEccErrors": lambda h, kind, counter: int(self.gpu(h).get("ecc", 0)),
            "nvmlEventSetCreate": lambda: "event-set",
            "nvmlDeviceGetSupportedEventTypes": lambda h: 0xFFFF,
            "nvmlDeviceRegisterEvents": lambda h, mask, events: None,
            "nvmlEventSetWait": self.wait,
            "nvmlEventSetFree": lambda events: None,
            "nvmlDeviceGetComputeRunningProcesses": self.processes,
        }

    def install(self, setattr_: Any = setattr) -> FakeNvml:
        """Replace pynvml's functions (``setattr_``: ``monkeypatch.setattr`` in tests)."""
        for name, fn in self.functions().items():
            setattr_(pynvml, name, fn)
        return self


def install_from_env() -> FakeNvml | None:
    """Install the fake when ``SNAKEPIT_FAKE_NVML`` names a scenario file (worker subprocesses)."""
    path = os.environ.get("SNAKEPIT_FAKE_NVML")
    return FakeNvml(Path(path)).install() if path else None
