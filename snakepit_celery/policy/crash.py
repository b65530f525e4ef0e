"""Crash classification and the crash barrier's configuration (pure: no I/O, no clock).

``classify()`` turns what is left of a dead task — an exit code, a signal, a
Celery/billiard ``WorkerLostError`` message, a CUDA/HIP error text — into a
:class:`Classification`. ``gpu_error_action()`` says what one GPU error means
for the fleet (recycle the process? taint the GPU? retry the same input?),
driven by the tables below (after ``GPU_ERRORS.md``): CUDA errors are sticky
(the CUDA context is dead until the process exits) or not, and some point at
the hardware. "CUDA out of memory" is *not* a crash: it is the retriable
``gpu_oom`` kind, so ``classify()`` never calls it ``gpu``.

:class:`CrashBarrierConfig` holds the barrier's settings, validated at
construction, with the two pure decisions: ``retry_allowed()`` and
``backoff_for()``.
"""

from __future__ import annotations

import dataclasses
import re
import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.checks import check_bool, check_int, check_seconds

__all__ = [
    "GPU_ERROR_RULES",
    "XID_ACTIONS",
    "Classification",
    "CrashBarrierConfig",
    "CrashInfo",
    "GpuErrorAction",
    "GpuErrorKind",
    "RetryMode",
    "classify",
    "describe_crash",
    "gpu_error_action",
    "parse_crash",
]


class Classification(StrEnum):
    """What killed a worker process."""

    SEGFAULT = "segfault"
    ABORT = "abort"
    OOM = "oom"
    GPU = "gpu"
    UNKNOWN = "unknown"


class RetryMode(StrEnum):
    """When a task whose worker crashed may run again."""

    ALWAYS = "always"
    IDEMPOTENT = "idempotent"
    NEVER = "never"


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
        return {
            "kind": str(self.kind),
            "sticky": self.sticky,
            "recycle": self.recycle,
            "taint_device": self.taint_device,
            "retry_same_input": self.retry_same_input,
            "code": self.code,
            "xid": self.xid,
        }


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


# -- crash signals and exit codes ---------------------------------------------

#: Fatal signal -> classification (SIGKILL is what the kernel's OOM killer sends).
SIGNAL_CLASSES: Mapping[int, Classification] = {
    _signal.SIGSEGV: Classification.SEGFAULT,
    _signal.SIGBUS: Classification.SEGFAULT,
    _signal.SIGABRT: Classification.ABORT,
    _signal.SIGKILL: Classification.OOM,
}

#: Crash texts that name no signal number (shells, faulthandler, kernel log).
_CRASH_TEXT_RULES: tuple[tuple[re.Pattern[str], Classification], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), classification)
    for pattern, classification in (
        (r"segmentation fault|\bSIGSEGV\b|\bbus error\b|\bSIGBUS\b", Classification.SEGFAULT),
        (
            r"\bSIG(ABRT|IOT)\b|\baborted \(core dumped\)|fatal python error: abort",
            Classification.ABORT,
        ),
        (r"\bSIGKILL\b|out of memory: kill(ed)? process|\boom[-_ ]?kill", Classification.OOM),
    )
)

_SIGNAL_NUMBER_RE = re.compile(r"\b(?:signal|sig)\s*[:=]?\s*(\d{1,2})\b", re.IGNORECASE)
_SIGNAL_NAME_RE = re.compile(r"\bSIG([A-Z]{2,6}\d?)\b")
_EXIT_CODE_RE = re.compile(
    r"\b(?:exit[ _]?code|exit[ _]?status|exited with (?:code|status)|return[ _]?code)"
    r"\s*[:=]?\s*(-?\d{1,3})\b",
    re.IGNORECASE,
)
_SHELL_SIGNAL_BASE = 128
_MAX_SIGNAL = 64


def _signal_from_exit_code(exit_code: int) -> int | None:
    """The signal an exit code reports: -N (multiprocessing) or 128+N (shells, containers)."""
    if exit_code < 0 and -exit_code <= _MAX_SIGNAL:
        return -exit_code
    if _SHELL_SIGNAL_BASE < exit_code <= _SHELL_SIGNAL_BASE + _MAX_SIGNAL:
        return exit_code - _SHELL_SIGNAL_BASE
    return None


def _signal_from_message(message: str) -> int | None:
    match = _SIGNAL_NUMBER_RE.search(message)
    if match is not None:
        return int(match.group(1))
    for name_match in _SIGNAL_NAME_RE.finditer(message):
        number = getattr(_signal, f"SIG{name_match.group(1)}", None)
        if isinstance(number, int):
            return int(number)
    return None


