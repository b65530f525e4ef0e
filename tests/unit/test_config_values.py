"""CircuitBreaker and HealthMonitor take their numbers through BreakerConfig / HealthConfig.

One validation for each: the settings dicts and the constructors accept and
refuse exactly the same values.
"""

from __future__ import annotations

import pytest

from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.errors import ConfigError
from snakepit_celery.health import HealthMonitor
from snakepit_celery.policy.settings import BreakerConfig, HealthConfig


def test_a_breaker_holds_its_numbers_as_a_breaker_config() -> None:
    breaker = CircuitBreaker("cfg", failure_threshold=2, reset_timeout=120, store="memory://")
    assert breaker.config == BreakerConfig(2, 120.0, 1, 0.25)
    assert (breaker.failure_threshold, breaker.reset_timeout) == (2, 120.0)


def test_a_health_monitor_holds_its_numbers_as_a_health_config() -> None:
    monitor = HealthMonitor("gpu", max_crashes=3, store="memory://")
    assert monitor.config == HealthConfig("gpu", 3, 60.0, 30.0, 3)


@pytest.mark.parametrize(
    "kwargs", [{"failure_threshold": 0}, {"reset_timeout": -1}, {"half_open_max_calls": 0}]
)
def test_a_breaker_refuses_what_its_setting_refuses(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError) as from_setting:
        BreakerConfig.from_dict(kwargs)
    with pytest.raises(ConfigError) as from_constructor:
        CircuitBreaker("cfg", store="memory://", **kwargs)  # type: ignore[arg-type]
    assert from_constructor.value.args[0] in str(from_setting.value)


@pytest.mark.parametrize("kwargs", [{"max_crashes": 0}, {"crash_window": 0}, {"pool": ""}])
def test_a_health_monitor_refuses_what_its_setting_refuses(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        HealthConfig.from_dict(kwargs)
    with pytest.raises(ConfigError):
        HealthMonitor(store="memory://", **kwargs)  # type: ignore[arg-type]
