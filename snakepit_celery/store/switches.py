"""Process-wide store switches: fail-open and the error counters.

``fail_open()`` / ``report_store_error()`` implement the policy for an unreachable store:
proceed without shared state (logging at most once a minute) unless
fail-open was turned off. ``report_script_error()`` counts and logs a store
operation Redis refused or failed (a bug or a misconfiguration, never an
outage). Logs go to the ``snakepit_celery.store`` logger.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from snakepit_celery.store.urls import redact

__all__ = [
    "ERROR_LOG_INTERVAL",
    "fail_open",
    "report_script_error",
    "report_store_error",
    "script_error_count",
    "set_fail_open",
    "store_error_count",
]

logger = logging.getLogger(__package__)

#: Seconds between two warnings about an unreachable store.
ERROR_LOG_INTERVAL = 60.0

_lock = threading.Lock()
_fail_open = True
_last_error_log = float("-inf")
_error_count = 0
_script_error_count = 0


def fail_open() -> bool:
    """True when an unreachable store should be ignored (the default) rather than raised."""
    return _fail_open


def set_fail_open(value: bool) -> None:
    """Turn fail-open on (proceed without shared state) or off (raise StoreUnavailableError)."""
    global _fail_open
    _fail_open = bool(value)


def report_store_error(exc: BaseException, **context: Any) -> None:
    """Count a store failure and log a warning about it, at most once a minute per process."""
    global _last_error_log, _error_count
    now = time.monotonic()
    with _lock:
        _error_count += 1
        due = now - _last_error_log >= ERROR_LOG_INTERVAL
        if due:
            _last_error_log = now
    if due:
        logger.warning(
            "snakepit store unavailable, continuing without shared state: %s",
            redact(str(exc)),
            extra={"snakepit_store_error": type(exc).__name__, "snakepit_context": context},
        )


def store_error_count() -> int:
    """How many store failures ``report_store_error`` has seen in this process."""
    return _error_count


def report_script_error(operation: str, exc: BaseException) -> None:
    """Count and log a store operation that Redis refused or failed (ACL, script error)."""
    global _script_error_count
    with _lock:
        _script_error_count += 1
    logger.error(
        "snakepit store operation %s failed (a bug or a misconfiguration, not an outage): %s",
        operation,
        redact(str(exc)),
        extra={"snakepit_script": operation, "snakepit_store_error": type(exc).__name__},
    )


def script_error_count() -> int:
    """How many store operations Redis refused or failed in this process."""
    return _script_error_count
