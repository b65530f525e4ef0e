"""The values the ``Store`` operations return (frozen dataclasses).

A breaker's decision, record and snapshot, a pool's crash counts, a taint,
a task's crash-ledger entry and a quarantined message: plain values, the
same from every backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BreakerDecision",
    "BreakerRecord",
    "BreakerSnapshot",
    "HealthSnapshot",
    "LedgerEntry",
    "QuarantineEntry",
    "TaintRecord",
    "WorkerCrashes",
]


@dataclass(frozen=True, slots=True)
class BreakerDecision:
    """Outcome of ``breaker_acquire``.

    ``probe`` is a lease token when the call was admitted as a half-open probe
    (pass it back to ``breaker_record``); ``transition`` is ``"half_open"``
    when this very call observed the reset timeout passing (the caller sends
    the ``breaker_half_open`` signal, so exactly one process does).
    """

    allowed: bool
    state: str
    retry_after: float = 0.0
    probe: str | None = None
    transition: str | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """Outcome of ``breaker_record``: the state after it and the transition it caused.

    ``transition`` is ``"opened"`` or ``"closed"`` for exactly one caller per
    transition cluster-wide, else None.
    """

    state: str
    failures: int
    transition: str | None = None
    #: The breaker's stored configuration (the first ``config`` recorded), None when none.
    config: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """Read-only view of a breaker (``breaker_peek``), with no side effect."""

    state: str
    failures: int
    successes: int
    half_open_calls: int
    retry_after: float
    #: The breaker's stored configuration, None when none (its numbers are the ones used).
    config: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class WorkerCrashes:
    """Crashes of one worker inside the window."""

    count: int
    last_time: float | None
    #: The pool's stored configuration (``health_record``'s ``config``), None when none.
    config: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class HealthSnapshot:
    """Crash counts of one pool (``health_stats``, ``health_record``).

    ``workers_with_crashes``: workers with a crash inside the window;
    ``workers``: per-worker counts, only of the recording worker (``health_record``).
    """

    total_crashes: int
    crashes_in_window: int
    workers: Mapping[str, WorkerCrashes] = field(default_factory=dict)
    workers_with_crashes: int = 0
    #: The pool's stored configuration, None when none: the first ``config`` recorded wins
    #: and its ``crash_window`` is the window counted.
    config: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class TaintRecord:
    """One active taint: ``member`` is ``worker:<id>`` or ``device:<node>:<device>``."""

    member: str
    expires_at: float
    remaining: float
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """The crash ledger of one task id.

    ``starts``: executions started; ``finishes``: executions that ended (any
    outcome); ``crashes``: executions known to have died; ``running_on``: the
    worker holding a live lease on the task, if any; ``released``: the
    delivery concerned is one a node gave back unstarted (``ledger_release``),
    so it was not lost with a crash; ``held_for``: seconds (store clock) since
    the ``running_on`` worker last took or renewed its lease (None when no
    live lease is reported; not compared), so a caller can tell whether a
    node record written since lists that worker (``celery.holders``).
    """

    starts: int
    finishes: int
    crashes: int
    running_on: str | None = None
    released: bool = False
    held_for: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One quarantined message: its id, when it came in and goes, and its record.

    ``entry_id`` is the task id, or a digest of a message without a usable
    one; ``record`` is the JSON-safe dict given to ``quarantine_add``.
    """

    entry_id: str
    quarantined_at: float
    expires_at: float
    record: Mapping[str, Any] = field(default_factory=dict)
