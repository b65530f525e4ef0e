"""``TaskRuntime``: what a task resolves once per process from its options and the app.

``check_options`` is the one check of a task's snakepit options (the pure
checks of ``policy.task_options`` plus the ``device`` preferences and the
``breaker`` option), run once per task when it is declared. ``build_runtime``
then turns the checked options and the app's settings into the store, the
breaker, the retry policy, the crash barrier and the health monitor the task
runs with; ``select_device`` the device a delivery runs on, injected as the
``device`` argument of a function that ``takes_device``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.exceptions import Ignore, Reject, Retry

from snakepit_celery import hardware
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.app_context import app_store, settings_for
from snakepit_celery.config import SnakepitSettings
from snakepit_celery.hardware.gpu_notice import read_notice
from snakepit_celery.hardware.types import Accelerator, Device
from snakepit_celery.health import HealthMonitor
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.policy.routing import QUEUE_PREFIX, Pref, parse_prefs, queue_device
from snakepit_celery.policy.task_options import (
    SNAKEPIT_OPTIONS,
    TaskOptions,
    breaker_name,
    check_task_options,
)
from snakepit_celery.store.base import Store

__all__ = [
    "CELERY_TASK_OPTIONS",
    "CONTROL_FLOW",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "LEASE_FRACTION",
    "TaskRuntime",
    "breaker_option",
    "build_runtime",
    "check_options",
    "healthy_device",
    "known_options",
    "relax_header",
    "select_device",
    "takes_device",
    "visibility_timeout",
]

#: Kombu's default ``visibility_timeout`` for Redis (s).
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
#: A ledger lease lasts this fraction of the visibility timeout: the heartbeat renews
#: it every half timeout while the task runs, and it has lapsed by the time kombu
#: restores the message of a node that died.
LEASE_FRACTION = 0.8

#: Celery task options that are not attributes of its ``Task`` class: the decorator's
#: own, the execution options of ``apply_async`` and those of ``autoretry_for``.
CELERY_TASK_OPTIONS = frozenset(
    {
        *("base", "bind", "filter", "lazy", "name", "shared"),
        *("pydantic", "pydantic_context", "pydantic_dump_kwargs", "pydantic_strict"),
        *("compression", "delivery_mode", "exchange", "immediate", "mandatory"),
        *("queue", "routing_key"),
        *("autoretry_for", "dont_autoretry_for", "retry_backoff", "retry_backoff_max"),
        *("retry_jitter", "retry_kwargs"),
    }
)
#: Celery's control-flow exceptions: never failures of the task body.
CONTROL_FLOW: tuple[type[BaseException], ...] = (Retry, Ignore, Reject)


@dataclass(frozen=True)
class TaskRuntime:
    """What a task resolves once per process from its options and the app's settings."""

    settings: SnakepitSettings
    store: Store
    breaker: CircuitBreaker | None
    policy: RetryPolicy | None
    barrier: CrashBarrier
    health: HealthMonitor
    defer_on_open: bool
    lease: float
    #: The worker sends task events (``-E``): each run also sends ``snakepit-run``.
    task_events: bool


def check_options(options: Mapping[str, Any], task_name: str) -> TaskOptions:
    """Check every snakepit option of a task (``ConfigError`` names the bad one)."""
    checked = check_task_options(options)
    breaker_option(options.get("breaker"), task_name)
    parse_prefs(options.get("device"))
    return checked


def known_options(base: type) -> frozenset[str]:
    """Every option a task on ``base`` accepts: snakepit's, Celery's, and ``base``'s attributes."""
    public = (name for name in dir(base) if not name.startswith("_"))
    return SNAKEPIT_OPTIONS | CELERY_TASK_OPTIONS | frozenset(public)


def select_device(prefs: Any, routing_key: str, *, prefix: str = QUEUE_PREFIX) -> Device:
    """The device for a task preferring ``prefs`` delivered on ``routing_key``.

    A device queue's device when one of the preferences admits it, else the
    first available preference. A kind's shared queue (``snakepit.cuda``)
    never picks a GPU this node's health watch has tainted while another
    GPU of that kind is healthy. ``prefix``: the app's namespace, which
    starts its queue names.
    """
    routed = queue_device(routing_key, prefix=prefix)
    if routed is not None and any(_admits(p, routed) for p in parse_prefs(prefs)):
        device = hardware.select(str(routed))
        return device if routed.index is not None else healthy_device(device)
    return healthy_device(hardware.select_with_fallback(prefs))


