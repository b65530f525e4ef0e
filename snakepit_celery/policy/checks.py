"""Argument checks shared by every policy and stateful object (pure, no I/O).

Each returns the value (normalised) or raises ``ConfigError`` naming the
setting, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from typing import Any

from snakepit_celery.errors import ConfigError

__all__ = ["check_bool", "check_int", "check_seconds"]


def check_bool(setting: str, value: Any) -> bool:
    """``value`` if it is a real bool (not 1/0 or "yes")."""
    if not isinstance(value, bool):
        raise ConfigError(setting, value, "True or False")
    return value


def check_int(setting: str, value: Any, minimum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) and at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(setting, value, "an integer")
    if minimum is not None and value < minimum:
        raise ConfigError(setting, value, f"an integer >= {minimum}")
    return int(value)


def check_seconds(setting: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as finite seconds, >= 0 (or > 0 with ``positive``)."""
    allowed = "a number of seconds > 0" if positive else "a number of seconds >= 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(setting, value, allowed)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise ConfigError(setting, value, allowed)
    return seconds
