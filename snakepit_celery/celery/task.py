"""``SnakepitTask`` and ``@snakepit_task``: fault tolerance as Celery task options.

A task declared with ``@snakepit_task(breaker=..., retry_policy=..., device=...,
idempotent=..., crash_barrier=..., timeout=...)`` runs its body through the
shared circuit breaker; failures are retried by Celery's own ``retry()`` with
the policy's countdown (so Flower and result backends show RETRY states) and
end as ``RetryExhaustedError``; an open breaker re-queues the task with
countdown = ``retry_after`` without spending an attempt. Crashes of the worker
process are handled by ``request.SnakepitRequest`` in the pool parent; this
module handles what happens inside the child: the crash ledger of redelivered
messages, and recycling the child after a GPU-fatal error.

Hot path: a first delivery costs no store round trip (the breaker trusts its
local view of a closed state); the crash ledger is only read for messages
that came back (``redelivered``).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, overload

from celery import Celery, Task, shared_task, states
from celery.backends.base import DisabledBackend
from celery.exceptions import Ignore, Reject, Retry

from snakepit_celery import hardware, signals
from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.app_context import settings_for
from snakepit_celery.celery.crash import note_gpu_fatal
from snakepit_celery.config import SnakepitSettings
from snakepit_celery.errors import (
    CircuitOpenError,
    ConfigError,
    RetryExhaustedError,
    SnakepitError,
    WorkerCrashedError,
)
from snakepit_celery.hardware.types import Device
from snakepit_celery.health import HealthMonitor
from snakepit_celery.policy.crash import CrashBarrierConfig
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.policy.routing import Pref, parse_prefs, queue_device
from snakepit_celery.store import store_from_url
from snakepit_celery.store.base import Store
from snakepit_celery.testing import is_testing

__all__ = [
    "HEADER_CRASHES",
    "HEADER_DEFERRALS",
    "HEADER_FIRST_TRY",
    "TASK_FACTS_EVENT",
    "SnakepitTask",
    "TaskRuntime",
    "final_state",
    "snakepit_task",
    "unrecorded_crashes",
]

logger = logging.getLogger(__name__)

#: Message header: crashes of this task not (yet) in the store's crash ledger.
HEADER_CRASHES = "snakepit_crashes"
#: Message header: re-queues caused by an open breaker (they spend no retry attempt).
HEADER_DEFERRALS = "snakepit_deferrals"
#: Message header: epoch seconds of the first attempt (for ``retry_*`` signal durations).
HEADER_FIRST_TRY = "snakepit_first_try"
#: Task event carrying a run's device, breaker, crash count and attempt (with ``-E``).
TASK_FACTS_EVENT = "task-snakepit-run"
#: Headers kombu adds to a restored message; never copied into a re-published one.
_TRANSPORT_HEADERS = frozenset({"redelivered"})

#: Shortest countdown of a task re-queued by an open breaker (s).
MIN_DEFER_COUNTDOWN = 0.1
#: Hard time limit = ``timeout`` + max(this, 10 % of ``timeout``), so the soft limit fires first.
MIN_TIMEOUT_GRACE = 1.0
#: Kombu's default ``visibility_timeout`` for Redis (s).
DEFAULT_VISIBILITY_TIMEOUT = 3600.0
#: A ledger lease lasts this fraction of the visibility timeout, so it has
#: expired by the time kombu restores the message of a dead node.
LEASE_FRACTION = 0.8

#: Celery's control-flow exceptions: never failures of the task body.
_CONTROL_FLOW: tuple[type[BaseException], ...] = (Retry, Ignore, Reject)


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
    #: The worker sends task events (``-E``): each run also sends ``task-snakepit-run``.
    task_events: bool


class SnakepitTask(Task):  # type: ignore[misc]
    """Celery ``Task`` with snakepit's options (every Celery option still applies).

    - ``device``: preference or list of preferences (``"cuda"``, ``["cuda", "cpu"]``);
      the chosen ``Device`` is passed as the ``device`` keyword when the
      function takes one, and is ``self.resolved_device`` while it runs.
    - ``breaker``: a name, ``True`` (the task's name) or a ``CircuitBreaker``.
    - ``retry_policy``: a ``RetryPolicy`` (or its dict), else ``snakepit_retry_policy``.
    - ``idempotent``: safe to run twice; turns on ``acks_late`` and
      ``reject_on_worker_lost``, so crashes may re-run it. A task that is not
      idempotent, under an enabled crash barrier and without an ``acks_late``
      of its own, is acknowledged *on record* (``ack_on_record``): once its
      node's registry record lists it in flight (within about half a second
      of its start) or when it ends, whichever comes first.
    - ``crash_barrier``: dict overriding ``snakepit_crash_barrier`` for this task.
    - ``timeout``: seconds; soft time limit, hard limit a little later.
    - ``pool``: the health-monitor pool its crashes are recorded in.
    """

    Request = "snakepit_celery.celery.request:SnakepitRequest"

    device: Any = None
    breaker: Any = None
    retry_policy: Any = None
    idempotent: bool = False
    crash_barrier: Mapping[str, Any] | None = None
    timeout: float | None = None
    pool: str | None = None
    #: Set by the worker (``ack_on_record_tasks``): the node acknowledges the message
    #: once its record lists the task in flight, not when the task starts.
    ack_on_record: bool = False

    _accepts_device: ClassVar[bool] = False
    #: ``acks_late`` as the task declared it (None: left to Celery's ``task_acks_late``).
    _acks_late_option: ClassVar[bool | None] = None
    _snakepit_runtime: TaskRuntime | None = None
    _snakepit_devices: dict[str, Device] | None = None

    @classmethod
    def bind(cls, app: Celery) -> Any:
        """Turn snakepit options into Celery ones before Celery reads its defaults."""
        if "_acks_late_option" not in cls.__dict__:
            cls._acks_late_option = cls.acks_late
        if cls.idempotent:
            if cls.acks_late is None:
                cls.acks_late = True
            if cls.reject_on_worker_lost is None:
                cls.reject_on_worker_lost = True
        if cls.timeout is not None:
            timeout = _check_timeout(cls.timeout)
            if cls.soft_time_limit is None:
                cls.soft_time_limit = timeout
            if cls.time_limit is None:
                cls.time_limit = timeout + max(MIN_TIMEOUT_GRACE, 0.1 * timeout)
        if "run" in cls.__dict__:
            cls._accepts_device = _takes_device(cls.run)
            if cls._accepts_device:
                _relax_header(cls)
        return super().bind(app)

    # -- what the task resolved ------------------------------------------------------
    @property
    def snakepit_runtime(self) -> TaskRuntime:
        """Breaker, policy, barrier and health monitor of this task (built once per process)."""
        runtime = self._snakepit_runtime
        if runtime is None:
            runtime = self._snakepit_runtime = _build_runtime(self)
        return runtime

    @property
    def resolved_device(self) -> Device | None:
        """The device for the current delivery on this host, or None without a ``device`` option.

        A task routed to a device's queue (``snakepit.cpu``, ``snakepit.cuda``,
        ``snakepit.node.<node>.cuda.1``) runs on that device, so a task the
        router moved off a tainted GPU does not land back on it; otherwise the
        first available preference.
        """
        delivery = getattr(self.request, "delivery_info", None) or {}
        return self.device_for(delivery.get("routing_key"))

    def device_for(self, routing_key: str | None) -> Device | None:
        """The device for a delivery on ``routing_key`` (see ``resolved_device``).

        Cached per routing key (a worker sees a handful), so a task's device
        costs a dict lookup after its first run on each queue.
        """
        if self.device is None:
            return None
        cache = self._snakepit_devices
        if cache is None:
            cache = self._snakepit_devices = {}
        key = routing_key or ""
        device = cache.get(key)
        if device is None:
            routed = queue_device(key)
            if routed is not None and any(_admits(p, routed) for p in parse_prefs(self.device)):
                device = hardware.select(str(routed))
            else:
                device = hardware.select_with_fallback(self.device)
            cache[key] = device
        return device

    def _device_or_none(self, routing_key: str | None = None) -> Device | None:
        """The device for a delivery, or None when there is none or it cannot be resolved here."""
        try:
            return self.device_for(routing_key) if routing_key else self.resolved_device
        except SnakepitError:
            return None

    # -- running -------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request_stack.top
        if request is None or request.called_directly:
            return self._call_directly(args, kwargs)
        runtime = self.snakepit_runtime
        headers = request.headers or {}
        # A message that came back, or one re-published after a crash, is run
        # with a crash-ledger record (the rare path); a first delivery is not.
        tracked = _redelivered(request) or HEADER_CRASHES in headers
        if not (runtime.barrier.enabled and self.acks_late and tracked):
            return self._attempt(runtime, request, headers, args, kwargs)
        self._crash_ledger_gate(runtime, request, headers)
        # A retry of this run is a new message: the header keeps it tracked.
        headers = {**headers, HEADER_CRASHES: _count(headers.get(HEADER_CRASHES))}
        try:
            return self._attempt(runtime, request, headers, args, kwargs)
        except BaseException:
            # Retry/Reject bring this task id back: close the record so its next
            # run is not taken for a duplicate or a crash. A success needs no
            # second round trip: its message is acked and does not return.
            runtime.barrier.ledger_finish(request.id)
            raise

    def _call_directly(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``task(...)`` called as a function: device and breaker apply, retries do not."""
        if self._accepts_device and "device" not in kwargs:
            kwargs = {**kwargs, "device": self.resolved_device}
        breaker = self.snakepit_runtime.breaker
        if breaker is None:
            return super().__call__(*args, **kwargs)
        return breaker.call(super().__call__, *args, **kwargs)

    def _attempt(
        self,
        runtime: TaskRuntime,
        request: Any,
        headers: Mapping[str, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if self._accepts_device and "device" not in kwargs:
            kwargs = {**kwargs, "device": self.resolved_device}
        attempt = request.retries + 1 - _count(headers.get(HEADER_DEFERRALS))
        breaker = runtime.breaker
        if runtime.task_events:
            self._send_facts(request, headers, breaker, attempt)
        try:
            if breaker is None:
                result = self.run(*args, **kwargs)
            else:
                result = breaker.call(self.run, *args, **kwargs)
        except _CONTROL_FLOW:
            raise
        except CircuitOpenError as exc:
            if not runtime.defer_on_open or request.is_eager:
                raise
            self._defer(exc, breaker, request, headers)
        except Exception as exc:
            if runtime.barrier.enabled:
                note_gpu_fatal(
                    runtime.barrier, runtime.health, request, exc, self._device_or_none()
                )
            policy = runtime.policy
            if policy is None or not policy.retry_for_error(exc):
                raise
            self._retry_or_give_up(policy, exc, attempt, request, headers)
        if attempt > 1 and runtime.policy is not None:
            signals.retry_success.send(
                sender=self, attempts=attempt, total_duration=_since(headers)
            )
        return result

    def _send_facts(
        self,
        request: Any,
        headers: Mapping[str, Any],
        breaker: CircuitBreaker | None,
        attempt: int,
    ) -> None:
        """``task-snakepit-run``: the device, breaker and crash count of this run, for Flower.

        Sent only when the worker sends task events (``-E``), like Celery's own
        per-task events; never raises into the task.
        """
        device = self._device_or_none((request.delivery_info or {}).get("routing_key"))
        try:
            self.send_event(
                TASK_FACTS_EVENT,
                device=None if device is None else str(device),
                breaker=None if breaker is None else breaker.name,
                crashes=_count(headers.get(HEADER_CRASHES)),
                deferrals=_count(headers.get(HEADER_DEFERRALS)),
                attempt=attempt,
                retry=False,
            )
        except Exception:
            logger.debug("could not send %s", TASK_FACTS_EVENT, exc_info=True)

    def _defer(
        self,
        exc: CircuitOpenError,
        breaker: CircuitBreaker | None,
        request: Any,
        headers: Mapping[str, Any],
    ) -> None:
        """Re-queue after ``retry_after`` without spending an attempt (always raises Retry).

        A saturated half-open breaker answers with its probe's lease; waiting
        longer than ``reset_timeout`` for that probe's verdict gains nothing.
        """
        countdown = exc.retry_after
        if breaker is not None and exc.breaker == breaker.name:
            countdown = min(countdown, breaker.reset_timeout)
        countdown = max(countdown, MIN_DEFER_COUNTDOWN)
        retry_headers = {
            **_forwarded(headers),
            HEADER_DEFERRALS: _count(headers.get(HEADER_DEFERRALS)) + 1,
        }
        logger.info(
            "task %s[%s] deferred %.2fs: breaker %s is open",
            self.name,
            request.id,
            countdown,
            exc.breaker,
            extra={"task_id": request.id, "breaker": exc.breaker, "countdown": countdown},
        )
        raise self.retry(
            exc=exc, countdown=countdown, max_retries=request.retries + 1, headers=retry_headers
        )

    def _retry_or_give_up(
        self,
        policy: RetryPolicy,
        exc: Exception,
        attempt: int,
        request: Any,
        headers: Mapping[str, Any],
    ) -> None:
        """Retry through Celery with the policy's countdown, or raise RetryExhaustedError."""
        if policy.should_retry(attempt):
            delay = 0.0 if is_testing() else policy.backoff_for_attempt(attempt)
            signals.retry_attempt.send(sender=self, attempt=attempt, delay=delay)
            retry_headers = {
                **_forwarded(headers),
                HEADER_FIRST_TRY: headers.get(HEADER_FIRST_TRY) or time.time(),
            }
            raise self.retry(
                exc=exc, countdown=delay, max_retries=request.retries + 1, headers=retry_headers
            )
        signals.retry_exhausted.send(
            sender=self, attempts=attempt, total_duration=_since(headers), last_error=exc
        )
        raise RetryExhaustedError(attempt, exc) from exc

    # -- crashes seen from inside the child ---------------------------------------------
    def _crash_ledger_gate(
        self, runtime: TaskRuntime, request: Any, headers: Mapping[str, Any]
    ) -> None:
        """Count the crashes behind a message that came back; stop it past ``max_restarts``.

        The first delivery of a message is never recorded (no round trip on the
        happy path), so when such an untracked message comes back its lost
        delivery counts as one crash, unless its node marked it given back
        unstarted (``ledger_release``, on warm shutdown). Conservatively: kombu
        also restores messages a SIGKILLed node had prefetched but never
        started. Once a message is tracked (re-published after a crash, it
        carries the crash header) every delivery is recorded, and the ledger
        proves its crashes: earlier runs whose lease ran out, or that a pool
        parent saw die. A message whose task already has a final state is not
        run again (its result was stored, its acknowledgement lost).
        """
        barrier = runtime.barrier
        worker_id = f"{request.hostname}/{os.getpid()}"
        before = barrier.ledger_start(request.id, worker_id, runtime.lease)
        if before.running_on is not None and before.running_on != worker_id:
            logger.warning(
                "task %s[%s] is still running on %s: duplicate delivery dropped",
                self.name,
                request.id,
                before.running_on,
                extra={"task_id": request.id, "running_on": before.running_on},
            )
            raise Ignore()
        crashes = unrecorded_crashes(request.delivery_info, headers, before.released)
        crashes += before.crashes
        if crashes == 0:
            if before.released:
                self._drop_if_ended(runtime, request)
            return
        if barrier.retry_allowed(bool(self.idempotent), crashes - 1):
            logger.warning(
                "task %s[%s] came back after its node died; running it again (crash %d)",
                self.name,
                request.id,
                crashes,
                extra={"task_id": request.id, "crashes": crashes},
            )
            return
        self._drop_if_ended(runtime, request)
        barrier.ledger_finish(request.id)
        logger.error(
            "task %s[%s] crashed its worker %d time(s) (max_restarts=%d): not run again",
            self.name,
            request.id,
            crashes,
            barrier.config.max_restarts,
            extra={"task_id": request.id, "crashes": crashes},
        )
        raise WorkerCrashedError(
            "unknown",
            message=(
                f"task {request.id} was lost with its worker {crashes} time(s) "
                f"(max_restarts={barrier.config.max_restarts}); not run again"
            ),
        )

    def _drop_if_ended(self, runtime: TaskRuntime, request: Any) -> None:
        """Raise ``Ignore`` (the message is acknowledged, the state kept) when the task ended.

        One result-backend read, only on the rare paths of the crash-ledger gate.
        """
        state = final_state(self.app, request.id)
        if state is None:
            return
        runtime.barrier.ledger_finish(request.id)
        logger.warning(
            "task %s[%s] came back but already ended %s: not run again",
            self.name,
            request.id,
            state,
            extra={"task_id": request.id, "state": state},
        )
        raise Ignore()


@overload
def snakepit_task(fn: Callable[..., Any], /) -> SnakepitTask: ...


@overload
def snakepit_task(**options: Any) -> Callable[[Callable[..., Any]], SnakepitTask]: ...


def snakepit_task(*args: Any, **options: Any) -> Any:
    """Declare a ``SnakepitTask``: like ``shared_task`` (or ``app.task`` with ``app=``).

    Works bare (``@snakepit_task``) or with options; every Celery option
    passes through, ``base`` must be ``SnakepitTask`` or a subclass.
    """
    app: Celery | None = options.pop("app", None)
    base = options.setdefault("base", SnakepitTask)
    if not (isinstance(base, type) and issubclass(base, SnakepitTask)):
        raise ConfigError("base", base, "SnakepitTask or a subclass of it")
    _check_options(options)
    if app is not None:
        return app.task(*args, **options)
    return shared_task(*args, **options)


# -- runtime -----------------------------------------------------------------------------


def _build_runtime(task: SnakepitTask) -> TaskRuntime:
    settings = settings_for(task.app)
    store = store_from_url(str(settings.store_url), key_prefix=settings.key_prefix)
    barrier_config: CrashBarrierConfig = settings.crash_barrier.merged(task.crash_barrier)
    health_settings = dict(settings.health)
    app_pool = str(health_settings.pop("pool", "default"))
    transport = task.app.conf.broker_transport_options or {}
    visibility = float(transport.get("visibility_timeout") or DEFAULT_VISIBILITY_TIMEOUT)
    return TaskRuntime(
        settings=settings,
        store=store,
        breaker=_breaker_of(task, settings, store),
        policy=_policy_of(task, settings),
        barrier=CrashBarrier(barrier_config, pool=app_pool, store=store),
        health=HealthMonitor(pool=task.pool or app_pool, store=store, **health_settings),
        defer_on_open=settings.defer_on_open,
        lease=visibility * LEASE_FRACTION,
        task_events=bool(task.app.conf.worker_send_task_events),
    )


def _breaker_of(
    task: SnakepitTask, settings: SnakepitSettings, store: Store
) -> CircuitBreaker | None:
    option = _breaker_option(task.breaker, task.name)
    if option is None or isinstance(option, CircuitBreaker):
        return option
    return CircuitBreaker(option, exclude=_CONTROL_FLOW, store=store, **dict(settings.breaker))


def _breaker_option(option: Any, task_name: str) -> str | CircuitBreaker | None:
    """The task's ``breaker`` option checked: a breaker name, a CircuitBreaker, or None."""
    if option is None or option is False or isinstance(option, CircuitBreaker):
        return option or None
    if option is True:
        option = task_name
    if not isinstance(option, str) or not option:
        raise ConfigError("breaker", option, "a breaker name, True, or a CircuitBreaker")
    return option


def _policy_of(task: SnakepitTask, settings: SnakepitSettings) -> RetryPolicy | None:
    policy = _policy_option(task.retry_policy)
    return settings.retry_policy if policy is None else policy


def _policy_option(option: Any) -> RetryPolicy | None:
    """The task's ``retry_policy`` option checked: a RetryPolicy (from a dict too) or None."""
    if option is None or isinstance(option, RetryPolicy):
        return option
    if isinstance(option, Mapping):
        return RetryPolicy.from_dict(option, setting="retry_policy")
    raise ConfigError("retry_policy", option, "a RetryPolicy, a dict of its arguments, or None")


def _check_options(options: Mapping[str, Any]) -> None:
    """Reject bad snakepit options when the task is declared, not when it first runs."""
    name = str(options.get("name") or "task")
    if options.get("timeout") is not None:
        _check_timeout(options["timeout"])
    _policy_option(options.get("retry_policy"))
    _breaker_option(options.get("breaker"), name)
    if options.get("crash_barrier") is not None:
        CrashBarrierConfig().merged(options["crash_barrier"])
    if options.get("device") is not None:
        parse_prefs(options["device"])
    if not isinstance(options.get("idempotent", False), bool):
        raise ConfigError("idempotent", options["idempotent"], "True or False")
    pool = options.get("pool")
    if pool is not None and (not isinstance(pool, str) or not pool):
        raise ConfigError("pool", pool, "a health-monitor pool name (non-empty string) or None")


# -- helpers -----------------------------------------------------------------------------


def _check_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError("timeout", value, "a number of seconds > 0")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError("timeout", value, "a number of seconds > 0")
    return float(value)


def _admits(pref: Pref, routed: Pref) -> bool:
    """True when a task preference accepts the device a queue stands for."""
    if pref.kind == "auto":
        return True
    return pref.kind == routed.kind and pref.index in (None, routed.index)


def _takes_device(run: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(run).parameters
    except (TypeError, ValueError):
        return False
    return "device" in parameters


def _relax_header(cls: type[SnakepitTask]) -> None:
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


def _count(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _forwarded(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The custom headers a re-published message keeps (not kombu's transport ones)."""
    return {k: v for k, v in headers.items() if k not in _TRANSPORT_HEADERS}


def _since(headers: Mapping[str, Any]) -> float:
    first = headers.get(HEADER_FIRST_TRY)
    try:
        return max(0.0, time.time() - float(first)) if first else 0.0
    except (TypeError, ValueError):
        return 0.0


def unrecorded_crashes(
    delivery_info: Mapping[str, Any] | None, headers: Mapping[str, Any], released: bool = False
) -> int:
    """Crashes of a message the ledger does not hold: its header's, plus its lost delivery.

    An untracked message (no crash header) that came back lost a delivery no
    ledger recorded; that counts as one crash, unless its node gave it back
    unstarted (``released``: the ledger's give-back mark for this delivery).
    """
    lost = (
        (delivery_info or {}).get("redelivered") and HEADER_CRASHES not in headers and not released
    )
    return _count(headers.get(HEADER_CRASHES)) + (1 if lost else 0)


def final_state(app: Celery, task_id: str) -> str | None:
    """The task's state in the result backend when it is a final one, else None.

    None too without a result backend, or when it cannot be read (logged).
    """
    backend = app.backend
    if isinstance(backend, DisabledBackend):
        return None
    try:
        state = backend.get_task_meta(task_id).get("status")
    except Exception:
        logger.warning("could not read the state of task %s", task_id, exc_info=True)
        return None
    return str(state) if state in states.READY_STATES else None


def _redelivered(request: Any) -> bool:
    delivery_info = request.delivery_info
    return bool(delivery_info and delivery_info.get("redelivered"))
