"""Snakepit's message headers: their names, and reading them from a message."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

__all__ = [
    "HEADER_CRASHES",
    "HEADER_DEFERRALS",
    "HEADER_FIRST_TRY",
    "count",
    "forwarded",
    "since_first_try",
]

#: Message header: crashes of this task not (yet) in the store's crash ledger.
HEADER_CRASHES = "snakepit_crashes"
#: Message header: re-queues caused by an open breaker (they spend no retry attempt).
HEADER_DEFERRALS = "snakepit_deferrals"
#: Message header: epoch seconds of the first attempt (for ``retry_*`` signal durations).
HEADER_FIRST_TRY = "snakepit_first_try"
#: Headers kombu adds to a restored message; never copied into a re-published one.
_TRANSPORT_HEADERS = frozenset({"redelivered"})


def count(value: Any) -> int:
    """A count header's value: 0 when absent, negative or not a number."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def forwarded(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The custom headers a re-published message keeps (not kombu's transport ones)."""
    return {k: v for k, v in headers.items() if k not in _TRANSPORT_HEADERS}


def since_first_try(headers: Mapping[str, Any]) -> float:
    """Seconds since the first attempt (0 without a readable first-try header)."""
    first = headers.get(HEADER_FIRST_TRY)
    try:
        return max(0.0, time.time() - float(first)) if first else 0.0
    except (TypeError, ValueError):
        return 0.0
