"""The values of a circuit breaker: its states, its stats, one admitted call."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["LOCAL", "UNCOUNTED", "Admission", "BreakerState", "BreakerStats"]


class BreakerState(enum.StrEnum):
    """The three states of a circuit breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A breaker's state and counters as read from the store."""

    state: BreakerState
    failure_count: int
    success_count: int
    failure_threshold: int
    half_open_calls: int
    #: This process's numbers differ from the breaker's stored ones (which are the ones used).
    config_conflict: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain types; keys equal the field names."""
        return {
            "state": str(self.state),
            "failure_count": self.failure_count,
            "success_count": self.success_count,
            "failure_threshold": self.failure_threshold,
            "half_open_calls": self.half_open_calls,
            "config_conflict": self.config_conflict,
        }


@dataclass(frozen=True, slots=True)
class Admission:
    """One admitted call: ``counted`` when its outcome is recorded; ``probe`` its lease token."""

    counted: bool
    probe: str | None = None


#: Admitted without counting (testing switch, or the store could not be asked).
UNCOUNTED = Admission(counted=False)
#: Admitted on this process's fresh view of a closed breaker; its outcome is counted.
LOCAL = Admission(counted=True)
