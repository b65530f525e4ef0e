"""snakepit_celery: fleet-wide fault tolerance and hardware-aware routing for Celery.

Shared circuit breakers, retry policies, a crash barrier and a health monitor
whose state lives in Redis, plus hardware detection and GPU-aware routing.
Only re-exports live here; see the modules for the details.
"""

from __future__ import annotations

from snakepit_celery import executor, hardware, lockfile, signals
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import BreakerState, BreakerStats, CircuitBreaker
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import SnakepitTask, snakepit_task
from snakepit_celery.errors import (
    CircuitOpenError,
    ConfigError,
    DeviceNotAvailableError,
    LockMismatchError,
    RetryExhaustedError,
    SnakepitError,
    StoreScriptError,
    StoreUnavailableError,
    WorkerCrashedError,
    error_kind,
)
from snakepit_celery.hardware import Device
from snakepit_celery.health import HealthMonitor, HealthStats, WorkerHealth
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.crash import Classification, CrashInfo, classify
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.policy.taints import Taint
from snakepit_celery.store import MemoryStore, RedisStore, Store, store_from_url

__version__ = "0.1.0"

__all__ = [
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classification",
    "ConfigError",
    "CrashBarrier",
    "CrashBarrierConfig",
    "CrashInfo",
    "Device",
    "DeviceNotAvailableError",
    "HealthMonitor",
    "HealthStats",
    "LockMismatchError",
    "MemoryStore",
    "RedisStore",
    "RetryExhaustedError",
    "RetryPolicy",
    "SnakepitError",
    "SnakepitTask",
    "Store",
    "StoreScriptError",
    "StoreUnavailableError",
    "Taint",
    "WorkerCrashedError",
    "WorkerHealth",
    "__version__",
    "classify",
    "error_kind",
    "executor",
    "hardware",
    "install",
    "lockfile",
    "signals",
    "snakepit_task",
    "store_from_url",
]
