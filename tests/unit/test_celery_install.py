"""install(app) and @snakepit_task options, in process (no worker needed)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from snakepit_celery import CircuitBreaker, ConfigError, install, snakepit_task
from snakepit_celery.celery.app_context import app_store, namespace, settings_for, taint_pools
from snakepit_celery.celery.bootsteps.steps import SnakepitWorkerStep
from snakepit_celery.celery.router import SnakepitRouter
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.errors import CircuitOpenError
from snakepit_celery.store import set_default_store


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    app = Celery("install_test", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.snakepit_key_prefix = key_prefix
    yield app
    app.close()
    set_default_store(None)


@pytest.fixture
def eager_app(key_prefix: str) -> Iterator[Celery]:
    app = Celery("eager_test", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.task_always_eager = True
    app.conf.snakepit_store_url = "memory://"
    app.conf.snakepit_key_prefix = key_prefix
    yield app
    app.close()


def test_install_rejects_a_misspelled_setting_naming_it(app: Celery) -> None:
    app.conf.snakepit_crash_barier = {"enabled": True}
    with pytest.raises(ConfigError) as raised:
        install(app)
    assert "snakepit_crash_barier" in str(raised.value)


def test_install_rejects_an_invalid_value(app: Celery) -> None:
    app.conf.snakepit_crash_barrier = {"retry": "sometimes"}
    with pytest.raises(ConfigError, match="sometimes"):
        install(app)


def test_install_needs_a_redis_store_when_broker_and_backend_are_not_redis() -> None:
    app = Celery("no_redis", broker="memory://", backend="cache+memory://", set_as_current=False)
    with pytest.raises(ConfigError, match="snakepit_store_url"):
        install(app)


def test_install_takes_the_store_from_the_broker_url(app: Celery, redis_url: str) -> None:
    assert install(app).store_url == redis_url


def test_app_context_reads_settings_and_store_once_per_app(app: Celery, key_prefix: str) -> None:
    app.conf.snakepit_health = {"pool": "gpu"}
    assert settings_for(app) is settings_for(app)
    assert app_store(app) is app_store(app)
    assert app_store(app).key_prefix == key_prefix == namespace(app)
    assert taint_pools(app) == ("default", "gpu")


def test_install_twice_changes_nothing_the_second_time(app: Celery) -> None:
    first = install(app)
    second = install(app)
    assert second is first
    assert sum(isinstance(route, SnakepitRouter) for route in app.conf.task_routes) == 1
    assert list(app.steps["consumer"]).count(SnakepitWorkerStep) == 1


def test_idempotent_option_turns_on_late_ack_and_reject_on_worker_lost(app: Celery) -> None:
    @snakepit_task(app=app, idempotent=True, shared=False)
    def job() -> None: ...

    assert job.acks_late is True
    assert job.reject_on_worker_lost is True


def test_explicit_celery_option_wins_over_idempotent(app: Celery) -> None:
    @snakepit_task(app=app, idempotent=True, acks_late=False, shared=False)
    def job() -> None: ...

    assert job.acks_late is False


def test_timeout_sets_a_soft_limit_and_a_later_hard_limit(app: Celery) -> None:
    @snakepit_task(app=app, timeout=10, shared=False)
    def job() -> None: ...

    assert job.soft_time_limit == 10
    assert job.time_limit > job.soft_time_limit


def test_invalid_timeout_is_rejected(app: Celery) -> None:
    with pytest.raises(ConfigError, match="timeout"):

        @snakepit_task(app=app, timeout=-1, shared=False)
        def job() -> None: ...


def test_celery_options_pass_through(app: Celery) -> None:
    @snakepit_task(app=app, name="custom.name", max_retries=7, rate_limit="5/s", shared=False)
    def job() -> None: ...

    assert isinstance(job, SnakepitTask)
    assert job.name == "custom.name"
    assert (job.max_retries, job.rate_limit) == (7, "5/s")


def test_base_must_be_a_snakepit_task(app: Celery) -> None:
    with pytest.raises(ConfigError, match="base"):
        snakepit_task(app=app, base=Celery.Task)


def test_bare_decorator_registers_a_shared_task(eager_app: Celery) -> None:
    @snakepit_task
    def bare_shared_job() -> str:
        return "ran"

    registered = eager_app.tasks[bare_shared_job.name]
    assert isinstance(registered, SnakepitTask)
    assert registered.apply().get() == "ran"


def test_device_is_injected_when_the_function_takes_it(eager_app: Celery) -> None:
    @snakepit_task(app=eager_app, device="cpu", shared=False)
    def infer(batch: int, *, device: Any) -> str:
        return f"{batch}@{device}"

    assert infer.delay(3).get() == "3@cpu"
    assert str(infer.resolved_device) == "cpu"


def test_device_is_not_passed_to_a_function_without_it(eager_app: Celery) -> None:
    @snakepit_task(app=eager_app, device="cpu", shared=False)
    def plain(batch: int) -> int:
        return batch

    assert plain.delay(3).get() == 3


def test_open_breaker_fails_fast_when_defer_on_open_is_off(
    eager_app: Celery, key_prefix: str
) -> None:
    eager_app.conf.snakepit_defer_on_open = False
    breaker = CircuitBreaker(f"fragile-{key_prefix}", failure_threshold=1, store="memory://")
    breaker.record_failure()

    @snakepit_task(app=eager_app, breaker=breaker, shared=False)
    def call() -> str:
        return "called"

    with pytest.raises(CircuitOpenError):
        call.delay().get()


def _gate_task(app: Celery) -> Any:
    app.conf.snakepit_crash_barrier = {"enabled": True, "max_restarts": 1}
    install(app)

    @snakepit_task(app=app, name="gate.poison", idempotent=True, shared=False)
    def poison() -> None:
        return None

    return poison


def test_tracked_message_runs_and_is_recorded_in_the_crash_ledger(app: Celery) -> None:
    """A message re-published after a crash carries the crash header: every run is recorded."""
    from types import SimpleNamespace

    from snakepit_celery.celery.headers import HEADER_CRASHES

    task = _gate_task(app)
    request = SimpleNamespace(id="tracked-1", hostname="a@host", delivery_info={})
    task._crash_ledger_gate(task.snakepit_runtime, request, {HEADER_CRASHES: 0})
    entry = task.snakepit_runtime.barrier.ledger_get("tracked-1")
    assert entry is not None and (entry.starts, entry.crashes) == (1, 0)


def test_untracked_message_that_came_back_counts_its_lost_delivery_as_one_crash(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from snakepit_celery.celery.headers import HEADER_CRASHES
    from snakepit_celery.celery.resend import SendAgain
    from snakepit_celery.errors import WorkerCrashedError

    task = _gate_task(app)
    monkeypatch.setattr(task, "signature_from_request", lambda request, **options: options)
    with pytest.raises(SendAgain) as sent:  # crash 1 <= max_restarts: sent again to run
        task._crash_ledger_gate(task.snakepit_runtime, _came_back("poison-1"), {})
    assert sent.value.signature["headers"] == {HEADER_CRASHES: 1}
    task.snakepit_runtime.barrier.ledger_crash("poison-1")
    with pytest.raises(WorkerCrashedError, match="max_restarts=1"):
        task._crash_ledger_gate(task.snakepit_runtime, _came_back("poison-1"), {})


def _once_task(app: Celery) -> Any:
    app.conf.snakepit_crash_barrier = {"enabled": True, "max_restarts": 1}
    install(app)

    @snakepit_task(app=app, name="gate.once", shared=False)
    def once() -> None:
        return None

    return once


def _came_back(task_id: str) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(
        id=task_id,
        hostname="d@host",
        delivery_info={"redelivered": True},
        is_eager=False,
        called_directly=False,
    )


def test_message_given_back_unstarted_runs_without_counting_a_crash(app: Celery) -> None:
    task = _once_task(app)
    barrier = task.snakepit_runtime.barrier
    barrier.ledger_release("given-back-1")
    task._crash_ledger_gate(task.snakepit_runtime, _came_back("given-back-1"), {})  # runs
    entry = barrier.ledger_get("given-back-1")
    assert entry is not None and (entry.starts, entry.crashes, entry.released) == (1, 0, False)


def test_untracked_non_idempotent_message_that_came_back_is_failed_not_run(app: Celery) -> None:
    from snakepit_celery.errors import WorkerCrashedError

    task = _once_task(app)
    with pytest.raises(WorkerCrashedError, match="not run again"):
        task._crash_ledger_gate(task.snakepit_runtime, _came_back("lost-1"), {})


@pytest.mark.parametrize("released", [False, True])
def test_message_of_a_task_that_already_ended_is_dropped(
    app: Celery, key_prefix: str, released: bool
) -> None:
    from celery.exceptions import Ignore

    task = _once_task(app)
    task_id = f"{key_prefix}-ended"
    task.backend.mark_as_done(task_id, 42)
    try:
        if released:
            task.snakepit_runtime.barrier.ledger_release(task_id)
        with pytest.raises(Ignore):
            task._crash_ledger_gate(task.snakepit_runtime, _came_back(task_id), {})
        assert app.AsyncResult(task_id).get(timeout=5) == 42
    finally:
        task.backend.forget(task_id)
