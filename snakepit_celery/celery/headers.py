"""Snakepit's message headers, and the one parser that reads them from a message.

A message can carry anything in its headers (a bug, an old client, a hand-made
message). ``parse_headers`` reads every header the task needs, Celery's
``retries`` included: a count is clamped to ``[0, MAX_HEADER_COUNT]`` (the
deferrals to ``retries``), a value that is not a number is ignored, and each
bad header is logged once per process.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "HEADER_COPY",
    "HEADER_CRASHES",
    "HEADER_DEFERRALS",
    "HEADER_FIRST_TRY",
    "HEADER_RETRIES",
    "MAX_HEADER_COUNT",
    "MessageHeaders",
    "forwarded",
    "marked_copy",
    "message_crashes",
    "parse_headers",
]

logger = logging.getLogger(__name__)

#: Message header: every crash of this task so far (merged with the store's crash ledger,
#: whichever counts more), so ``max_restarts`` holds while the store is down.
HEADER_CRASHES = "snakepit_crashes"
#: Message header: this message is a copy of a run that may still live (the worker holding
#: the task's lease, ``?`` when unknown): it runs only once the store has said that run is
#: over, never on its header's count alone while the store is down.
HEADER_COPY = "snakepit_copy_of"
#: Message header: re-queues caused by an open breaker (they spend no retry attempt).
HEADER_DEFERRALS = "snakepit_deferrals"
#: Message header: epoch seconds of the first attempt (for ``retry_*`` signal durations).
HEADER_FIRST_TRY = "snakepit_first_try"
#: Celery's own header: how often the task was retried.
HEADER_RETRIES = "retries"
#: Largest count a header is read as (a larger one is clamped to it).
MAX_HEADER_COUNT = 1_000_000
#: Headers never copied into a re-published message as they are: kombu's mark of a restored
#: one, and the copy mark (a message the gate let run is no copy; the gate marks its own).
_NOT_FORWARDED = frozenset({"redelivered", HEADER_COPY})

#: Header names already logged as bad in this process.
_logged: set[str] = set()


@dataclass(frozen=True, slots=True)
class MessageHeaders:
    """The headers of one message as the task reads them (``raw``: as they came)."""

    raw: Mapping[str, Any]
    retries: int = 0
    crashes: int = 0
    deferrals: int = 0
    first_try: float | None = None
    #: The worker whose run this message may be a copy of (``HEADER_COPY``), if any.
    copy_of: str | None = None

    @property
    def tracked(self) -> bool:
        """The message carries the crash header: its runs are recorded in the crash ledger."""
        return HEADER_CRASHES in self.raw

    @property
    def attempt(self) -> int:
        """This run's attempt number: retries that were not breaker deferrals, plus one."""
        return max(1, self.retries + 1 - self.deferrals)

    def since_first_try(self) -> float:
        """Seconds since the first attempt (0 without a first-try header)."""
        return 0.0 if self.first_try is None else max(0.0, time.time() - self.first_try)

    def republished(self) -> dict[str, Any]:
        """The headers a retry of this message carries: the custom ones, snakepit's as read."""
        headers = forwarded(self.raw)
        read = {
            HEADER_CRASHES: self.crashes,
            HEADER_DEFERRALS: self.deferrals,
            HEADER_FIRST_TRY: self.first_try,
        }
        for name, value in read.items():
            if name in headers:
                headers[name] = value
        return headers

    def with_crash_header(self) -> MessageHeaders:
        """These headers with the crash count written in (a retry of this run stays tracked)."""
        return replace(self, raw={**self.raw, HEADER_CRASHES: self.crashes})


def parse_headers(headers: Mapping[str, Any] | None, retries: Any = None) -> MessageHeaders:
    """Read a message's snakepit headers and Celery's ``retries``, never raising.

    ``retries`` is Celery's retry count of the request; None reads it from
    ``headers`` (a request dict carries it), and when neither has it the
    deferrals are not checked against it.
    """
    raw = headers or {}
    if retries is None:
        retries = raw.get(HEADER_RETRIES)
    count = _count(HEADER_RETRIES, retries)
    deferrals = _count(HEADER_DEFERRALS, raw.get(HEADER_DEFERRALS))
    if retries is not None and deferrals > count:
        _log_bad(HEADER_DEFERRALS, deferrals, f"more than the {count} retries")
        deferrals = count
    return MessageHeaders(
        raw=raw,
        retries=count,
        crashes=_count(HEADER_CRASHES, raw.get(HEADER_CRASHES)),
        deferrals=deferrals,
        first_try=_epoch(raw.get(HEADER_FIRST_TRY)),
        copy_of=_copy_of(raw.get(HEADER_COPY)),
    )


def _copy_of(value: Any) -> str | None:
    """The copy mark: a worker id (``?``: unknown); anything else marks a copy of unknown."""
    if value is None:
        return None
    if isinstance(value, str) and 0 < len(value) <= 300:
        return value
    _log_bad(HEADER_COPY, value, "not a worker id; read as a copy of an unknown run")
    return "?"


def marked_copy(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``headers`` marked as a copy of an unknown run (``HEADER_COPY`` ``?``), unless marked.

    For a message published next to another copy that may come back: it
    never runs on its header's count alone while the store is down.
    """
    return {HEADER_COPY: "?", **(headers or {})}


def forwarded(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The custom headers a re-published message keeps (not kombu's, nor the copy mark)."""
    return {k: v for k, v in headers.items() if k not in _NOT_FORWARDED}


def message_crashes(
    delivery_info: Mapping[str, Any] | None,
    headers: Mapping[str, Any] | None,
    released: bool = False,
) -> int:
    """Crashes a message proves by itself: its crash header, plus its lost delivery.

    A message that came back (kombu marks it ``redelivered``) lost a delivery
    with its node, unless that node gave it back unstarted (``released``: the
    ledger's give-back mark). Conservatively, kombu also restores messages a
    SIGKILLed node had prefetched but never started.
    """
    lost = bool((delivery_info or {}).get("redelivered")) and not released
    return min(parse_headers(headers).crashes + (1 if lost else 0), MAX_HEADER_COUNT)


def _count(name: str, value: Any) -> int:
    """A count header: 0 when absent or unreadable, else clamped to [0, MAX_HEADER_COUNT]."""
    if value is None:
        return 0
    number = _as_int(value)
    if number is None:
        _log_bad(name, value, "not an integer; read as 0")
        return 0
    if not 0 <= number <= MAX_HEADER_COUNT:
        _log_bad(name, value, f"outside 0..{MAX_HEADER_COUNT}; clamped")
        return min(max(number, 0), MAX_HEADER_COUNT)
    return number


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str | bytes):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _epoch(value: Any) -> float | None:
    """The first-try header: epoch seconds > 0, else None (ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or seconds <= 0:
        _log_bad(HEADER_FIRST_TRY, value, "not a time; ignored")
        return None
    return seconds


def _log_bad(name: str, value: Any, what: str) -> None:
    """Log a bad header once per process and header name."""
    if name in _logged:
        return
    _logged.add(name)
    text = repr(value)
    logger.warning(
        "message header %s=%s is %s (logged once)",
        name,
        text if len(text) <= 80 else text[:77] + "...",
        what,
        extra={"header": name},
    )