def parse_crash(
    exit_code: int | None = None, message: str | None = None, *, signal: int | None = None
) -> tuple[int | None, int | None]:
    """``(exit_code, signal)`` as far as they can be told from the arguments.

    A missing exit code is read from texts like billiard's "exitcode 137";
    a missing signal from the exit code (-11, 139) or texts like
    "signal 11 (SIGSEGV)".
    """
    if exit_code is None and message:
        match = _EXIT_CODE_RE.search(message)
        if match is not None:
            exit_code = int(match.group(1))
    if signal is None and exit_code is not None:
        signal = _signal_from_exit_code(exit_code)
    if signal is None and message:
        signal = _signal_from_message(message)
    return exit_code, signal


def classify(
    exit_code: int | None = None, message: str | None = None, *, signal: int | None = None
) -> Classification:
    """Classify a crash from its exit code, signal and/or error text.

    139 / -11 / signal 11 -> ``segfault``; 134 / -6 / signal 6 -> ``abort``;
    137 / -9 / signal 9 -> ``oom``; fatal CUDA/HIP text -> ``gpu`` (it wins over
    the exit code: the text names the cause, the signal only the symptom);
    anything else, including "CUDA out of memory", -> ``unknown``.
    """
    action = gpu_error_action(message)
    if action is not None and action.fatal:
        return Classification.GPU
    exit_code, signal = parse_crash(exit_code, message, signal=signal)
    if signal is not None and signal in SIGNAL_CLASSES:
        return SIGNAL_CLASSES[signal]
    if message:
        for pattern, classification in _CRASH_TEXT_RULES:
            if pattern.search(message):
                return classification
    return Classification.UNKNOWN


