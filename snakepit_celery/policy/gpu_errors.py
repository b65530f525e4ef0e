"""The GPU error catalogue: what one CUDA/HIP error means for the fleet (pure data).

``gpu_error_action()`` says what a GPU error names in a message calls for
(recycle the process? taint the GPU? retry the same input?), driven by the
tables below (after ``GPU_ERRORS.md``): CUDA errors are sticky (the CUDA
context is dead until the process exits) or not, and some point at the
hardware. "CUDA out of memory" is *not* a crash: it is the retriable
``gpu_oom`` kind (its action is not ``fatal``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "GPU_ERROR_RULES",
    "XID_ACTIONS",
    "GpuErrorAction",
    "GpuErrorKind",
    "GpuErrorRule",
    "gpu_error_action",
]


class GpuErrorKind(StrEnum):
    """Families of GPU errors that call for the same action."""

    GPU_OOM = "gpu_oom"  # cudaErrorMemoryAllocation (2): recoverable, retry
    ILLEGAL_ADDRESS = "illegal_address"  # 700
    LAUNCH_FAILURE = "launch_failure"  # 719
    DEVICE_ASSERT = "device_assert"  # 710: a bug in the input or the code
    KERNEL_FAULT = "kernel_fault"  # 714-718
    LAUNCH_TIMEOUT = "launch_timeout"  # 702
    ECC = "ecc"  # 214 and ECC Xids
    DEVICE_LOST = "device_lost"  # no device, fallen off the bus
    LIBRARY = "library"  # cuBLAS/cuDNN/NCCL, usually secondary
    MEMORY_FAULT = "memory_fault"  # ROCm "Memory access fault by GPU node-N"
    XID_APPLICATION = "xid_application"  # Xid blamed on the application
    XID_HARDWARE = "xid_hardware"  # Xid that needs a GPU reset
    CUDA_ERROR = "cuda_error"  # any other CUDA/HIP runtime error


@dataclass(frozen=True, slots=True)
class GpuErrorAction:
    """What one GPU error means for the worker, the GPU and the task.

    ``sticky``: the CUDA context is poisoned, every later call fails;
    ``recycle``: the worker process must exit to recover; ``taint_device``:
    the GPU itself is suspect and should get no work for a while;
    ``retry_same_input``: running the same task again (elsewhere) may succeed.
    ``fatal`` is False only for ``gpu_oom``, which is an ordinary retriable error.
    """

    kind: GpuErrorKind
    sticky: bool
    recycle: bool
    taint_device: bool
    retry_same_input: bool = True
    code: int | None = None
    xid: int | None = None

    @property
    def fatal(self) -> bool:
        """True when the error kills the worker's GPU work (everything but ``gpu_oom``)."""
        return self.kind is not GpuErrorKind.GPU_OOM

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict (``kind`` as its string value)."""
        return {**dataclasses.asdict(self), "kind": str(self.kind)}


def _action(
    kind: GpuErrorKind,
    *,
    sticky: bool = True,
    recycle: bool = True,
    taint: bool = False,
    retry: bool = True,
    code: int | None = None,
) -> GpuErrorAction:
    return GpuErrorAction(kind, sticky, recycle, taint, retry, code)


_OOM = _action(GpuErrorKind.GPU_OOM, sticky=False, recycle=False, code=2)
_XID_APP = _action(GpuErrorKind.XID_APPLICATION)
_XID_HW = _action(GpuErrorKind.XID_HARDWARE, taint=True)
_XID_ECC = _action(GpuErrorKind.ECC, taint=True)

#: Xid code -> action (NVIDIA's Xid catalog): application errors recycle the
#: process only; 46/48/63/64/79/95 need the GPU drained and reset; 94 is a
#: contained ECC error (recycle).
XID_ACTIONS: Mapping[int, GpuErrorAction] = {
    13: _XID_APP,  # graphics engine exception
    31: _XID_APP,  # GPU memory page fault
    43: _XID_APP,  # GPU stopped processing (application fault)
    45: _XID_APP,  # preemptive cleanup after an earlier error
    68: _XID_APP,  # video processor exception
    94: dataclasses.replace(_XID_ECC, taint_device=False),  # contained ECC error
    46: _XID_HW,  # GPU stopped processing
    48: _XID_ECC,  # double-bit ECC error
    63: _XID_ECC,  # row remapping pending
    64: _XID_ECC,  # row remapping failure
    79: _action(GpuErrorKind.DEVICE_LOST, taint=True),  # fallen off the bus
    95: _XID_ECC,  # uncontained ECC error
}

#: An Xid the catalog above does not list: recycle, do not blame the GPU.
_XID_OTHER = _XID_APP

_XID_RE = re.compile(r"\bxid\b\s*(?:\([^)]*\))?\s*[:#=]?\s*(\d{1,4})\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class GpuErrorRule:
    """One row of :data:`GPU_ERROR_RULES`: a text pattern and its action."""

    pattern: re.Pattern[str]
    action: GpuErrorAction


def _rule(pattern: str, action: GpuErrorAction) -> GpuErrorRule:
    return GpuErrorRule(re.compile(pattern, re.IGNORECASE), action)


#: Message pattern -> action, first match wins, so the rows are in priority
#: order: hardware faults, then specific sticky errors, then library errors
#: (usually secondary to a sticky one), then out-of-memory, then any other
#: CUDA/HIP error. Xids are looked up in :data:`XID_ACTIONS` (tainting Xids
#: rank first, other Xids just before the generic rows).
_K = GpuErrorKind  # short alias for the table below
GPU_ERROR_RULES: tuple[GpuErrorRule, ...] = (
    _rule(r"uncorrectable ECC error", _action(_K.ECC, taint=True, code=214)),
    _rule(r"no CUDA-capable device is detected", _action(_K.DEVICE_LOST, taint=True, code=100)),
    _rule(r"fallen off the bus", _action(_K.DEVICE_LOST, taint=True, code=None)),
    _rule(r"device-side assert(ion)? triggered", _action(_K.DEVICE_ASSERT, retry=False, code=710)),
    _rule(r"HIP error:?\s*an illegal memory access", _action(_K.ILLEGAL_ADDRESS)),
    _rule(
        r"illegal memory access was encountered|cudaErrorIllegalAddress",
        _action(_K.ILLEGAL_ADDRESS, taint=True, code=700),
    ),
    _rule(
        r"unspecified launch failure|cudaErrorLaunchFailure",
        _action(_K.LAUNCH_FAILURE, taint=True, code=719),
    ),
    _rule(r"Memory access fault by GPU node-\d+", _action(_K.MEMORY_FAULT, taint=True)),
    _rule(r"hardware stack error", _action(_K.KERNEL_FAULT, code=714)),
    _rule(r"illegal instruction was encountered", _action(_K.KERNEL_FAULT, code=715)),
    _rule(r"misaligned address", _action(_K.KERNEL_FAULT, code=716)),
    _rule(r"invalid program counter", _action(_K.KERNEL_FAULT, code=718)),
    _rule(r"launch timed out and was terminated", _action(_K.LAUNCH_TIMEOUT, code=702)),
    _rule(r"(CUBLAS|CUDNN)_STATUS_EXECUTION_FAILED", _action(_K.LIBRARY)),
    _rule(r"NCCL.{0,200}?unhandled cuda error", _action(_K.LIBRARY)),
    _rule(
        r"\b(CUDA|HIP|GPU|MPS)\b.{0,40}?out of memory|(cuda|torch)\.OutOfMemoryError"
        r"|cudaErrorMemoryAllocation|hipErrorOutOfMemory|CUBLAS_STATUS_ALLOC_FAILED",
        _OOM,
    ),
    _rule(r"\b(CUDA|HIP) error\b|\b(cuda|hip)Error\w+|CUDA driver error", _action(_K.CUDA_ERROR)),
)

_GENERIC_RULES_START = len(GPU_ERROR_RULES) - 1


def gpu_error_action(message: str | None) -> GpuErrorAction | None:
    """What the GPU error named in ``message`` calls for, or None when it names none.

    Driven by :data:`GPU_ERROR_RULES` and :data:`XID_ACTIONS`; "CUDA out of
    memory" gives a non-fatal ``gpu_oom`` action (``fatal`` is False).
    """
    if not message:
        return None
    xid_action: GpuErrorAction | None = None
    xid_match = _XID_RE.search(message)
    if xid_match is not None:
        xid = int(xid_match.group(1))
        xid_action = dataclasses.replace(XID_ACTIONS.get(xid, _XID_OTHER), xid=xid)
        if xid_action.taint_device:
            return xid_action
    for index, rule in enumerate(GPU_ERROR_RULES):
        if index == _GENERIC_RULES_START and xid_action is not None:
            return xid_action
        if rule.pattern.search(message):
            return rule.action
    return xid_action
