"""Argument checks shared by every policy, settings value and stateful object (pure, no I/O).

Each returns the value (normalised) or raises ``ConfigError`` naming the
setting, the bad value and what is allowed; ``allowed=`` replaces the
default wording where a setting documents its own.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from snakepit_celery.errors import ConfigError

__all__ = [
    "build_from_dict",
    "check_bool",
    "check_int",
    "check_keys",
    "check_name",
    "check_path",
    "check_seconds",
    "nested_error",
]

T = TypeVar("T")


def check_bool(setting: str, value: Any, *, allowed: str = "True or False") -> bool:
    """``value`` if it is a real bool (not 1/0 or "yes")."""
    if not isinstance(value, bool):
        raise ConfigError(setting, value, allowed)
    return value


def check_int(
    setting: str,
    value: Any,
    minimum: int | None = None,
    *,
    maximum: int | None = None,
    allowed: str | None = None,
) -> int:
    """``value`` if it is an int (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(setting, value, allowed or "an integer")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(setting, value, allowed or _int_range(minimum, maximum))
    return int(value)


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if maximum is None:
        return f"an integer >= {minimum}"
    if minimum is None:
        return f"an integer <= {maximum}"
    return f"an integer {minimum}-{maximum}"


def check_seconds(setting: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as finite seconds, >= 0 (or > 0 with ``positive``)."""
    allowed = "a number of seconds > 0" if positive else "a number of seconds >= 0"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(setting, value, allowed)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise ConfigError(setting, value, allowed)
    return seconds


def check_name(
    setting: str, value: Any, *, forbidden: str = "", allowed: str = "a non-empty string"
) -> str:
    """``value`` if it is a non-empty string without whitespace or a ``forbidden`` character."""
    if not isinstance(value, str) or not value:
        raise ConfigError(setting, value, allowed)
    if forbidden and any(ch.isspace() or ch in forbidden for ch in value):
        raise ConfigError(setting, value, allowed)
    return value


def check_path(setting: str, value: Any) -> str | None:
    """``value`` as a file path string (``os.PathLike`` accepted), or None."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ConfigError(setting, value, "a file path (str), or None")
    return value


def check_keys(setting: str, data: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise ``ConfigError`` with a did-you-mean hint for the first key not in ``known``."""
    names = tuple(known)
    for key in data:
        if key not in names:
            raise ConfigError.unknown_name(f"key of {setting}", str(key), names)


def nested_error(setting: str, exc: ConfigError) -> ConfigError:
    """``exc`` renamed to the key of a dict setting: ``setting["<key>"]``."""
    return ConfigError(f'{setting}["{exc.setting}"]', exc.value, exc.allowed)


def build_from_dict(
    setting: str, data: Mapping[str, Any], known: Iterable[str], build: Callable[..., T]
) -> T:
    """``build(**data)`` after checking the keys; errors name ``setting["<key>"]``."""
    check_keys(setting, data, known)
    try:
        return build(**data)
    except ConfigError as exc:
        raise nested_error(setting, exc) from exc
