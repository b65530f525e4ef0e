"""What an exit code, a signal number or a crash text says about how a process ended (pure).

Multiprocessing reports a signal as a negative exit code (-11), shells and
containers as 128 + N (139); billiard's ``WorkerLostError`` and faulthandler
write them as text ("exitcode 137", "signal 11 (SIGSEGV)").
"""

from __future__ import annotations

import re
import signal as _signal

__all__ = ["parse_crash", "signal_name"]

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


def signal_name(number: int) -> str:
    """The name of signal ``number`` (``SIGSEGV``), or ``SIG<number>`` for an unknown one."""
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"
