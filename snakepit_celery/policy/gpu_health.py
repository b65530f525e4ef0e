"""GPU health findings and what each one does to the fleet (pure data and decisions, no I/O).

A *finding* is one thing the NVML watcher saw on one GPU (an Xid event, a
double-bit ECC event, a lost GPU, pending page retirement, a row-remap
failure, uncorrected ECC counters rising). :data:`FINDING_CLASSES` and
:func:`xid_class` map it to a :class:`HealthClass`; :data:`HEALTH_ACTIONS`
says what that class does (taint the GPU, for how long, recycle the child,
blame the task). :class:`TaintBackoff` is the hysteresis: a GPU tainted again
inside ``window`` gets a doubled taint, capped at ``cap``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.gpu_errors import XID_ACTIONS, GpuErrorKind

__all__ = [
    "FINDING_CLASSES",
    "HEALTH_ACTIONS",
    "STICKY_TAINT_SECONDS",
    "FindingKind",
    "GpuFinding",
    "HealthAction",
    "HealthClass",
    "TaintBackoff",
    "action_for",
    "classify_finding",
    "xid_class",
]

#: How long a sticky taint lasts in the store: "until an operator clears it" (ten years).
STICKY_TAINT_SECONDS = 10 * 365 * 86400.0


class FindingKind(StrEnum):
    """What the watcher saw on a GPU."""

    XID = "xid"  # nvmlEventTypeXidCriticalError, with its Xid code
    DOUBLE_BIT_ECC = "double_bit_ecc"  # nvmlEventTypeDoubleBitEccError
    GPU_LOST = "gpu_lost"  # NVML_ERROR_GPU_IS_LOST, nvmlEventTypeGpuUnavailableError
    PAGES_PENDING = "retired_pages_pending"  # a retired page waits for a GPU reset
    REMAP_FAILURE = "row_remap_failure"  # row remapping failed (Xid 64's state)
    REMAP_PENDING = "row_remap_pending"  # a remapped row waits for a GPU reset (Xid 63's)
    ECC_RISING = "uncorrected_ecc_rising"  # the volatile uncorrected ECC counter went up
    FATAL_POISON = "fatal_poison"  # nvmlEventTypeFatalPoisonError


class HealthClass(StrEnum):
    """The families of findings that call for the same action."""

    HARDWARE = "hardware"  # sticky: the GPU needs a reset; tainted until an operator untaints
    TRANSIENT = "transient"  # tainted for a while; back only after a health probe passes
    APPLICATION = "application"  # the task's fault: recycle its process, leave the GPU alone
    CONTAINED = "contained"  # contained ECC (Xid 94): recycle the process, leave the GPU


@dataclass(frozen=True, slots=True)
class HealthAction:
    """What a class of finding does: taint the GPU (sticky or not), recycle, blame the task."""

    taint: bool
    sticky: bool
    recycle_child: bool
    blame_task: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict."""
        return {
            "taint": self.taint,
            "sticky": self.sticky,
            "recycle_child": self.recycle_child,
            "blame_task": self.blame_task,
        }


#: Class -> action: the one table the watcher follows (README "GPU health").
HEALTH_ACTIONS: Mapping[HealthClass, HealthAction] = {
    HealthClass.HARDWARE: HealthAction(
        taint=True, sticky=True, recycle_child=True, blame_task=False
    ),
    HealthClass.TRANSIENT: HealthAction(
        taint=True, sticky=False, recycle_child=True, blame_task=False
    ),
    HealthClass.APPLICATION: HealthAction(
        taint=False, sticky=False, recycle_child=True, blame_task=True
    ),
    HealthClass.CONTAINED: HealthAction(
        taint=False, sticky=False, recycle_child=True, blame_task=False
    ),
}

#: Finding kind (other than Xid) -> class.
FINDING_CLASSES: Mapping[FindingKind, HealthClass] = {
    FindingKind.DOUBLE_BIT_ECC: HealthClass.HARDWARE,
    FindingKind.GPU_LOST: HealthClass.HARDWARE,
    FindingKind.PAGES_PENDING: HealthClass.HARDWARE,
    FindingKind.REMAP_FAILURE: HealthClass.HARDWARE,
    FindingKind.REMAP_PENDING: HealthClass.HARDWARE,
    FindingKind.FATAL_POISON: HealthClass.HARDWARE,
    FindingKind.ECC_RISING: HealthClass.TRANSIENT,
}


def xid_class(xid: int) -> HealthClass:
    """The class of an Xid, from the GPU error catalogue (``policy.gpu_errors.XID_ACTIONS``).

    Xids that need a GPU reset are ``hardware``; the application Xids (13, 31,
    43, 45, 68) ``application``; Xid 94 (contained ECC) ``contained``. An Xid
    the catalogue does not list is blamed on the GPU, for a while: ``transient``.
    """
    action = XID_ACTIONS.get(xid)
    if action is None:
        return HealthClass.TRANSIENT
    if action.taint_device:
        return HealthClass.HARDWARE
    if action.kind is GpuErrorKind.XID_APPLICATION:
        return HealthClass.APPLICATION
    return HealthClass.CONTAINED


@dataclass(frozen=True, slots=True)
class GpuFinding:
    """One finding on one GPU: ``kind``, the ``xid`` for Xid events, and a short ``detail``."""

    uuid: str
    kind: FindingKind
    xid: int | None = None
    detail: str = ""

    @property
    def health_class(self) -> HealthClass:
        """The finding's class (see :func:`classify_finding`)."""
        return classify_finding(self)

    @property
    def known(self) -> bool:
        """False for an Xid the catalogue does not list (logged and counted as such)."""
        return self.kind is not FindingKind.XID or self.xid in XID_ACTIONS

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict, with the class."""
        return {
            "uuid": self.uuid,
            "kind": str(self.kind),
            "xid": self.xid,
            "detail": self.detail,
            "class": str(self.health_class),
        }


def classify_finding(finding: GpuFinding) -> HealthClass:
    """The class of ``finding``: Xids by :func:`xid_class`, others by :data:`FINDING_CLASSES`."""
    if finding.kind is FindingKind.XID:
        return xid_class(-1 if finding.xid is None else finding.xid)
    return FINDING_CLASSES[finding.kind]


def action_for(finding: GpuFinding) -> HealthAction:
    """What ``finding`` does (:data:`HEALTH_ACTIONS` of its class)."""
    return HEALTH_ACTIONS[classify_finding(finding)]


@dataclass(frozen=True, slots=True)
class TaintBackoff:
    """How long a transient taint lasts: ``base`` doubled per earlier taint inside ``window``.

    ``duration(earlier, now)``: ``earlier`` are the times of this GPU's earlier
    transient taints; the result is ``base * 2**k`` (k of them inside the
    window), at most ``cap``.
    """

    base: float = 30.0
    window: float = 600.0
    cap: float = 3600.0

    def __post_init__(self) -> None:
        for name in ("base", "window", "cap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(name, value, "a number of seconds > 0")
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(name, value, "a number of seconds > 0")
        if self.cap < self.base:
            raise ConfigError(
                "gpu_health.cap", self.cap, f"a number of seconds >= base {self.base}"
            )

    def recent(self, earlier: Sequence[float], now: float) -> tuple[float, ...]:
        """The taint times of ``earlier`` still inside the window at ``now``."""
        return tuple(t for t in earlier if now - t <= self.window)

    def duration(self, earlier: Sequence[float], now: float) -> float:
        """Seconds for a new transient taint at ``now`` given the ``earlier`` taint times."""
        strikes = len(self.recent(earlier, now))
        return min(self.cap, self.base * 2.0 ** min(strikes, 62))
