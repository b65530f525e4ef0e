"""Testing helpers for users' own test suites.

``set_testing(True)`` (or ``with disabled():``) turns retry sleeps to zero and
breakers and taints off in the current process, after stamina's
``set_testing``, so test suites run fast and deterministic.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

__all__ = ["disabled", "is_testing", "set_testing", "wait_until"]

T = TypeVar("T")

_testing = False


def set_testing(testing: bool) -> None:
    """Switch testing mode on or off for this process."""
    global _testing
    _testing = bool(testing)


def is_testing() -> bool:
    """True while testing mode is on."""
    return _testing


@contextmanager
def disabled() -> Iterator[None]:
    """Testing mode for the duration of a ``with`` block (restores the previous mode)."""
    previous = _testing
    set_testing(True)
    try:
        yield
    finally:
        set_testing(previous)


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raises ``AssertionError`` naming ``what`` after ``timeout`` seconds, so a
    test waiting on real processes is always bounded.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
