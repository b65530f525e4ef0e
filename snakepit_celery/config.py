"""Typed settings read once from Celery's ``app.conf`` (``snakepit_*``) and env ``SNAKEPIT_*``.

After celery-redbeat's ``redbeat_*`` convention: every setting has a
``snakepit_`` name in ``app.conf`` and an upper-cased environment variable
(``snakepit_fail_open`` ↔ ``SNAKEPIT_FAIL_OPEN``). **app.conf wins over the
environment**: the application's code is the explicit, reviewed place, and the
environment fills in what it leaves unset (store URL, metrics port, hardware
override per container). Only variables named after a known setting are read
(``SNAKEPIT_TEST_REDIS_URL`` and friends are ignored); an empty variable
counts as unset. Environment values are parsed: booleans as
``true/false/1/0/yes/no/on/off``, integers as decimal, dict settings as JSON
objects. Unknown ``snakepit_*`` names in app.conf raise ``ConfigError`` with a
did-you-mean suggestion, and so does every invalid value, naming the setting
(``snakepit_breaker["failure_threshold"]``), the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from snakepit_celery.errors import ConfigError
from snakepit_celery.policy.barrier_config import CrashBarrierConfig
from snakepit_celery.policy.checks import (
    build_from_dict,
    check_bool,
    check_int,
    check_name,
    check_path,
)
from snakepit_celery.policy.gpu_health import TaintBackoff
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.policy.settings import BREAKER_KEYS, HEALTH_KEYS, BreakerConfig, HealthConfig
from snakepit_celery.store.registry import ALLOWED_SCHEMES, REDIS_SCHEMES, check_store_url
from snakepit_celery.store.urls import redact, schemes_text

__all__ = [
    "SETTING_NAMES",
    "SnakepitSettings",
    "env_name",
    "load_settings",
    "resolve_store_url",
]

PREFIX = "snakepit_"

_BOOL_WORDS = {
    **dict.fromkeys(("true", "1", "yes", "on"), True),
    **dict.fromkeys(("false", "0", "no", "off"), False),
}
_BOOL_TEXT = "True or False (env: true/false/1/0/yes/no/on/off)"


@dataclass(frozen=True)
class SnakepitSettings:
    """Every ``snakepit_*`` setting, validated; attribute = setting name without ``snakepit_``.

    - ``store_url``: where shared state lives (None: the broker, else the result
      backend, when Redis; see ``resolve_store_url``).
    - ``key_prefix``: first part of every store key.
    - ``fail_open``: run tasks without shared state when the store is down.
    - ``breaker``: defaults for circuit breakers (``BreakerConfig``).
    - ``retry_policy``: the default ``RetryPolicy`` of tasks (None: none).
    - ``crash_barrier``: the app's ``CrashBarrierConfig``.
    - ``health``: the crash ``HealthMonitor`` settings (``HealthConfig``).
    - ``hardware``: path of a JSON file overriding hardware detection.
    - ``lock_file``: path of a lock file workers must satisfy to start.
    - ``defer_on_open``: re-queue a task refused by an open breaker with
      countdown = ``retry_after`` instead of spending a retry attempt.
    - ``metrics_port``: serve Prometheus metrics on this port (None: off).
    - ``allow_waiting``: when no live node offers a task's preferred device,
      send it to the generic device queue (``snakepit.<kind>``) to wait for
      one instead of failing with ``DeviceNotAvailableError``.
    - ``gpu_health``: how long the GPU health watch taints a GPU for a
      transient finding (``TaintBackoff``: ``base``, doubled per re-taint
      inside ``window``, at most ``cap``, seconds).
    - ``max_gpu_memory_per_child``: MB of GPU memory a pool child may hold
      after a task before it is recycled (None: no limit).
    """

    store_url: str | None = None
    key_prefix: str = "snakepit"
    fail_open: bool = True
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    retry_policy: RetryPolicy | None = None
    crash_barrier: CrashBarrierConfig = field(default_factory=CrashBarrierConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    hardware: str | None = None
    lock_file: str | None = None
    defer_on_open: bool = True
    metrics_port: int | None = None
    allow_waiting: bool = False
    gpu_health: TaintBackoff = field(default_factory=TaintBackoff)
    max_gpu_memory_per_child: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe plain form, keyed by field name."""
        return {
            "store_url": self.store_url,
            "key_prefix": self.key_prefix,
            "fail_open": self.fail_open,
            "breaker": self.breaker.as_dict(),
            "retry_policy": None if self.retry_policy is None else self.retry_policy.as_dict(),
            "crash_barrier": self.crash_barrier.as_dict(),
            "health": self.health.as_dict(),
            "hardware": self.hardware,
            "lock_file": self.lock_file,
            "defer_on_open": self.defer_on_open,
            "metrics_port": self.metrics_port,
            "allow_waiting": self.allow_waiting,
            "gpu_health": dataclasses.asdict(self.gpu_health),
            "max_gpu_memory_per_child": self.max_gpu_memory_per_child,
        }


