"""``start_marks``: the crash-barrier setting that records every run's start in the ledger.

A task that asks for it (``snakepit_crash_barrier`` or the task's
``crash_barrier``) pays one store round trip per run; in exchange the crash
count of a task whose node died is exact: a message that came back but never
started is no crash, one that did start counts once. The end-to-end case (a
prefetched message of a SIGKILLed node) is in ``test_node_death.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

from snakepit_celery import CrashBarrierConfig, install, snakepit_task
from snakepit_celery.errors import ConfigError, WorkerCrashedError
from snakepit_celery.store import set_default_store


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    app = Celery("marks_test", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.snakepit_key_prefix = key_prefix
    app.conf.snakepit_crash_barrier = {"enabled": True, "max_restarts": 1}
    install(app)
    yield app
    app.close()
    set_default_store(None)


def marked_task(app: Celery) -> Any:
    @snakepit_task(app=app, name="marks.once", crash_barrier={"start_marks": True}, shared=False)
    def once() -> None:
        return None

    return once


def delivery(task_id: str, *, came_back: bool) -> Any:
    return SimpleNamespace(id=task_id, hostname="n@host", delivery_info={"redelivered": came_back})


def test_start_marks_is_off_by_default_and_checked() -> None:
    assert CrashBarrierConfig().start_marks is False
    assert CrashBarrierConfig.from_dict({"start_marks": True}).as_dict()["start_marks"] is True
    with pytest.raises(ConfigError, match="start_marks"):
        CrashBarrierConfig(start_marks="yes")  # type: ignore[arg-type]


def test_first_delivery_writes_a_start_mark(app: Celery) -> None:
    task = marked_task(app)
    task._crash_ledger_gate(task.snakepit_runtime, delivery("m-1", came_back=False), {})
    entry = task.snakepit_runtime.barrier.ledger_get("m-1")
    assert entry is not None and (entry.starts, entry.crashes) == (1, 0)
    assert entry.running_on == f"n@host/{os.getpid()}"


def test_message_that_came_back_unstarted_runs_without_a_crash(app: Celery) -> None:
    task = marked_task(app)
    task._crash_ledger_gate(task.snakepit_runtime, delivery("m-2", came_back=True), {})  # runs
    entry = task.snakepit_runtime.barrier.ledger_get("m-2")
    assert entry is not None and (entry.starts, entry.crashes) == (1, 0)


def test_message_whose_start_died_with_its_node_counts_one_crash(app: Celery) -> None:
    task = marked_task(app)
    barrier = task.snakepit_runtime.barrier
    task._crash_ledger_gate(task.snakepit_runtime, delivery("m-3", came_back=False), {})
    barrier.ledger_crash("m-3")  # what the reaper records for a run on the dead node
    with pytest.raises(WorkerCrashedError, match="1 time"):
        task._crash_ledger_gate(task.snakepit_runtime, delivery("m-3", came_back=True), {})


def test_first_delivery_reads_no_result_backend(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The start mark is the one round trip: a first run cannot have a final state yet."""
    reads: list[str] = []
    real = app.backend.get_task_meta

    def counted(task_id: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(task_id)
        return real(task_id, *args, **kwargs)

    monkeypatch.setattr(app.backend, "get_task_meta", counted)
    task = marked_task(app)
    task._crash_ledger_gate(task.snakepit_runtime, delivery("m-5", came_back=False), {})
    assert reads == []
    task.snakepit_runtime.barrier.ledger_finish("m-5")
    app.backend.store_result("m-5", None, "SUCCESS")
    with pytest.raises(Ignore):  # a copy of a run that ended: dropped, after one read
        task._crash_ledger_gate(task.snakepit_runtime, delivery("m-5", came_back=False), {})
    assert reads == ["m-5"]
