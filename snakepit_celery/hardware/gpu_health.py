"""The NVML health watcher: one thread per node reading GPU events and probing each GPU.

``NvmlWatcher`` registers every watched GPU (by UUID) for NVML's critical
events (Xid, double-bit ECC, GPU unavailable, DRAM retirement failure, fatal
poison) and waits on them with a short timeout; every ``probe_interval``
seconds it also probes each GPU cheaply (free memory, lost GPU, pending page
retirement, row remapping, uncorrected ECC counters). Findings go to
``on_finding`` (new ones only: a state finding is reported when it appears,
not on every probe); free/total memory is kept for the heartbeat
(``memory()``). NVML missing or failing at start: the thread ends, logged
once. A call that raises is logged and skipped; the thread is a daemon, so
an NVML call that hangs holds only this thread, never the worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from snakepit_celery.policy.gpu_health import FindingKind, GpuFinding

try:
    import pynvml
except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
    pynvml = None

__all__ = [
    "EVENT_FINDINGS",
    "GpuMemory",
    "NvmlWatcher",
    "nvml_error_code",
    "process_gpu_memory_mb",
]

logger = logging.getLogger(__name__)

_MIB = 2**20
#: NVML return codes the watcher tells apart (``pynvml.NVML_ERROR_*``).
_GPU_IS_LOST = 15
_TIMEOUT = 10

#: NVML event type bit -> finding kind (``nvmlEventType*`` values).
EVENT_FINDINGS: Mapping[int, FindingKind] = {
    0x0008: FindingKind.XID,  # nvmlEventTypeXidCriticalError
    0x0002: FindingKind.DOUBLE_BIT_ECC,  # nvmlEventTypeDoubleBitEccError
    0x0800: FindingKind.REMAP_FAILURE,  # nvmlEventTypeDramRetirementFailure
    0x2000: FindingKind.FATAL_POISON,  # nvmlEventTypeFatalPoisonError
    0x4000: FindingKind.GPU_LOST,  # nvmlEventTypeGpuUnavailableError
}
_EVENT_MASK = sum(EVENT_FINDINGS)


def nvml_error_code(exc: BaseException) -> int | None:
    """The NVML return code an ``NVMLError`` carries (``value``), else None."""
    value = getattr(exc, "value", None)
    return value if isinstance(value, int) else None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """Free and total memory (MB) of one GPU, and when (monotonic s) it was read."""

    uuid: str
    free_mb: int
    total_mb: int
    sampled_at: float


@dataclass
class _GpuState:
    handle: Any
    uncorrected: int | None = None
    seen: set[FindingKind] = field(default_factory=set)


class NvmlWatcher:
    """Watches GPUs ``uuids`` through NVML on one daemon thread (see the module docstring).

    ``on_finding(finding)`` is called for each new finding, ``on_tick()``
    after each probe round (both on the watcher thread; exceptions are logged).
    """

    def __init__(
        self,
        uuids: Sequence[str],
        on_finding: Callable[[GpuFinding], None],
        *,
        on_tick: Callable[[], None] | None = None,
        event_timeout: float = 0.2,
        probe_interval: float = 2.0,
    ) -> None:
        self.uuids = tuple(uuids)
        self.on_finding = on_finding
        self.on_tick = on_tick
        self.event_timeout = event_timeout
        self.probe_interval = probe_interval
        self._gpus: dict[str, _GpuState] = {}
        self._memory: dict[str, GpuMemory] = {}
        self._events: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Set once NVML answered at start (the thread is watching).
        self.ready = threading.Event()

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> None:
        """Start the watcher thread (NVML is opened on it; idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="snakepit-gpu-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread (waits at most ``timeout``: a hung NVML call is abandoned)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the watcher thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def memory(self) -> dict[str, GpuMemory]:
        """The last free/total memory read of each GPU (a copy; read by the heartbeat)."""
        return dict(self._memory)

    # -- the thread -------------------------------------------------------------------
    def _run(self) -> None:
        if pynvml is None or not self._open():
            return
        self.ready.set()
        try:
            next_probe = 0.0
            while not self._stop.is_set():
                if time.monotonic() >= next_probe:
                    self._probe_all()
                    next_probe = time.monotonic() + self.probe_interval
                self._wait_event()
        finally:
            self._close()

    def _open(self) -> bool:
        try:
            pynvml.nvmlInit()
        except Exception as exc:
            logger.info("GPU health watch off: NVML unavailable (%r)", exc)
            return False
        for uuid in self.uuids:
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            except Exception as exc:
                logger.warning("GPU %s not found through NVML: %r", uuid, exc, extra={"uuid": uuid})
                continue
            self._gpus[uuid] = _GpuState(handle)
        self._events = self._guard(pynvml.nvmlEventSetCreate, "nvmlEventSetCreate")
        if self._events is not None:
            for uuid, gpu in self._gpus.items():
                self._register(uuid, gpu.handle)
        return bool(self._gpus)

    def _register(self, uuid: str, handle: Any) -> None:
        supported = self._guard(
            lambda: pynvml.nvmlDeviceGetSupportedEventTypes(handle), "supported events"
        )
        mask = _EVENT_MASK & int(supported) if supported is not None else 0x0008
        self._guard(
            lambda: pynvml.nvmlDeviceRegisterEvents(handle, mask, self._events),
            f"nvmlDeviceRegisterEvents({uuid})",
        )

    def _close(self) -> None:
        if self._events is not None:
            events, self._events = self._events, None
            self._guard(lambda: pynvml.nvmlEventSetFree(events), "nvmlEventSetFree")
        self._guard(pynvml.nvmlShutdown, "nvmlShutdown")

    def _guard(self, call: Callable[[], Any], what: str) -> Any:
        try:
            return call()
        except Exception as exc:
            logger.debug("NVML call failed", extra={"nvml_call": what, "error": repr(exc)})
            return None

    def _wait_event(self) -> None:
        if self._events is None:
            self._stop.wait(self.event_timeout)
            return
        timeout_ms = max(1, int(self.event_timeout * 1000))
        try:
            data = pynvml.nvmlEventSetWait(self._events, timeout_ms)
        except Exception as exc:
            if nvml_error_code(exc) != _TIMEOUT:
                logger.debug("nvmlEventSetWait failed", extra={"error": repr(exc)})
                self._stop.wait(self.event_timeout)
            return
        self._report_event(data)

    def _report_event(self, data: Any) -> None:
        kind = EVENT_FINDINGS.get(int(data.eventType))
        if kind is None:
            return
        uuid = self._guard(lambda: _text(pynvml.nvmlDeviceGetUUID(data.device)), "uuid of event")
        if uuid is None:
            return
        xid = int(data.eventData) if kind is FindingKind.XID else None
        detail = f"NVML event 0x{int(data.eventType):x}, data {int(data.eventData)}"
        self._emit(GpuFinding(str(uuid), kind, xid, detail))

    def _emit(self, finding: GpuFinding) -> None:
        try:
            self.on_finding(finding)
        except Exception:
            logger.exception("GPU finding handler failed", extra={"uuid": finding.uuid})

    # -- probes -----------------------------------------------------------------------
    def _probe_all(self) -> None:
        for uuid, gpu in self._gpus.items():
            found = self.probe(uuid)
            kinds = {finding.kind for finding in found}
            for finding in found:
                if finding.kind not in gpu.seen or finding.kind is FindingKind.ECC_RISING:
                    self._emit(finding)
            gpu.seen = kinds - {FindingKind.ECC_RISING}
        if self.on_tick is not None:
            try:
                self.on_tick()
            except Exception:
                logger.exception("GPU health tick failed")

    def probe(self, uuid: str) -> list[GpuFinding]:
        """Probe one GPU now: the findings it shows (empty: healthy). Also samples its memory."""
        gpu = self._gpus.get(uuid)
        if gpu is None:
            return [GpuFinding(uuid, FindingKind.GPU_LOST, detail="not found through NVML")]
        handle = gpu.handle
        try:
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        except Exception as exc:
            if nvml_error_code(exc) == _GPU_IS_LOST:
                return [GpuFinding(uuid, FindingKind.GPU_LOST, detail="NVML_ERROR_GPU_IS_LOST")]
            logger.debug("memory query failed", extra={"uuid": uuid, "error": repr(exc)})
        else:
            self._memory[uuid] = GpuMemory(
                uuid, int(memory.free) // _MIB, int(memory.total) // _MIB, time.monotonic()
            )
        return [*self._pages_and_rows(uuid, handle), *self._ecc(uuid, gpu)]

    def _pages_and_rows(self, uuid: str, handle: Any) -> list[GpuFinding]:
        found: list[GpuFinding] = []
        pending = self._guard(
            lambda: pynvml.nvmlDeviceGetRetiredPagesPendingStatus(handle), "pending pages"
        )
        if pending:
            found.append(GpuFinding(uuid, FindingKind.PAGES_PENDING, detail="page retirement"))
        rows = self._guard(lambda: pynvml.nvmlDeviceGetRemappedRows(handle), "remapped rows")
        if rows is not None:
            if rows[3]:
                found.append(GpuFinding(uuid, FindingKind.REMAP_FAILURE, detail="row remap"))
            elif rows[2]:
                found.append(GpuFinding(uuid, FindingKind.REMAP_PENDING, detail="row remap"))
        return found

    def _ecc(self, uuid: str, gpu: _GpuState) -> list[GpuFinding]:
        count = self._guard(
            lambda: pynvml.nvmlDeviceGetTotalEccErrors(gpu.handle, 1, 0), "uncorrected ECC"
        )
        if count is None:
            return []
        previous, gpu.uncorrected = gpu.uncorrected, int(count)
        if previous is not None and int(count) > previous:
            detail = f"volatile uncorrected ECC {previous} -> {int(count)}"
            return [GpuFinding(uuid, FindingKind.ECC_RISING, detail=detail)]
        return []


# -- device memory of one process (``max_gpu_memory_per_child``) -------------------------------

_process_nvml: dict[str, bool] = {}


def process_gpu_memory_mb(pid: int, timeout: float = 1.0) -> int | None:
    """MB of GPU memory process ``pid`` holds on all GPUs (NVML per-process usage).

    None when NVML cannot say (no NVML, no permission, a call that raises or
    takes longer than ``timeout``: it is abandoned on a daemon thread).
    """
    if pynvml is None:
        return None
    box: list[int | None] = []
    thread = threading.Thread(
        target=lambda: box.append(_process_memory(pid)), name="snakepit-gpu-mem", daemon=True
    )
    thread.start()
    thread.join(timeout)
    return box[0] if box else None


def _process_memory(pid: int) -> int | None:
    try:
        if not _process_nvml.get("open"):
            pynvml.nvmlInit()
            _process_nvml["open"] = True
        used = 0
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if int(process.pid) == pid and process.usedGpuMemory is not None:
                    used += int(process.usedGpuMemory)
        return used // _MIB
    except Exception as exc:
        logger.debug("per-process GPU memory unknown", extra={"pid": pid, "error": repr(exc)})
        return None
