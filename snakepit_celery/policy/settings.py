"""Breaker and health settings as typed, immutable values validated at construction.

``snakepit_breaker`` holds the defaults of every ``CircuitBreaker`` the
package builds, ``snakepit_health`` the ``HealthMonitor`` of worker crashes.
Like ``RetryPolicy`` they are plain values (no I/O, no store): every argument
is an attribute, and each also reads as a read-only dict of its arguments, so
``CircuitBreaker(name, **config)`` and ``dict(config)`` work.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from snakepit_celery.policy.checks import build_from_dict, check_int, check_name, check_seconds

__all__ = ["BREAKER_KEYS", "HEALTH_KEYS", "BreakerConfig", "HealthConfig"]


class _ArgumentsView(Mapping[str, Any]):
    """A frozen dataclass read as the dict of its fields (constructor arguments)."""

    __slots__ = ()

    #: The app.conf setting this value is read from (names errors of ``from_dict``).
    SETTING: ClassVar[str]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, setting: str | None = None) -> Self:
        """Build from a settings dict; errors name the key as ``<setting>["<key>"]``."""
        return build_from_dict(setting or cls.SETTING, data, cls.argument_names(), cls)

    @classmethod
    def argument_names(cls) -> tuple[str, ...]:
        """The constructor's argument names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key not in self.argument_names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.argument_names())

    def __len__(self) -> int:
        return len(self.argument_names())

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict; keys equal the field names."""
        return dict(self)

    def _normalise(self, checked: Mapping[str, Any]) -> None:
        """Store the checked (normalised) argument values on the frozen instance."""
        for name, value in checked.items():
            object.__setattr__(self, name, value)


@dataclass(frozen=True, slots=True)
class BreakerConfig(_ArgumentsView):
    """Defaults of the package's circuit breakers (``snakepit_breaker``); seconds as floats."""

    SETTING: ClassVar[str] = "snakepit_breaker"

    failure_threshold: int = 5
    reset_timeout: float = 30.0
    half_open_max_calls: int = 1
    max_staleness: float = 0.25

    def __post_init__(self) -> None:
        checked = {
            "failure_threshold": check_int("failure_threshold", self.failure_threshold, 1),
            "reset_timeout": check_seconds("reset_timeout", self.reset_timeout),
            "half_open_max_calls": check_int("half_open_max_calls", self.half_open_max_calls, 1),
            "max_staleness": check_seconds("max_staleness", self.max_staleness),
        }
        self._normalise(checked)


@dataclass(frozen=True, slots=True)
class HealthConfig(_ArgumentsView):
    """The crash ``HealthMonitor`` of the app's workers (``snakepit_health``)."""

    SETTING: ClassVar[str] = "snakepit_health"

    pool: str = "default"
    max_crashes: int = 10
    crash_window: float = 60.0
    check_interval: float = 30.0
    max_worker_crashes: int = 3

    def __post_init__(self) -> None:
        checked = {
            "pool": check_name("pool", self.pool),
            "max_crashes": check_int("max_crashes", self.max_crashes, 1),
            "crash_window": check_seconds("crash_window", self.crash_window, positive=True),
            "check_interval": check_seconds("check_interval", self.check_interval, positive=True),
            "max_worker_crashes": check_int("max_worker_crashes", self.max_worker_crashes, 1),
        }
        self._normalise(checked)


#: Keys of ``snakepit_breaker``.
BREAKER_KEYS: tuple[str, ...] = BreakerConfig.argument_names()
#: Keys of ``snakepit_health``.
HEALTH_KEYS: tuple[str, ...] = HealthConfig.argument_names()
