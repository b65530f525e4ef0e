"""A task's snakepit options, checked when the task is declared (pure, no I/O).

``check_task_options`` is the one check of the option values this layer can
judge (``timeout``, ``idempotent``, ``pool``, ``retry_policy``,
``crash_barrier``, ``gpu_memory``); ``check_option_names`` refuses a misspelled option with a
did-you-mean hint. The celery layer adds the checks that need its types (the
``device`` preferences, a ``CircuitBreaker`` object) around them, once per task.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.retry import RetryPolicy

__all__ = [
    "MIN_TIMEOUT",
    "MIN_TIMEOUT_GRACE",
    "SNAKEPIT_OPTIONS",
    "TaskOptions",
    "breaker_name",
    "check_gpu_memory",
    "check_option_names",
    "check_task_options",
    "time_limits",
]

#: The options ``@snakepit_task`` adds to Celery's.
SNAKEPIT_OPTIONS = frozenset(
    {
        *("breaker", "crash_barrier", "device", "gpu_memory", "idempotent", "pool"),
        *("retry_policy", "timeout"),
    }
)
#: Shortest ``timeout`` (s): a shorter one would stop the task before its body could run.
MIN_TIMEOUT = 0.001
#: Hard time limit = ``timeout`` + max(this, 10 % of ``timeout``), so the soft limit fires first.
MIN_TIMEOUT_GRACE = 1.0

_TIMEOUT_RANGE = f"a number of seconds >= {MIN_TIMEOUT}"


@dataclass(frozen=True)
class TaskOptions:
    """The checked values of a task's options (``retry_policy`` built from its dict)."""

    timeout: float | None = None
    idempotent: bool = False
    pool: str | None = None
    retry_policy: RetryPolicy | None = None
    crash_barrier: Mapping[str, Any] | None = None
    gpu_memory: float | None = None

    def time_limits(self) -> tuple[float, float] | None:
        """Celery's (soft, hard) time limits for ``timeout``; None without one."""
        return None if self.timeout is None else time_limits(self.timeout)


def check_option_names(names: Iterable[str], known: Iterable[str]) -> None:
    """Raise ``ConfigError`` (with a did-you-mean hint) for the first name not in ``known``."""
    choices = frozenset(known)
    for name in names:
        if name not in choices:
            raise ConfigError.unknown_name("task option", name, choices)


def check_task_options(options: Mapping[str, Any]) -> TaskOptions:
    """The layer's checks of a task's option values; ``ConfigError`` names the bad one."""
    idempotent = options.get("idempotent", False)
    if not isinstance(idempotent, bool):
        raise ConfigError("idempotent", idempotent, "True or False")
    pool = options.get("pool")
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise ConfigError("pool", pool, "a health-monitor pool name (non-empty string) or None")
    crash_barrier = options.get("crash_barrier")
    if crash_barrier is not None:
        CrashBarrierConfig().merged(crash_barrier)
    timeout = options.get("timeout")
    gpu_memory = options.get("gpu_memory")
    return TaskOptions(
        timeout=None if timeout is None else _check_timeout(timeout),
        idempotent=idempotent,
        pool=pool,
        retry_policy=_retry_policy(options.get("retry_policy")),
        crash_barrier=crash_barrier,
        gpu_memory=None if gpu_memory is None else check_gpu_memory(gpu_memory),
    )


def breaker_name(option: Any, task_name: str) -> str | None:
    """The breaker a ``breaker`` option names: None/False none, True the task's name."""
    if option is None or option is False:
        return None
    if option is True:
        return task_name
    if not isinstance(option, str) or not option:
        raise ConfigError("breaker", option, "a breaker name, True, or a CircuitBreaker")
    return option


def time_limits(timeout: float) -> tuple[float, float]:
    """Celery's (soft, hard) time limits for a checked ``timeout``: the hard one a little later."""
    return timeout, timeout + max(MIN_TIMEOUT_GRACE, 0.1 * timeout)


def check_gpu_memory(value: Any) -> float:
    """A checked ``gpu_memory`` (MB of GPU memory a task needs): a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError("gpu_memory", value, "a number of MB > 0")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError("gpu_memory", value, "a number of MB > 0")
    return float(value)


def _check_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError("timeout", value, _TIMEOUT_RANGE)
    if not math.isfinite(value) or value < MIN_TIMEOUT:
        raise ConfigError("timeout", value, _TIMEOUT_RANGE)
    return float(value)


def _retry_policy(option: Any) -> RetryPolicy | None:
    if option is None or isinstance(option, RetryPolicy):
        return option
    if isinstance(option, Mapping):
        return RetryPolicy.from_dict(option, setting="retry_policy")
    raise ConfigError("retry_policy", option, "a RetryPolicy, a dict of its arguments, or None")