# -- value parsers: (label, raw value) -> typed value ------------------------------------


def _bool(label: str, value: Any) -> bool:
    """A bool; also its env spellings (``true/false/1/0/yes/no/on/off``) and 0/1."""
    if isinstance(value, str):
        value = _BOOL_WORDS.get(value.strip().lower(), value)
    elif isinstance(value, int) and value in (0, 1):
        value = bool(value)
    return check_bool(label, value, allowed=_BOOL_TEXT)


def _optional_port(label: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return check_int(label, value, 1, maximum=65535, allowed="an integer 1-65535, or None (off)")


def _optional_mb(label: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return check_int(label, value, 1, allowed="a number of MB >= 1, or None (no limit)")


def _store_url(label: str, value: Any) -> str | None:
    if value is None:
        return None
    allowed = ", ".join(f"{scheme}://..." for scheme in ALLOWED_SCHEMES) + ", or None"
    return check_store_url(value, setting=label, allowed=allowed)


def _key_prefix(label: str, value: Any) -> str:
    return check_name(
        label, value, forbidden="{}", allowed="a non-empty string without spaces or braces"
    )


def _json_object(label: str, value: Any, what: str) -> Any:
    """Parse a JSON string (env values) into a dict; other values pass through."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        raise ConfigError(label, value, f"a JSON object of {what}") from None
    if not isinstance(parsed, dict):
        raise ConfigError(label, value, f"a JSON object of {what}")
    return parsed


@dataclass(frozen=True)
class _ValueSetting:
    """A setting given as its typed value, a dict of its arguments (env: a JSON object) or None."""

    kind: type
    what: str
    allowed: str
    build: Callable[[str, Mapping[str, Any]], Any]
    empty: Callable[[], Any]

    def __call__(self, label: str, value: Any) -> Any:
        if isinstance(value, self.kind):
            return value
        value = _json_object(label, value, self.what)
        if value is None:
            return self.empty()
        if not isinstance(value, Mapping):
            raise ConfigError(label, value, self.allowed)
        return self.build(label, value)


def _crash_barrier(label: str, value: Mapping[str, Any]) -> CrashBarrierConfig:
    known = [f.name for f in dataclasses.fields(CrashBarrierConfig)]
    return build_from_dict(label, value, known, lambda **kw: CrashBarrierConfig.from_dict(kw))


#: setting name (without prefix) -> parser(label, raw value) -> typed value
_SETTINGS: dict[str, Callable[[str, Any], Any]] = {
    "store_url": _store_url,
    "key_prefix": _key_prefix,
    "fail_open": _bool,
    "breaker": _ValueSetting(
        BreakerConfig,
        ", ".join(BREAKER_KEYS),
        f"a BreakerConfig, a dict with keys {', '.join(BREAKER_KEYS)}, or None",
        lambda label, value: BreakerConfig.from_dict(value, setting=label),
        BreakerConfig,
    ),
    "retry_policy": _ValueSetting(
        RetryPolicy,
        "RetryPolicy arguments",
        "a RetryPolicy, a dict of its arguments, or None",
        lambda label, value: RetryPolicy.from_dict(value, setting=label),
        lambda: None,
    ),
    "crash_barrier": _ValueSetting(
        CrashBarrierConfig,
        "crash barrier settings",
        "a CrashBarrierConfig, a dict of its arguments, or None",
        _crash_barrier,
        CrashBarrierConfig,
    ),
    "health": _ValueSetting(
        HealthConfig,
        ", ".join(HEALTH_KEYS),
        f"a HealthConfig, a dict with keys {', '.join(HEALTH_KEYS)}, or None",
        lambda label, value: HealthConfig.from_dict(value, setting=label),
        HealthConfig,
    ),
    "hardware": check_path,
    "lock_file": check_path,
    "defer_on_open": _bool,
    "metrics_port": _optional_port,
    "allow_waiting": _bool,
    "gpu_health": _ValueSetting(
        TaintBackoff,
        "base, window, cap",
        "a TaintBackoff, a dict with keys base, window, cap, or None",
        lambda label, value: build_from_dict(label, value, ("base", "window", "cap"), TaintBackoff),
        TaintBackoff,
    ),
    "max_gpu_memory_per_child": _optional_mb,
}

#: Every setting's app.conf name.
SETTING_NAMES: tuple[str, ...] = tuple(PREFIX + name for name in _SETTINGS)


def env_name(setting: str) -> str:
    """The environment variable of a setting: ``snakepit_fail_open`` -> ``SNAKEPIT_FAIL_OPEN``."""
    return setting.upper()


def load_settings(
    conf: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> SnakepitSettings:
    """Read and validate every setting: app.conf ``snakepit_*`` first, then env ``SNAKEPIT_*``.

    ``conf`` may be a Celery ``app.conf`` (only its ``snakepit_*`` keys are
    read); ``env`` defaults to ``os.environ`` (pass ``{}`` to ignore it).
    Raises ``ConfigError`` for an unknown ``snakepit_*`` name or an invalid value.
    """
    conf = {} if conf is None else conf
    env = os.environ if env is None else env
    raw: dict[str, tuple[str, Any]] = {}
    for key in list(conf.keys()):
        if not isinstance(key, str) or not key.startswith(PREFIX):
            continue
        if key not in SETTING_NAMES:
            raise ConfigError.unknown_name("setting", key, SETTING_NAMES)
        raw[key[len(PREFIX) :]] = (key, conf[key])
    for name in _SETTINGS:
        variable = env_name(PREFIX + name)
        if name not in raw and env.get(variable):
            raw[name] = (variable, env[variable])
    values = {name: _SETTINGS[name](label, value) for name, (label, value) in raw.items()}
    return SnakepitSettings(**values)


# -- store URL ------------------------------------------------------------------------


def resolve_store_url(
    settings: SnakepitSettings,
    broker_url: str | None,
    result_backend: str | None,
    *,
    master_name: str | None = None,
) -> str:
    """The store URL: ``snakepit_store_url``, else the broker's, else the result backend's.

    A broker or backend counts when it is Redis (``redis://``, ``rediss://``,
    ``unix://``/``redis+socket://``, or ``sentinel://`` given the Sentinel
    ``master_name`` from ``broker_transport_options``); the first URL of a
    ``;``-separated failover list is used. Anything else raises ConfigError
    saying to set ``snakepit_store_url``.
    """
    if settings.store_url:
        return settings.store_url
    for url in (broker_url, result_backend):
        converted = _redis_store_url(url, master_name)
        if converted is not None:
            return converted
    allowed = schemes_text(ALLOWED_SCHEMES)
    message = (
        "snakepit_store_url is not set and neither the broker "
        f"({_redact(broker_url)}) nor the result backend ({_redact(result_backend)}) "
        f"is Redis; set snakepit_store_url (or SNAKEPIT_STORE_URL) to one of: {allowed}"
    )
    raise ConfigError("snakepit_store_url", None, allowed, message=message)


def _redis_store_url(url: Any, master_name: str | None) -> str | None:
    if isinstance(url, list | tuple):
        url = url[0] if url else None
    if not isinstance(url, str) or "://" not in url:
        return None
    first = url.split(";")[0].strip()
    scheme = urlsplit(first).scheme.lower()
    if scheme in REDIS_SCHEMES:
        return first
    if scheme in ("redis+socket", "socket"):
        return _socket_url(first)
    if scheme == "sentinel" and master_name:
        return _sentinel_url(url, master_name)
    return None


def _socket_url(url: str) -> str:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db = (query.get("virtual_host") or query.get("db") or [""])[-1].strip("/")
    return f"unix://{parts.path}" + (f"?db={db}" if db else "")


def _sentinel_url(url: str, master_name: str) -> str:
    hosts: list[str] = []
    userinfo = ""
    db = ""
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.hostname is None:
            continue
        if not userinfo and parts.password:
            userinfo = f"{parts.username or ''}:{parts.password}@"
        if not db and parts.path.strip("/"):
            db = parts.path.strip("/")
        hosts.append(f"{parts.hostname}:{parts.port or 26379}")
    return f"redis+sentinel://{userinfo}{','.join(hosts)}/{master_name}" + (f"/{db}" if db else "")


def _redact(url: Any) -> Any:
    """``url`` with any password replaced by ``***`` (for error messages)."""
    return redact(url) if isinstance(url, str) else url
