"""Testing helpers for users' own test suites.

``set_testing(True)`` (or ``with disabled():``) turns retry sleeps to zero and
breakers and taints off in the current process, after stamina's
``set_testing``, so test suites run fast and deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["disabled", "is_testing", "set_testing"]

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
