"""The exception tree of snakepit_celery, and ``error_kind()``.

Every exception the package raises derives from :class:`SnakepitError`.
``error_kind()`` maps any exception to one of the upstream error "atoms"
(``timeout``, ``unavailable``...) so retry policies can name kinds instead of
classes.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Iterable
from typing import Any

__all__ = [
    "ERROR_KINDS",
    "CircuitOpenError",
    "ConfigError",
    "DeviceNotAvailableError",
    "LockMismatchError",
    "RetryExhaustedError",
    "SnakepitError",
    "StoreScriptError",
    "StoreUnavailableError",
    "WorkerCrashedError",
    "error_kind",
]

#: The kinds ``error_kind()`` can return on its own (an exception's own
#: ``snakepit_kind`` attribute may add others).
ERROR_KINDS: frozenset[str] = frozenset(
    {"timeout", "connection_refused", "unavailable", "worker_crash", "gpu_oom"}
)

LOCK_MISMATCH_REASONS = ("accelerator_mismatch", "insufficient_gpus", "missing_cpu_features")


class SnakepitError(Exception):
    """Base class of every exception raised by snakepit_celery.

    Subclasses keep their constructor arguments as ``args`` (JSON-safe where
    the values are), so an exception rebuilt by Celery's result backend as
    ``cls(*args)`` keeps its fields and its message.
    """

    _message: str | None = None

    def __str__(self) -> str:
        return self._message if self._message is not None else super().__str__()


class ConfigError(SnakepitError, ValueError):
    """A setting or argument is invalid; the message names it and what is allowed."""

    def __init__(
        self, setting: str, value: Any = None, allowed: str = "", message: str = ""
    ) -> None:
        self.setting = setting
        self.value = value
        self.allowed = allowed
        if not message:
            message = f"invalid {setting}: {value!r}"
            if allowed:
                message += f" (allowed: {allowed})"
        self._message = message
        super().__init__(setting, value, allowed, message)

    @classmethod
    def unknown_name(cls, setting: str, name: str, known: Iterable[str]) -> ConfigError:
        """An error for an unknown setting/argument ``name``, with a did-you-mean hint."""
        choices = sorted(known)
        close = difflib.get_close_matches(name, choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        allowed = ", ".join(choices)
        return cls(
            setting,
            name,
            allowed,
            message=f"unknown {setting}: {name!r}{hint} (allowed: {allowed})",
        )


class CircuitOpenError(SnakepitError):
    """A call was refused by an open (or saturated half-open) circuit breaker."""

    def __init__(self, breaker: str, retry_after: float = 0.0) -> None:
        self.breaker = breaker
        self.retry_after = max(0.0, float(retry_after))
        self._message = f"circuit breaker {breaker!r} is open; retry after {self.retry_after:.3f}s"
        super().__init__(breaker, self.retry_after)


class RetryExhaustedError(SnakepitError):
    """Retries ran out; ``last_error`` (also ``__cause__``) is the final failure."""

    def __init__(self, attempts: int, last_error: BaseException | str | None = None) -> None:
        self.attempts = attempts
        self.last_error = last_error
        if isinstance(last_error, BaseException):
            detail = f": {last_error!r}"
            self.__cause__ = last_error
        else:  # rebuilt from a result backend: the error's repr
            detail = f": {last_error}" if last_error else ""
        self._message = f"gave up after {attempts} attempt(s){detail}"
        super().__init__(attempts, last_error)


class WorkerCrashedError(SnakepitError):
    """The process running a task died (signal, OOM kill, abort, fatal GPU error)."""

    snakepit_kind = "worker_crash"

    def __init__(  # noqa: PLR0917 - positional order is the public API
        self,
        classification: str = "unknown",
        exit_code: int | None = None,
        signal: int | None = None,
        worker_id: str | None = None,
        device: str | None = None,
        message: str = "",
    ) -> None:
        self.classification = str(classification)
        self.exit_code = exit_code
        self.signal = signal
        self.worker_id = worker_id
        self.device = device
        if not message:
            parts = [f"worker {worker_id or '?'} crashed ({self.classification})"]
            if signal is not None:
                parts.append(f"signal {signal}")
            if exit_code is not None:
                parts.append(f"exit code {exit_code}")
            if device:
                parts.append(f"device {device}")
            message = ", ".join(parts)
        self._message = message
        super().__init__(classification, exit_code, signal, worker_id, device, message)


class DeviceNotAvailableError(SnakepitError):
    """No device matching the request is available on this machine."""

    def __init__(self, requested: Any, message: str = "") -> None:
        self.requested = requested
        self._message = message or f"no device available for {requested!r}"
        super().__init__(requested, self._message)


class LockMismatchError(SnakepitError):
    """The hardware does not satisfy a lock file; ``reason`` says how."""

    def __init__(self, reason: str, message: str = "") -> None:
        self.reason = reason
        self._message = message or f"hardware does not match the lock file: {reason}"
        super().__init__(reason, self._message)


class StoreUnavailableError(SnakepitError):
    """The shared store cannot be reached and ``fail_open`` is off.

    Its kind is ``unavailable``, so the default retry policy retries it.
    """

    snakepit_kind = "unavailable"


class StoreScriptError(SnakepitError, RuntimeError):
    """Redis refused or failed a store operation: a script error, an ACL denial.

    A bug or a misconfiguration, never an outage: it is not covered by
    fail-open. The message names the operation (``health_record``...).
    """


_CUDA_MARKERS = ("cuda", "hip", "cublas", "cudnn", "gpu", "rocm")

#: Class names (first match along an exception's MRO) that mean a kind, for
#: libraries we must not import here: redis-py's and Celery's own
#: ``TimeoutError`` (not subclasses of the builtin), billiard's time limits and
#: lost workers, requests' and httpx's timeouts and connection errors.
_KIND_BY_CLASS_NAME: dict[str, str] = {
    "TimeoutError": "timeout",
    "SoftTimeLimitExceeded": "timeout",
    "TimeLimitExceeded": "timeout",
    "Timeout": "timeout",
    "ConnectTimeout": "timeout",
    "ReadTimeout": "timeout",
    "TimeoutException": "timeout",
    "WorkerLostError": "worker_crash",
    "ConnectionError": "unavailable",
    "ConnectError": "unavailable",
}


def _status_code(exc: BaseException) -> Any:
    for attr in ("status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _kind_by_class_name(exc: BaseException) -> str | None:
    for cls in type(exc).__mro__:
        kind = _KIND_BY_CLASS_NAME.get(cls.__name__)
        if kind is not None:
            return kind
    return None


def _is_gpu_oom(exc: BaseException) -> bool:
    message = str(exc).lower()
    if "out of memory" not in message:
        return False
    if any(marker in message for marker in _CUDA_MARKERS):
        return True
    return type(exc).__name__ == "OutOfMemoryError"


def error_kind(exc: BaseException) -> str | None:
    """Return the error kind of ``exc`` (``timeout``, ``unavailable``...) or None.

    An exception's own ``snakepit_kind`` attribute wins over the built-in rules.
    """
    own = getattr(exc, "snakepit_kind", None)
    if isinstance(own, str) and own:
        return own
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    by_name = _kind_by_class_name(exc)
    if by_name is not None:
        return by_name
    if _is_gpu_oom(exc):
        return "gpu_oom"
    if _status_code(exc) == 503:
        return "unavailable"
    return None
