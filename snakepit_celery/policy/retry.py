"""RetryPolicy: how many attempts, how long to wait between them, which errors to retry.

A plain immutable value (after tenacity's policies), validated at construction,
with no I/O and no clock reads: the executor and the Celery task ask it
questions and do the sleeping themselves. Delays are seconds as floats.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from snakepit_celery.errors import ERROR_KINDS, ConfigError, error_kind
from snakepit_celery.policy.checks import build_from_dict, check_bool, check_int

__all__ = ["ALL_ERRORS", "DEFAULT_RETRIABLE_ERRORS", "RetriableErrors", "RetryPolicy"]

#: Sentinel accepted by ``retriable_errors``: retry every ``Exception``.
ALL_ERRORS: Literal["all"] = "all"

DEFAULT_RETRIABLE_ERRORS: tuple[str, ...] = (
    "timeout",
    "unavailable",
    "connection_refused",
    "worker_crash",
)

#: What ``retriable_errors`` accepts: ``"all"``, or kinds and/or exception classes.
RetriableErrors: TypeAlias = (
    Literal["all"] | str | type[BaseException] | Iterable[str | type[BaseException]]
)

_ALLOWED_KINDS = (
    f'"all", or a sequence of error kinds ({", ".join(sorted(ERROR_KINDS))})'
    " and/or exception classes"
)


def _number(name: str, value: Any, *, minimum: float, maximum: float = math.inf) -> float:
    """``value`` as a finite float in ``[minimum, maximum]``, else ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(name, value, _range_text(minimum, maximum))
    number = float(value)
    if not math.isfinite(number) or not minimum <= number <= maximum:
        raise ConfigError(name, value, _range_text(minimum, maximum))
    return number


def _range_text(minimum: float, maximum: float) -> str:
    if math.isinf(maximum):
        return f"a finite number >= {minimum:g}"
    return f"a number between {minimum:g} and {maximum:g}"


