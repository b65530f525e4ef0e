"""``SnakepitTask`` and ``@snakepit_task``: fault tolerance as Celery task options.

A task declared with ``@snakepit_task(breaker=..., retry_policy=..., device=...,
idempotent=..., crash_barrier=..., timeout=...)`` runs its body through the
shared circuit breaker; failures are retried by Celery's own ``retry()`` with
the policy's countdown (so Flower and result backends show RETRY states) and
end as ``RetryExhaustedError``; an open breaker re-queues the task with
countdown = ``retry_after`` without spending an attempt (both:
``celery/task_retry.py``). Crashes of the worker process are handled by
``request.SnakepitRequest`` in the pool parent; inside the child, a message
that came back passes the crash-ledger gate (``ledger_gate``) and a GPU-fatal
error recycles the child.

Hot path: a first delivery costs no store round trip (the breaker trusts its
local view of a closed state); the crash ledger is only read for messages
that came back (``redelivered``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, overload

from celery import Celery, Task, shared_task

from snakepit_celery import signals
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.app_context import namespace
from snakepit_celery.celery.crash import note_gpu_fatal
from snakepit_celery.celery.events import RUN_EVENT
from snakepit_celery.celery.headers import (
    MessageHeaders,
    parse_headers,
)
from snakepit_celery.celery.ledger_gate import crash_ledger_gate, redelivered
from snakepit_celery.celery.runtime import (
    CONTROL_FLOW,
    TaskRuntime,
    build_runtime,
    check_options,
    known_options,
    relax_header,
    select_device,
    takes_device,
)
from snakepit_celery.celery.task_retry import defer, retry_or_give_up
from snakepit_celery.errors import (
    CircuitOpenError,
    ConfigError,
    SnakepitError,
)
from snakepit_celery.hardware.types import Device
from snakepit_celery.metrics.hooks import count_event, observe_hot_path
from snakepit_celery.policy.task_options import (
    SNAKEPIT_OPTIONS,
    TaskOptions,
    check_option_names,
)

__all__ = [
    "TASK_FACTS_EVENT",
    "SnakepitTask",
    "snakepit_task",
]

logger = logging.getLogger(__name__)

#: The event carrying a run's node, device, breaker, crash count and attempt (with ``-E``).
TASK_FACTS_EVENT = RUN_EVENT


class SnakepitTask(Task):  # type: ignore[misc]
    """Celery ``Task`` with snakepit's options (every Celery option still applies).

    - ``device``: preference or list of preferences (``"cuda"``, ``["cuda", "cpu"]``);
      the chosen ``Device`` is passed as the ``device`` keyword when the
      function takes one, and is ``self.resolved_device`` while it runs.
      Without this option a function that takes ``device`` gets the node's
      default device (``hardware.select("auto")``).
    - ``breaker``: a name, ``True`` (the task's name) or a ``CircuitBreaker``.
    - ``retry_policy``: a ``RetryPolicy`` (or its dict), else ``snakepit_retry_policy``.
    - ``idempotent``: safe to run twice; turns on ``acks_late`` and
      ``reject_on_worker_lost``, so crashes may re-run it. A task that is not
      idempotent, under an enabled crash barrier and without an ``acks_late``
      of its own, is acknowledged *on record* (``ack_on_record``): once its
      node's registry record lists it in flight (within about half a second
      of its start) or when it ends, whichever comes first.
    - ``crash_barrier``: dict overriding ``snakepit_crash_barrier`` for this task.
    - ``timeout``: seconds (>= 0.001); soft time limit, hard limit a little later.
    - ``pool``: the health-monitor pool its crashes are recorded in.
    - ``gpu_memory``: MB of GPU memory it needs; routed to a GPU with that much room.
    """

    Request = "snakepit_celery.celery.request:SnakepitRequest"

    device: Any = None
    breaker: Any = None
    retry_policy: Any = None
    idempotent: bool = False
    crash_barrier: Mapping[str, Any] | None = None
    timeout: float | None = None
    pool: str | None = None
    gpu_memory: float | None = None
    #: Set by the worker (``ack_on_record_tasks``): the node acknowledges the message
    #: once its record lists the task in flight, not when the task starts.
    ack_on_record: bool = False

    _accepts_device: ClassVar[bool] = False
    #: ``acks_late`` as the task declared it (None: left to Celery's ``task_acks_late``).
    _acks_late_option: ClassVar[bool | None] = None
    #: The checked options of this task class (``@snakepit_task`` hands them over checked).
    _snakepit_options: ClassVar[TaskOptions | None] = None
    _snakepit_runtime: TaskRuntime | None = None
    _snakepit_devices: dict[str, Device] | None = None

    @classmethod
    def bind(cls, app: Celery) -> Any:
        """Turn snakepit options into Celery ones before Celery reads its defaults."""
        if "_acks_late_option" not in cls.__dict__:
            cls._acks_late_option = cls.acks_late
        options = cls._checked_options()
        if options.idempotent:
            if cls.acks_late is None:
                cls.acks_late = True
            if cls.reject_on_worker_lost is None:
                cls.reject_on_worker_lost = True
        limits = options.time_limits()
        if limits is not None:
            if cls.soft_time_limit is None:
                cls.soft_time_limit = limits[0]
            if cls.time_limit is None:
                cls.time_limit = limits[1]
        if "run" in cls.__dict__:
            cls._accepts_device = takes_device(cls.run)
            if cls._accepts_device:
                relax_header(cls)
        return super().bind(app)

    @classmethod
    def _checked_options(cls) -> TaskOptions:
        """This task class's snakepit options, checked once (at declaration, else here)."""
        options = cls.__dict__.get("_snakepit_options")
        if options is None:
            declared = {name: getattr(cls, name) for name in SNAKEPIT_OPTIONS}
            options = cls._snakepit_options = check_options(declared, str(cls.name))
        return options

    # -- what the task resolved ------------------------------------------------------
    @property
    def snakepit_runtime(self) -> TaskRuntime:
        """Breaker, policy, barrier and health monitor of this task (built once per process)."""
        runtime = self._snakepit_runtime
        if runtime is None:
            runtime = self._snakepit_runtime = build_runtime(
                self.app, self.name, self.breaker, self._checked_options()
            )
        return runtime

    @property
    def resolved_device(self) -> Device | None:
        """The device for the current delivery on this host (see ``device_for``).

        A task routed to a device's queue (``snakepit.cpu``, ``snakepit.cuda``,
        ``snakepit.node.<node>.cuda.1``) runs on that device, so a task the
        router moved off a tainted GPU does not land back on it; otherwise the
        first available preference.
        """
        delivery = getattr(self.request, "delivery_info", None) or {}
        return self.device_for(delivery.get("routing_key"))

    def device_for(self, routing_key: str | None) -> Device | None:
        """The device for a delivery on ``routing_key`` (see ``resolved_device``).

        Without a ``device`` option: the node's default device (``"auto"``) when
        the function takes ``device``, else None. Cached per routing key (a
        worker sees a handful), so a task's device costs a dict lookup after its
        first run on each queue.
        """
        prefs = self.device
        if prefs is None:
            if not self._accepts_device:
                return None
            prefs = "auto"
        cache = self._snakepit_devices
        if cache is None:
            cache = self._snakepit_devices = {}
        key = routing_key or ""
        device = cache.get(key)
        if device is None:
            device = cache[key] = select_device(prefs, key, prefix=namespace(self.app))
        return device

    def device_or_none(self, routing_key: str | None = None) -> Device | None:
        """The device for a delivery, or None when there is none or it cannot be resolved here."""
        try:
            return self.device_for(routing_key) if routing_key else self.resolved_device
        except SnakepitError:
            return None

    # -- running -------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        request = self.request_stack.top
        if request is None or request.called_directly:
            return self._call_directly(args, kwargs)
        runtime = self.snakepit_runtime
        headers = parse_headers(request.headers, request.retries)
        if request.retries != headers.retries:
            request.retries = headers.retries  # Celery's own retry() counts on an int
        # A message that came back, or one re-published after a crash, is run
        # with a crash-ledger record (the rare path); a first delivery is not,
        # unless the task asked for start marks (one round trip per run).
        tracked = redelivered(request) or headers.tracked or runtime.barrier.config.start_marks
        if not (runtime.barrier.enabled and self.acks_late and tracked):
            return self._attempt(
                runtime, request, headers, args, kwargs, crashes=headers.crashes, started=started
            )
        crashes = self._crash_ledger_gate(runtime, request, headers.raw)
        # A retry of this run is a new message: the header keeps it tracked.
        headers = headers.with_crash_header()
        try:
            return self._attempt(
                runtime, request, headers, args, kwargs, crashes=crashes, started=started
            )
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
        headers: MessageHeaders,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        crashes: int,
        started: float,
    ) -> Any:
        """Run the body once; ``crashes``: the task's crashes so far (ledger and header).

        ``started``: ``perf_counter()`` when the task was called; snakepit's own
        time until the body runs is observed as ``snakepit_hot_path_seconds``.
        """
        if self._accepts_device and "device" not in kwargs:
            kwargs = {**kwargs, "device": self.resolved_device}
        attempt = headers.attempt
        breaker = runtime.breaker
        if runtime.task_events and (crashes or attempt > 1 or headers.deferrals):
            self._send_facts(request, headers, breaker, crashes)
        observe_hot_path("before", time.perf_counter() - started)
        try:
            if breaker is None:
                result = self.run(*args, **kwargs)
            else:
                result = breaker.call(self.run, *args, **kwargs)
        except CONTROL_FLOW:
            raise
        except CircuitOpenError as exc:
            if not runtime.defer_on_open or request.is_eager:
                raise
            defer(self, exc, breaker, request, headers)
        except Exception as exc:
            if runtime.barrier.enabled:
                note_gpu_fatal(runtime.barrier, runtime.health, request, exc, self.device_or_none())
            policy = runtime.policy
            if policy is None or not policy.retry_for_error(exc):
                raise
            retry_or_give_up(self, policy, exc, attempt, headers)
        if attempt > 1 and runtime.policy is not None:
            signals.retry_success.send(
                sender=self, attempts=attempt, total_duration=headers.since_first_try()
            )
        return result

    def _send_facts(
        self,
        request: Any,
        headers: MessageHeaders,
        breaker: CircuitBreaker | None,
        crashes: int,
    ) -> None:
        """``snakepit-run``: the node, device, breaker, crash count and attempt of this run.

        Sent only when the worker sends task events (``-E``), like Celery's own
        per-task events, and only for a run that is not a first delivery (a
        retry, a deferral, a re-run after a crash): a first run costs no extra
        message, Celery's own ``task-started`` gives its node. Never raises
        into the task (a lost event is counted).
        """
        device = self.device_or_none((request.delivery_info or {}).get("routing_key"))
        try:
            self.send_event(
                TASK_FACTS_EVENT,
                node=request.hostname,
                device=None if device is None else str(device),
                breaker=None if breaker is None else breaker.name,
                crashes=crashes,
                deferrals=headers.deferrals,
                attempt=headers.attempt,
            )
        except Exception:
            count_event(TASK_FACTS_EVENT, lost=True)
            logger.warning("could not send %s", TASK_FACTS_EVENT, exc_info=True)
        else:
            count_event(TASK_FACTS_EVENT, lost=False)

    # -- crashes seen from inside the child ---------------------------------------------
    def _crash_ledger_gate(
        self, runtime: TaskRuntime, request: Any, headers: Mapping[str, Any]
    ) -> int:
        """Count the crashes behind a message that came back; stop it past ``max_restarts``."""
        return crash_ledger_gate(self, runtime, request, headers)


@overload
def snakepit_task(fn: Callable[..., Any], /) -> SnakepitTask: ...


@overload
def snakepit_task(**options: Any) -> Callable[[Callable[..., Any]], SnakepitTask]: ...


def snakepit_task(*args: Any, **options: Any) -> Any:
    """Declare a ``SnakepitTask``: like ``shared_task`` (or ``app.task`` with ``app=``).

    Works bare (``@snakepit_task``) or with options; every Celery option
    passes through, ``base`` must be ``SnakepitTask`` or a subclass. Options
    are checked here, once: an unknown name (neither snakepit's nor Celery's)
    or a bad value raises ``ConfigError``.
    """
    app: Celery | None = options.pop("app", None)
    base = options.setdefault("base", SnakepitTask)
    if not (isinstance(base, type) and issubclass(base, SnakepitTask)):
        raise ConfigError("base", base, "SnakepitTask or a subclass of it")
    check_option_names(options, known_options(base))
    declared = {name: options.get(name, getattr(base, name)) for name in SNAKEPIT_OPTIONS}
    options["_snakepit_options"] = check_options(declared, str(options.get("name") or "task"))
    if app is not None:
        return app.task(*args, **options)
    return shared_task(*args, **options)
