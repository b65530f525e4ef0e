"""The crash-ledger gate on the rare path: copies of running or ended tasks, the store down.

Real Redis (store and result backend); the gate is called as a pool child
would call it for a message that came back.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore, Retry

from snakepit_celery.celery.headers import HEADER_CRASHES, HEADER_DEFERRALS
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task
from snakepit_celery.store import set_default_store, set_fail_open


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    app = Celery("gate_test", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.snakepit_key_prefix = key_prefix
    app.conf.snakepit_crash_barrier = {"enabled": True, "max_restarts": 2}
    yield app
    app.close()
    set_default_store(None)
    set_fail_open(True)


def gated(app: Celery) -> Any:
    install(app)

    @snakepit_task(app=app, name="gate.job", idempotent=True, shared=False)
    def job() -> None:
        return None

    return job


def came_back(task_id: str, hostname: str = "b@host", retries: int = 0) -> Any:
    return SimpleNamespace(
        id=task_id, hostname=hostname, delivery_info={"redelivered": True}, retries=retries
    )


def test_a_copy_of_a_task_whose_first_run_holds_its_lease_is_deferred_not_run(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = gated(app)
    runtime = task.snakepit_runtime
    runtime.barrier.ledger_hold({"long-1": "a@host/1"}, 30.0)
    sent: list[dict[str, Any]] = []

    def signature_from_request(request: Any, **options: Any) -> Any:
        sent.append(options)
        return SimpleNamespace(apply_async=lambda: None)

    monkeypatch.setattr(task, "signature_from_request", signature_from_request)
    with pytest.raises(Ignore):
        task._crash_ledger_gate(runtime, came_back("long-1"), {})
    assert sent == [{"countdown": runtime.lease, "headers": {HEADER_CRASHES: 0}}]
    assert app.AsyncResult("long-1").state == "PENDING"


def test_a_copy_of_a_task_that_ended_is_dropped_even_when_a_rerun_is_allowed(
    app: Celery,
) -> None:
    task = gated(app)
    app.backend.mark_as_done("ended-1", 42)
    with pytest.raises(Ignore):
        task._crash_ledger_gate(task.snakepit_runtime, came_back("ended-1"), {})
    assert app.AsyncResult("ended-1").state == "SUCCESS"


def test_fail_closed_a_store_that_does_not_answer_retries_the_task_keeping_its_crashes(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.snakepit_store_url = "redis://127.0.0.1:1/0"
    app.conf.snakepit_fail_open = False
    task = gated(app)
    retried: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retried.append(options)
        return Retry()

    monkeypatch.setattr(task, "retry", retry)
    with pytest.raises(Retry):
        task._crash_ledger_gate(task.snakepit_runtime, came_back("down-1"), {HEADER_CRASHES: 1})
    headers = retried[0]["headers"]
    assert (headers[HEADER_CRASHES], headers[HEADER_DEFERRALS]) == (2, 1)
    assert retried[0]["countdown"] > 0