def healthy_device(device: Device) -> Device:
    """``device``, or another GPU of its kind when the node's health watch tainted it.

    Reads the node's health notice (a ``stat`` when there is none).
    """
    if device.uuid is None:
        return device
    notice = read_notice()
    cuda = hardware.detect().cuda
    if notice is None or device.uuid not in notice.tainted or cuda is None:
        return device
    for other in cuda.devices:
        if other.uuid not in notice.tainted and device.kind is Accelerator.CUDA:
            return hardware.select(f"cuda:{other.id}")
    return device


def takes_device(run: Callable[..., Any]) -> bool:
    """The task function takes a ``device`` parameter (it is injected)."""
    try:
        parameters = inspect.signature(run).parameters
    except (TypeError, ValueError):
        return False
    return "device" in parameters


def relax_header(cls: type[Any]) -> None:
    """Let ``apply_async`` type-check calls that leave ``device`` to be injected."""
    check = cls.__dict__.get("__header__")
    if check is None:
        return
    checker: Callable[..., Any] = cls.__header__
    try:
        parameters = list(inspect.signature(checker).parameters.values())
    except (TypeError, ValueError):
        return
    positional = [
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    position = positional.index("device") if "device" in positional else len(parameters) + 1

    def check_arguments(*args: Any, **kwargs: Any) -> Any:
        if "device" not in kwargs and len(args) <= position:
            kwargs = {**kwargs, "device": None}
        return checker(*args, **kwargs)

    cls.__header__ = staticmethod(check_arguments)


def breaker_option(option: Any, task_name: str) -> str | CircuitBreaker | None:
    """The task's ``breaker`` option checked: a breaker name, a CircuitBreaker, or None."""
    if isinstance(option, CircuitBreaker):
        return option
    return breaker_name(option, task_name)


def build_runtime(app: Celery, task_name: str, breaker: Any, options: TaskOptions) -> TaskRuntime:
    """The runtime of task ``task_name`` (``breaker``: its option) on ``app``."""
    settings = settings_for(app)
    store = app_store(app)
    health_settings = dict(settings.health)
    app_pool = str(health_settings.pop("pool", "default"))
    barrier_config = settings.crash_barrier.merged(options.crash_barrier)
    return TaskRuntime(
        settings=settings,
        store=store,
        breaker=_breaker_of(breaker_option(breaker, task_name), settings, store),
        policy=settings.retry_policy if options.retry_policy is None else options.retry_policy,
        barrier=CrashBarrier(barrier_config, pool=app_pool, store=store),
        health=HealthMonitor(pool=options.pool or app_pool, store=store, **health_settings),
        defer_on_open=settings.defer_on_open,
        lease=visibility_timeout(app) * LEASE_FRACTION,
        task_events=bool(app.conf.worker_send_task_events),
    )


def visibility_timeout(app: Celery) -> float:
    """The broker's visibility timeout (s) as the app configures it, else kombu's default.

    Crash-ledger leases are ``LEASE_FRACTION`` of it on every broker, AMQP too.
    """
    transport = app.conf.broker_transport_options or {}
    return float(transport.get("visibility_timeout") or DEFAULT_VISIBILITY_TIMEOUT)


def _breaker_of(
    option: str | CircuitBreaker | None, settings: SnakepitSettings, store: Store
) -> CircuitBreaker | None:
    if option is None or isinstance(option, CircuitBreaker):
        return option
    return CircuitBreaker(option, exclude=CONTROL_FLOW, store=store, **dict(settings.breaker))


def _admits(pref: Pref, routed: Pref) -> bool:
    """True when a task preference accepts the device a queue stands for."""
    if pref.kind == "auto":
        return True
    return pref.kind == routed.kind and pref.index in (None, routed.index)
