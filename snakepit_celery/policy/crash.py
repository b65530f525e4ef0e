"""Crash classification (pure: no I/O, no clock).

``classify()`` turns what is left of a dead task — an exit code, a signal, a
Celery/billiard ``WorkerLostError`` message, a CUDA/HIP error text — into a
:class:`Classification`; GPU error texts are looked up in the catalogue of
``policy/gpu_errors.py``. "CUDA out of memory" is *not* a crash: it is the
retriable ``gpu_oom`` kind, so ``classify()`` never calls it ``gpu``.

The crash barrier's settings are ``policy/barrier_config.py``.
"""

from __future__ import annotations

import dataclasses
import re
import signal as _signal
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from snakepit_celery.policy.exit_status import parse_crash, signal_name
from snakepit_celery.policy.gpu_errors import gpu_error_action

__all__ = [
    "Classification",
    "CrashInfo",
    "RetryMode",
    "classification_or_none",
    "classify",
    "describe_crash",
    "exception_text",
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
        return {**dataclasses.asdict(self), "classification": str(self.classification)}


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
        reason = f"signal {signal} ({signal_name(signal)})"
    elif exit_code is not None:
        reason = f"exit code {exit_code}"
    else:
        reason = "unknown crash"
    return CrashInfo(reason, exit_code, signal, classification, device)


#: How deep ``__cause__``/``__context__`` chains are read for GPU error text.
MAX_CHAIN_DEPTH = 8


def exception_text(exc: BaseException) -> str:
    """The messages of ``exc`` and the exceptions it was raised from, one per line."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < MAX_CHAIN_DEPTH:
        seen.add(id(current))
        parts.append(str(current) or type(current).__name__)
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def classification_or_none(value: Any) -> Classification | None:
    """``value`` as a :class:`Classification`, or None when it is none or unknown."""
    try:
        return None if value is None else Classification(value)
    except ValueError:
        return None