def _backoff(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError("backoff", value, "None or a sequence of delays in seconds (>= 0)")
    delays = tuple(value)
    for delay in delays:
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise ConfigError("backoff", value, "None or a sequence of delays in seconds (>= 0)")
        if not math.isfinite(delay) or delay < 0:
            raise ConfigError("backoff", value, "None or a sequence of delays in seconds (>= 0)")
    return tuple(float(delay) for delay in delays)


def _retriable(value: Any) -> Literal["all"] | tuple[str | type[BaseException], ...]:
    if value == ALL_ERRORS:
        return ALL_ERRORS
    items: tuple[Any, ...]
    if isinstance(value, str | type):
        items = (value,)
    elif isinstance(value, Iterable):
        items = tuple(value)
    else:
        raise ConfigError("retriable_errors", value, _ALLOWED_KINDS)
    if ALL_ERRORS in items:
        return ALL_ERRORS
    for item in items:
        if isinstance(item, str):
            if item not in ERROR_KINDS:
                raise ConfigError("retriable_errors", item, _ALLOWED_KINDS)
        elif not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ConfigError("retriable_errors", item, _ALLOWED_KINDS)
    return tuple(dict.fromkeys(items))


def _class_name(cls: type[BaseException]) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass(frozen=True, init=False, repr=False)
class RetryPolicy:
    """Retry settings as one immutable value; every argument is an attribute.

    Attempts are numbered from 1. ``backoff_for_attempt(n)`` is the delay after
    attempt ``n`` failed: ``backoff[n-1]`` while the list lasts, then the last
    value grown by ``backoff_multiplier`` per attempt; with ``backoff=None`` (or
    empty) ``base_backoff * backoff_multiplier ** (n-1)``. Jitter (uniform in
    ``d ± d*jitter_factor``) is applied before the ``max_backoff`` cap, so the
    result is always within ``[0, max_backoff]``. The testing switch
    (``snakepit_celery.testing``) is read by the callers that sleep, not here.
    """

    max_attempts: int
    backoff: tuple[float, ...] | None
    base_backoff: float
    backoff_multiplier: float
    max_backoff: float
    jitter: bool
    jitter_factor: float
    retriable_errors: Literal["all"] | tuple[str | type[BaseException], ...]

    def __init__(  # noqa: PLR0917 - the API allows positional use
        self,
        max_attempts: int = 3,
        backoff: Sequence[float] | None = (0.1, 0.2, 0.4, 0.8, 1.6),
        base_backoff: float = 0.1,
        backoff_multiplier: float = 2.0,
        max_backoff: float = 30.0,
        jitter: bool = False,
        jitter_factor: float = 0.25,
        retriable_errors: RetriableErrors = DEFAULT_RETRIABLE_ERRORS,
    ) -> None:
        max_attempts = check_int("max_attempts", max_attempts, 1, allowed="an integer >= 1")
        jitter = check_bool("jitter", jitter)
        values = {
            "max_attempts": max_attempts,
            "backoff": _backoff(backoff),
            "base_backoff": _number("base_backoff", base_backoff, minimum=0.0),
            "backoff_multiplier": _number("backoff_multiplier", backoff_multiplier, minimum=1.0),
            "max_backoff": _number("max_backoff", max_backoff, minimum=0.0),
            "jitter": jitter,
            "jitter_factor": _number("jitter_factor", jitter_factor, minimum=0.0, maximum=1.0),
            "retriable_errors": _retriable(retriable_errors),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, setting: str = "snakepit_retry_policy"
    ) -> RetryPolicy:
        """Build a policy from a settings dict (keys = constructor arguments).

        Errors name the key as ``<setting>["<key>"]``; unknown keys get a
        did-you-mean suggestion.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(setting, data, "a dict of RetryPolicy arguments, or a RetryPolicy")
        return build_from_dict(setting, data, cls.argument_names(), cls)

    @staticmethod
    def argument_names() -> tuple[str, ...]:
        """The constructor's argument names, in order."""
        return (
            "max_attempts",
            "backoff",
            "base_backoff",
            "backoff_multiplier",
            "max_backoff",
            "jitter",
            "jitter_factor",
            "retriable_errors",
        )

    def replace(self, **changes: Any) -> RetryPolicy:
        """A copy with some arguments changed (validated like the constructor)."""
        arguments = {name: getattr(self, name) for name in self.argument_names()}
        for key in changes:
            if key not in arguments:
                raise ConfigError.unknown_name("RetryPolicy argument", key, arguments)
        arguments.update(changes)
        return RetryPolicy(**arguments)

    def should_retry(self, attempt: int) -> bool:
        """True while another attempt may follow attempt number ``attempt`` (from 1)."""
        return attempt < self.max_attempts

    def retry_for_error(self, exc: BaseException) -> bool:
        """True when ``exc`` is retriable under this policy.

        ``"all"`` means every ``Exception`` (never KeyboardInterrupt, SystemExit
        or cancellation). Kinds are matched through ``errors.error_kind()``;
        exception classes match their subclasses too.
        """
        if not isinstance(exc, Exception):
            return False
        if self.retriable_errors == ALL_ERRORS:
            return True
        kind = error_kind(exc)
        for item in self.retriable_errors:
            if isinstance(item, str):
                if item == kind:
                    return True
            elif isinstance(exc, item):
                return True
        return False

    def backoff_for_attempt(self, attempt: int) -> float:
        """Seconds to wait after attempt ``attempt`` (from 1) failed, in ``[0, max_backoff]``."""
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
            raise ConfigError("attempt", attempt, "an integer >= 1")
        delay = self._raw_delay(attempt)
        if self.jitter and self.jitter_factor > 0 and math.isfinite(delay) and delay > 0:
            spread = delay * self.jitter_factor
            delay = random.uniform(delay - spread, delay + spread)
        return min(max(delay, 0.0), self.max_backoff)

    def _raw_delay(self, attempt: int) -> float:
        if self.backoff:
            if attempt <= len(self.backoff):
                return self.backoff[attempt - 1]
            return _grow(self.backoff[-1], self.backoff_multiplier, attempt - len(self.backoff))
        return _grow(self.base_backoff, self.backoff_multiplier, attempt - 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain form; exception classes as ``module.QualName`` strings."""
        retriable: str | list[str]
        if self.retriable_errors == ALL_ERRORS:
            retriable = ALL_ERRORS
        else:
            retriable = [
                item if isinstance(item, str) else _class_name(item)
                for item in self.retriable_errors
            ]
        return {
            "max_attempts": self.max_attempts,
            "backoff": None if self.backoff is None else list(self.backoff),
            "base_backoff": self.base_backoff,
            "backoff_multiplier": self.backoff_multiplier,
            "max_backoff": self.max_backoff,
            "jitter": self.jitter,
            "jitter_factor": self.jitter_factor,
            "retriable_errors": retriable,
        }

    def __repr__(self) -> str:
        retriable: str
        if self.retriable_errors == ALL_ERRORS:
            retriable = repr(ALL_ERRORS)
        else:
            parts = [
                repr(item) if isinstance(item, str) else _class_name(item)
                for item in self.retriable_errors
            ]
            retriable = "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, backoff={self.backoff!r}, "
            f"base_backoff={self.base_backoff!r}, backoff_multiplier={self.backoff_multiplier!r}, "
            f"max_backoff={self.max_backoff!r}, jitter={self.jitter!r}, "
            f"jitter_factor={self.jitter_factor!r}, retriable_errors={retriable})"
        )


def _grow(start: float, multiplier: float, steps: int) -> float:
    """``start * multiplier ** steps`` without overflowing (inf when it would)."""
    if start == 0 or multiplier == 1 or steps == 0:
        return start
    try:
        return start * multiplier**steps
    except OverflowError:
        return math.inf