@dataclass(frozen=True, slots=True)
class CrashInfo:
    """What is known about one crash: a human ``reason``, how the process ended, on which device."""

    reason: str
    exit_code: int | None
    signal: int | None
    classification: Classification
    device: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict; keys are the field names."""
        return {
            "reason": self.reason,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "classification": str(self.classification),
            "device": self.device,
        }


def _signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def describe_crash(
    exit_code: int | None = None,
    message: str | None = None,
    *,
    signal: int | None = None,
    device: str | None = None,
) -> CrashInfo:
    """Build the :class:`CrashInfo` of a crash (any crash; taint rules are the barrier's)."""
    exit_code, signal = parse_crash(exit_code, message, signal=signal)
    classification = classify(exit_code, message, signal=signal)
    if message:
        reason = message.strip()
    elif signal is not None:
        reason = f"signal {signal} ({_signal_name(signal)})"
    elif exit_code is not None:
        reason = f"exit code {exit_code}"
    else:
        reason = "unknown crash"
    return CrashInfo(reason, exit_code, signal, classification, device)


# -- configuration ---------------------------------------------------------------

_MODES_TEXT = "always, idempotent, never"
_CLASSES_TEXT = ", ".join(c.value for c in Classification)


def _as_tuple(setting: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes | int | float | type):
        return (value,)
    if not isinstance(value, Iterable):
        raise ConfigError(setting, value, "a list")
    return tuple(value)


def _error_type_name(value: str | type[BaseException]) -> str:
    if isinstance(value, str):
        return value
    return f"{value.__module__}.{value.__qualname__}"


@dataclass(frozen=True, slots=True)
class CrashBarrierConfig:
    """Settings of the crash barrier (``snakepit_crash_barrier`` / a task's ``crash_barrier``).

    Durations are seconds. ``retry`` is ``always``, ``idempotent`` or ``never``
    (``True``/``False`` are read as ``always``/``never``, as upstream does);
    ``mark_on`` names the classifications that taint the worker;
    ``taint_on_exit_codes`` and ``taint_on_error_types`` (exception class
    names, dotted names or classes) taint whatever their classification.
    Invalid values raise :class:`ConfigError` naming the setting.
    """

    enabled: bool = False
    retry: RetryMode | str = RetryMode.IDEMPOTENT
    max_restarts: int = 1
    taint_duration: float = 60.0
    backoff: Sequence[float] = (0.05, 0.1, 0.2)
    mark_on: Sequence[Classification | str] = (
        Classification.SEGFAULT,
        Classification.OOM,
        Classification.GPU,
    )
    taint_on_exit_codes: Sequence[int] = ()
    taint_on_error_types: Sequence[str | type[BaseException]] = ()
    taint_device_on_cuda_fatal: bool = True

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("enabled", check_bool("enabled", self.enabled))
        put("retry", _check_retry(self.retry))
        put("max_restarts", check_int("max_restarts", self.max_restarts, minimum=0))
        put("taint_duration", check_seconds("taint_duration", self.taint_duration, positive=True))
        put(
            "backoff",
            tuple(check_seconds("backoff", d) for d in _as_tuple("backoff", self.backoff)),
        )
        put("mark_on", tuple(_check_class(v) for v in _as_tuple("mark_on", self.mark_on)))
        codes = _as_tuple("taint_on_exit_codes", self.taint_on_exit_codes)
        put("taint_on_exit_codes", tuple(check_int("taint_on_exit_codes", c) for c in codes))
        types = _as_tuple("taint_on_error_types", self.taint_on_error_types)
        put("taint_on_error_types", tuple(_check_error_type(t) for t in types))
        put(
            "taint_device_on_cuda_fatal",
            check_bool("taint_device_on_cuda_fatal", self.taint_device_on_cuda_fatal),
        )

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any] | None) -> CrashBarrierConfig:
        """Build from a settings dict (app.conf style); unknown keys raise ``ConfigError``."""
        return cls().merged(settings)

    def merged(self, overrides: Mapping[str, Any] | None) -> CrashBarrierConfig:
        """A copy with ``overrides`` applied (e.g. a task's ``crash_barrier`` over the app's)."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ConfigError("crash_barrier", overrides, "a dict of crash barrier settings")
        known = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in known:
                hint = "; durations are seconds, without _ms" if str(key).endswith("_ms") else ""
                raise ConfigError(str(key), overrides[key], ", ".join(known) + hint)
        return dataclasses.replace(self, **dict(overrides))

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict that ``from_dict()`` reads back."""
        return {
            "enabled": self.enabled,
            "retry": str(self.retry),
            "max_restarts": self.max_restarts,
            "taint_duration": self.taint_duration,
            "backoff": list(self.backoff),
            "mark_on": [str(c) for c in self.mark_on],
            "taint_on_exit_codes": list(self.taint_on_exit_codes),
            "taint_on_error_types": [_error_type_name(t) for t in self.taint_on_error_types],
            "taint_device_on_cuda_fatal": self.taint_device_on_cuda_fatal,
        }

    def retry_allowed(self, idempotent: bool, attempt: int) -> bool:
        """May a task whose worker crashed run again?

        ``attempt`` is the number of restarts already made for the task (from 0).
        True iff the barrier is enabled, the mode allows it (``always``, or
        ``idempotent`` with ``idempotent=True``) and ``attempt < max_restarts``.
        """
        if not self.enabled or attempt >= self.max_restarts:
            return False
        if self.retry is RetryMode.ALWAYS:
            return True
        return self.retry is RetryMode.IDEMPOTENT and bool(idempotent)

    def backoff_for(self, attempt: int) -> float:
        """Delay (s) before the restart that follows ``attempt`` earlier restarts.

        ``backoff[attempt]``, the last value once the list runs out, 0.0 for an
        empty list.
        """
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(attempt, 0), len(self.backoff) - 1)]

    def taintable(self, info: CrashInfo, *, error_type_matched: bool = False) -> bool:
        """Does this crash taint the worker?

        Yes when its classification is in ``mark_on``, its exit code in
        ``taint_on_exit_codes``, or its exception type matched ``taint_on_error_types``.
        """
        return (
            error_type_matched
            or info.classification in self.mark_on
            or (info.exit_code is not None and info.exit_code in self.taint_on_exit_codes)
        )

    def matches_error_type(self, exc: BaseException) -> bool:
        """True when ``exc``'s class (or a base class) is listed in ``taint_on_error_types``."""
        if not self.taint_on_error_types:
            return False
        names: set[str] = set()
        for klass in type(exc).__mro__:
            names.add(klass.__name__)
            names.add(f"{klass.__module__}.{klass.__qualname__}")
        for wanted in self.taint_on_error_types:
            if isinstance(wanted, str):
                if wanted in names:
                    return True
            elif isinstance(exc, wanted):
                return True
        return False


def _check_retry(value: Any) -> RetryMode:
    if value is True:
        return RetryMode.ALWAYS
    if value is False:
        return RetryMode.NEVER
    try:
        return RetryMode(value)
    except ValueError:
        raise ConfigError("retry", value, _MODES_TEXT) from None


def _check_class(value: Any) -> Classification:
    try:
        return Classification(value)
    except ValueError:
        raise ConfigError("mark_on", value, _CLASSES_TEXT) from None


def _check_error_type(value: Any) -> str | type[BaseException]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, type) and issubclass(value, BaseException):
        return value
    raise ConfigError("taint_on_error_types", value, "exception class names or classes")
