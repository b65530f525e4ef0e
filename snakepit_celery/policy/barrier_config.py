"""The crash barrier's configuration (pure: no I/O, no clock).

:class:`CrashBarrierConfig` holds the barrier's settings, validated at
construction, with the two pure decisions: ``retry_allowed()`` and
``backoff_for()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from snakepit_celery.errors import ConfigError, WorkerCrashedError, error_kind
from snakepit_celery.policy.checks import check_bool, check_int, check_seconds
from snakepit_celery.policy.crash import (
    Classification,
    CrashInfo,
    RetryMode,
    classification_or_none,
    classify,
    describe_crash,
    exception_text,
)
from snakepit_celery.policy.gpu_errors import gpu_error_action

__all__ = ["CrashBarrierConfig"]


_MODES_TEXT = "always, idempotent, never"
_CLASSES_TEXT = ", ".join(c.value for c in Classification)


def _as_tuple(setting: str, value: Any) -> tuple[Any, ...]:
    if isinstance(value, str | bytes | int | float | type):
        return (value,)
    if not isinstance(value, Iterable):
        raise ConfigError(setting, value, "a list")
    return tuple(value)


def _error_type_name(value: str | type[BaseException]) -> str:
    if isinstance(value, str):
        return value
    return f"{value.__module__}.{value.__qualname__}"


@dataclass(frozen=True, slots=True)
class CrashBarrierConfig:
    """Settings of the crash barrier (``snakepit_crash_barrier`` / a task's ``crash_barrier``).

    Durations are seconds. ``retry`` is ``always``, ``idempotent`` or ``never``
    (``True``/``False`` are read as ``always``/``never``, as upstream does);
    ``mark_on`` names the classifications that taint the worker;
    ``taint_on_exit_codes`` and ``taint_on_error_types`` (exception class
    names, dotted names or classes) taint whatever their classification.
    ``start_marks`` records every run's start in the crash ledger (one round
    trip per run, for the tasks that ask), so the crash count of a task whose
    node died is exact: a message that never started is no crash.
    Invalid values raise :class:`ConfigError` naming the setting.
    """

    enabled: bool = False
    retry: RetryMode | str = RetryMode.IDEMPOTENT
    max_restarts: int = 1
    taint_duration: float = 60.0
    backoff: Sequence[float] = (0.05, 0.1, 0.2)
    mark_on: Sequence[Classification | str] = (
        Classification.SEGFAULT,
        Classification.OOM,
        Classification.GPU,
    )
    taint_on_exit_codes: Sequence[int] = ()
    taint_on_error_types: Sequence[str | type[BaseException]] = ()
    taint_device_on_cuda_fatal: bool = True
    #: Write a start mark (one store round trip) before every run of the task, so a
    #: message its dead node had prefetched but never started runs normally instead of
    #: ending ``WorkerCrashedError`` unrun.
    start_marks: bool = False
    #: Keep each task the barrier stops for good (and each message that kills its node)
    #: in the store's quarantine, for ``celery snakepit quarantine``.
    quarantine: bool = True
    #: How long (s) a quarantined message is kept.
    quarantine_ttl: float = 7 * 24 * 3600.0
    #: Most messages kept in the quarantine; the oldest go first.
    quarantine_max_entries: int = 1000

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("enabled", check_bool("enabled", self.enabled))
        put("retry", _check_retry(self.retry))
        put("max_restarts", check_int("max_restarts", self.max_restarts, minimum=0))
        put("taint_duration", check_seconds("taint_duration", self.taint_duration, positive=True))
        put(
            "backoff",
            tuple(check_seconds("backoff", d) for d in _as_tuple("backoff", self.backoff)),
        )
        put("mark_on", tuple(_check_class(v) for v in _as_tuple("mark_on", self.mark_on)))
        codes = _as_tuple("taint_on_exit_codes", self.taint_on_exit_codes)
        put("taint_on_exit_codes", tuple(check_int("taint_on_exit_codes", c) for c in codes))
        types = _as_tuple("taint_on_error_types", self.taint_on_error_types)
        put("taint_on_error_types", tuple(_check_error_type(t) for t in types))
        put(
            "taint_device_on_cuda_fatal",
            check_bool("taint_device_on_cuda_fatal", self.taint_device_on_cuda_fatal),
        )
        put("start_marks", check_bool("start_marks", self.start_marks))
        put("quarantine", check_bool("quarantine", self.quarantine))
        put("quarantine_ttl", check_seconds("quarantine_ttl", self.quarantine_ttl, positive=True))
        put(
            "quarantine_max_entries",
            check_int("quarantine_max_entries", self.quarantine_max_entries, minimum=1),
        )

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any] | None) -> CrashBarrierConfig:
        """Build from a settings dict (app.conf style); unknown keys raise ``ConfigError``."""
        return cls().merged(settings)

    def merged(self, overrides: Mapping[str, Any] | None) -> CrashBarrierConfig:
        """A copy with ``overrides`` applied (e.g. a task's ``crash_barrier`` over the app's)."""
        if not overrides:
            return self
        if not isinstance(overrides, Mapping):
            raise ConfigError("crash_barrier", overrides, "a dict of crash barrier settings")
        known = [f.name for f in dataclasses.fields(self)]
        for key in overrides:
            if key not in known:
                hint = "; durations are seconds, without _ms" if str(key).endswith("_ms") else ""
                raise ConfigError(str(key), overrides[key], ", ".join(known) + hint)
        return dataclasses.replace(self, **dict(overrides))

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain dict that ``from_dict()`` reads back."""
        return {
            "enabled": self.enabled,
            "retry": str(self.retry),
            "max_restarts": self.max_restarts,
            "taint_duration": self.taint_duration,
            "backoff": list(self.backoff),
            "mark_on": [str(c) for c in self.mark_on],
            "taint_on_exit_codes": list(self.taint_on_exit_codes),
            "taint_on_error_types": [_error_type_name(t) for t in self.taint_on_error_types],
            "taint_device_on_cuda_fatal": self.taint_device_on_cuda_fatal,
            "start_marks": self.start_marks,
            "quarantine": self.quarantine,
            "quarantine_ttl": self.quarantine_ttl,
            "quarantine_max_entries": self.quarantine_max_entries,
        }

    def retry_allowed(self, idempotent: bool, attempt: int) -> bool:
        """May a task whose worker crashed run again?

        ``attempt`` is the number of restarts already made for the task (from 0).
        True iff the barrier is enabled, the mode allows it (``always``, or
        ``idempotent`` with ``idempotent=True``) and ``attempt < max_restarts``.
        """
        if not self.enabled or attempt >= self.max_restarts:
            return False
        if self.retry is RetryMode.ALWAYS:
            return True
        return self.retry is RetryMode.IDEMPOTENT and bool(idempotent)

    def backoff_for(self, attempt: int) -> float:
        """Delay (s) before the restart that follows ``attempt`` earlier restarts.

        ``backoff[attempt]``, the last value once the list runs out, 0.0 for an
        empty list.
        """
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(attempt, 0), len(self.backoff) - 1)]

    def describe(
        self, crash: BaseException | int | None, *, device: str | None = None
    ) -> tuple[CrashInfo | None, bool]:
        """The crash's :class:`CrashInfo` (None when it is no crash), and whether its type matched.

        A crash is a non-zero exit code, a ``WorkerLostError``-like exception
        (error kind ``worker_crash``), a ``WorkerCrashedError``, an exception
        carrying a fatal GPU error (its CUDA context is dead), or an exception
        whose type is listed in ``taint_on_error_types`` (the second value).
        """
        if crash is None or isinstance(crash, bool):
            return None, False
        if isinstance(crash, int):
            return (None if crash == 0 else describe_crash(crash, device=device)), False
        type_matched = self.matches_error_type(crash)
        text = exception_text(crash)
        if isinstance(crash, WorkerCrashedError):
            classification = classification_or_none(crash.classification) or classify(
                crash.exit_code, text, signal=crash.signal
            )
            info = CrashInfo(
                text, crash.exit_code, crash.signal, classification, crash.device or device
            )
            return info, type_matched
        if error_kind(crash) == "worker_crash":
            exit_code = getattr(crash, "exitcode", None)
            exit_code = exit_code if isinstance(exit_code, int) else None
            return describe_crash(exit_code, text, device=device), type_matched
        action = gpu_error_action(text)
        if (action is not None and action.fatal) or type_matched:
            return describe_crash(None, text, device=device), type_matched
        return None, False

    def taints_device(self, info: CrashInfo) -> bool:
        """Should this crash taint the GPU it ran on?

        Only GPU-fatal crashes with ``taint_device_on_cuda_fatal``, and not
        errors that blame the input or code rather than the GPU (a device-side
        assert, a misaligned address...); a GPU crash whose text names no
        known error is blamed on the GPU.
        """
        if not self.taint_device_on_cuda_fatal or info.classification != Classification.GPU:
            return False
        action = gpu_error_action(info.reason)
        return action is None or action.taint_device

    def taintable(self, info: CrashInfo, *, error_type_matched: bool = False) -> bool:
        """Does this crash taint the worker?

        Yes when its classification is in ``mark_on``, its exit code in
        ``taint_on_exit_codes``, or its exception type matched ``taint_on_error_types``.
        """
        return (
            error_type_matched
            or info.classification in self.mark_on
            or (info.exit_code is not None and info.exit_code in self.taint_on_exit_codes)
        )

    def matches_error_type(self, exc: BaseException) -> bool:
        """True when ``exc``'s class (or a base class) is listed in ``taint_on_error_types``."""
        if not self.taint_on_error_types:
            return False
        names: set[str] = set()
        for klass in type(exc).__mro__:
            names.add(klass.__name__)
            names.add(f"{klass.__module__}.{klass.__qualname__}")
        for wanted in self.taint_on_error_types:
            if isinstance(wanted, str):
                if wanted in names:
                    return True
            elif isinstance(exc, wanted):
                return True
        return False


def _check_retry(value: Any) -> RetryMode:
    if value is True:
        return RetryMode.ALWAYS
    if value is False:
        return RetryMode.NEVER
    try:
        return RetryMode(value)
    except ValueError:
        raise ConfigError("retry", value, _MODES_TEXT) from None


def _check_class(value: Any) -> Classification:
    try:
        return Classification(value)
    except ValueError:
        raise ConfigError("mark_on", value, _CLASSES_TEXT) from None


def _check_error_type(value: Any) -> str | type[BaseException]:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, type) and issubclass(value, BaseException):
        return value
    raise ConfigError("taint_on_error_types", value, "exception class names or classes")
