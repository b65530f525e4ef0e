"""The crash-ledger gate on the rare path: copies of running or ended tasks, the store down.

Real Redis (store and result backend); the gate is called as a pool child
would call it for a message that came back.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore, Retry

from snakepit_celery.celery.app_context import app_group, app_store
from snakepit_celery.celery.headers import HEADER_COPY, HEADER_CRASHES, HEADER_DEFERRALS
from snakepit_celery.celery.install import install
from snakepit_celery.celery.ledger_gate import DUPLICATE_RECHECK
from snakepit_celery.celery.resend import RetryAgain, SendAgain
from snakepit_celery.celery.task import snakepit_task
from snakepit_celery.errors import WorkerCrashedError
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


def came_back(
    task_id: str, hostname: str = "b@host", retries: int = 0, *, redelivered: bool = True
) -> Any:
    """A request as a worker's pool child sees it (not eager, not called directly)."""
    return SimpleNamespace(
        id=task_id,
        hostname=hostname,
        delivery_info={"redelivered": True} if redelivered else {},
        retries=retries,
        is_eager=False,
        called_directly=False,
    )


def beat(app: Celery, node: str, pids: list[int]) -> None:
    """Write a live registry record of ``node`` listing ``pids`` (heartbeat every 0.1 s)."""
    record = {"incarnation": f"{node}-1", "worker_pids": pids, "heartbeat_interval": 0.1}
    store = app_store(app)
    assert store.node_register(node, record, ttl=30.0, group=app_group(app))


def held_by_a_live_run(app: Celery, task: Any, task_id: str) -> None:
    """``task_id``'s lease is held by process 1 of a@host, whose node record is live."""
    beat(app, "a@host", [1])
    task.snakepit_runtime.barrier.ledger_hold({task_id: "a@host/1"}, 30.0)


def deferrals(monkeypatch: pytest.MonkeyPatch, task: Any) -> list[dict[str, Any]]:
    """The options of every message the gate sends again (handed to the pool parent)."""
    sent: list[dict[str, Any]] = []

    def signature_from_request(request: Any, **options: Any) -> Any:
        sent.append(options)
        return {"task": task.name, "options": options}

    monkeypatch.setattr(task, "signature_from_request", signature_from_request)
    return sent


def runs_after_one_send_with_its_count(task: Any, task_id: str, sent: list[Any]) -> int:
    """A message that came back is sent again at once, its header holding its count; the
    new message (``sent``'s last) then runs: its crash count."""
    runtime = task.snakepit_runtime
    with pytest.raises(SendAgain):
        task._crash_ledger_gate(runtime, came_back(task_id), {})
    assert sent[-1]["countdown"] == 0.0
    entry = runtime.barrier.ledger_get(task_id)
    assert entry is not None and entry.running_on is None  # its lease let go
    headers = sent[-1]["headers"]
    count: int = task._crash_ledger_gate(runtime, came_back(task_id, redelivered=False), headers)
    assert count == headers[HEADER_CRASHES]
    return count


def test_a_message_that_came_back_is_sent_again_with_the_ledgers_count_in_its_header(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash seen while the store is down then counts from the full count, not the
    stale header the broker re-sent."""
    task = gated(app)
    for _ in range(2):  # two crashes its pool parents saw; the message's header says none
        task.snakepit_runtime.barrier.ledger_crash("back-1")
    sent = deferrals(monkeypatch, task)
    assert runs_after_one_send_with_its_count(task, "back-1", sent) == 2
    assert len(sent) == 1


def test_a_copy_of_a_task_whose_first_run_lives_is_deferred_not_run(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = gated(app)
    runtime = task.snakepit_runtime
    held_by_a_live_run(app, task, "long-1")
    sent = deferrals(monkeypatch, task)
    with pytest.raises(SendAgain) as raised:  # an Ignore: this delivery is dropped
        task._crash_ledger_gate(runtime, came_back("long-1"), {})
    copy = {HEADER_CRASHES: 0, HEADER_COPY: "a@host/1"}  # a copy of that run
    assert sent == [{"countdown": DUPLICATE_RECHECK, "headers": copy}]
    assert isinstance(raised.value, Ignore) and raised.value.when == DUPLICATE_RECHECK
    assert app.AsyncResult("long-1").state == "PENDING"
    entry = runtime.barrier.ledger_get("long-1")
    assert entry is not None and (entry.running_on, entry.crashes) == ("a@host/1", 0)


def test_a_deferred_copy_carries_the_ledgers_count_when_its_header_is_behind(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the store lose the count later (restarted from an older save), the copy has it."""
    task = gated(app)
    runtime = task.snakepit_runtime
    runtime.barrier.ledger_crash("long-2")
    runtime.barrier.ledger_crash("long-2")
    held_by_a_live_run(app, task, "long-2")
    sent = deferrals(monkeypatch, task)
    with pytest.raises(SendAgain):
        task._crash_ledger_gate(runtime, came_back("long-2"), {HEADER_CRASHES: 1})
    assert sent[0]["headers"] == {HEADER_CRASHES: 2, HEADER_COPY: "a@host/1"}


def test_a_copy_runs_at_once_when_the_node_of_the_first_run_has_no_live_record(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ redelivers a dead node's message at once: its live lease must not hold it."""
    task = gated(app)
    runtime = task.snakepit_runtime
    runtime.barrier.ledger_hold({"gone-1": "dead@host/7"}, 3000.0)
    sent = deferrals(monkeypatch, task)
    assert runs_after_one_send_with_its_count(task, "gone-1", sent) == 1
    entry = runtime.barrier.ledger_get("gone-1")
    assert entry is not None
    assert (entry.crashes, entry.running_on) == (1, f"b@host/{os.getpid()}")


def test_a_copy_that_takes_over_from_a_dead_run_is_sent_again_with_that_crash_in_its_header(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a message that came back: a copy's header lacks the dead run it counted.

    Run on its old header, a crash the pool parent then sees while the store
    is down would count from 1 + 1, not 2 + 1 (a fourth run, log-traced in a
    chaos run on RabbitMQ).
    """
    task = gated(app)
    runtime = task.snakepit_runtime
    runtime.barrier.ledger_crash("over-1")
    runtime.barrier.ledger_hold({"over-1": "dead@host/7"}, 3000.0)
    sent = deferrals(monkeypatch, task)
    copy = {HEADER_CRASHES: 1, HEADER_COPY: "dead@host/7"}
    with pytest.raises(SendAgain):
        task._crash_ledger_gate(runtime, came_back("over-1", redelivered=False), copy)
    assert sent == [{"countdown": 0.0, "headers": {HEADER_CRASHES: 2}}]
    request = came_back("over-1", redelivered=False)
    assert task._crash_ledger_gate(runtime, request, sent[0]["headers"]) == 2
    assert len(sent) == 1


def test_a_copy_runs_when_the_record_written_since_the_lease_no_longer_lists_its_process(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead pool child (or a process of a node restarted under the same name)."""
    task = gated(app)
    runtime = task.snakepit_runtime
    runtime.barrier.ledger_hold({"child-1": "a@host/7"}, 3000.0)
    time.sleep(0.4)
    beat(app, "a@host", [1, 8])
    sent = deferrals(monkeypatch, task)
    assert runs_after_one_send_with_its_count(task, "child-1", sent) == 1


def test_a_copy_waits_for_a_child_younger_than_its_nodes_last_record(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that took its lease after the last beat is not listed yet: it lives."""
    task = gated(app)
    runtime = task.snakepit_runtime
    beat(app, "a@host", [1])
    time.sleep(0.4)
    runtime.barrier.ledger_hold({"young-1": "a@host/9"}, 3000.0)
    sent = deferrals(monkeypatch, task)
    with pytest.raises(Ignore):
        task._crash_ledger_gate(runtime, came_back("young-1"), {})
    assert [options["countdown"] for options in sent] == [DUPLICATE_RECHECK]


def test_two_copies_that_find_one_dead_run_count_its_crash_once(app: Celery) -> None:
    task = gated(app)
    barrier = task.snakepit_runtime.barrier
    barrier.ledger_hold({"twice-1": "dead@host/7"}, 3000.0)
    assert barrier.ledger_crash("twice-1", holder="dead@host/7").crashes == 1
    assert barrier.ledger_crash("twice-1", holder="dead@host/7").crashes == 1
    entry = barrier.ledger_get("twice-1")
    assert entry is not None and (entry.crashes, entry.running_on) == (1, None)


def test_a_copy_of_a_task_that_ended_is_dropped_even_when_a_rerun_is_allowed(
    app: Celery,
) -> None:
    task = gated(app)
    app.backend.mark_as_done("ended-1", 42)
    with pytest.raises(Ignore):
        task._crash_ledger_gate(task.snakepit_runtime, came_back("ended-1"), {})
    assert app.AsyncResult("ended-1").state == "SUCCESS"


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_a_message_that_came_back_while_the_store_is_down_is_retried_its_loss_counted(
    app: Celery, monkeypatch: pytest.MonkeyPatch, fail_open: bool
) -> None:
    """The broker re-sends a restored message with its old header: running it on that
    count would let a node-killing task loop while the store is down (both modes)."""
    app.conf.snakepit_store_url = "redis://127.0.0.1:1/0"
    app.conf.snakepit_fail_open = fail_open
    task = gated(app)
    sent = deferrals(monkeypatch, task)
    with pytest.raises(RetryAgain) as raised:
        task._crash_ledger_gate(task.snakepit_runtime, came_back("down-1"), {HEADER_CRASHES: 1})
    headers = sent[0]["headers"]
    assert (headers[HEADER_CRASHES], headers[HEADER_DEFERRALS]) == (2, 1)
    assert headers[HEADER_COPY] == "?"  # it may be a copy of a run that lives: waits again
    assert sent[0]["countdown"] > 0 and sent[0]["retries"] == 1
    assert raised.value.signature["options"] == sent[0]  # published by the pool parent


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_a_message_of_an_ended_task_that_came_back_while_the_store_is_down_is_dropped(
    app: Celery, fail_open: bool
) -> None:
    """Not retried: its RETRY state would overwrite the final one (and it would run again)."""
    app.conf.snakepit_store_url = "redis://127.0.0.1:1/0"
    app.conf.snakepit_fail_open = fail_open
    task = gated(app)
    task.backend.mark_as_failure("ended-down", WorkerCrashedError("segfault"))
    try:
        with pytest.raises(Ignore) as raised:
            task._crash_ledger_gate(task.snakepit_runtime, came_back("ended-down"), {})
        assert not isinstance(raised.value, SendAgain | RetryAgain)
        assert app.AsyncResult("ended-down").state == "FAILURE"
    finally:
        task.backend.forget("ended-down")


def test_fail_open_a_copy_of_a_run_that_may_live_waits_for_the_store(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deferred copy (or a message that came back) never runs on its header alone: the
    run it copies may live, or have died uncounted."""
    app.conf.snakepit_store_url = "redis://127.0.0.1:1/0"
    task = gated(app)
    sent = deferrals(monkeypatch, task)
    copy = came_back("copy-1", redelivered=False)
    with pytest.raises(RetryAgain):
        task._crash_ledger_gate(
            task.snakepit_runtime, copy, {HEADER_CRASHES: 1, HEADER_COPY: "a@host/1"}
        )
    assert sent[0]["headers"][HEADER_COPY] == "a@host/1"
    assert sent[0]["headers"][HEADER_CRASHES] == 1


def test_a_copy_the_gate_let_run_is_re_published_without_the_copy_mark() -> None:
    from snakepit_celery.celery.headers import forwarded

    assert forwarded({HEADER_COPY: "a@host/1", HEADER_CRASHES: 2, "x": 1}) == {
        HEADER_CRASHES: 2,
        "x": 1,
    }


def test_an_eager_run_sends_its_retry_itself(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a worker's ``SnakepitRequest`` publishes what the gate sends again."""
    app.conf.snakepit_store_url = "redis://127.0.0.1:1/0"
    task = gated(app)
    retried: list[dict[str, Any]] = []

    def retry(**options: Any) -> Retry:
        retried.append(options)
        return Retry()

    monkeypatch.setattr(task, "retry", retry)
    eager = came_back("down-3")
    eager.is_eager = True
    with pytest.raises(Retry) as raised:
        task._crash_ledger_gate(task.snakepit_runtime, eager, {HEADER_CRASHES: 1})
    assert not isinstance(raised.value, RetryAgain)
    assert retried[0]["headers"][HEADER_CRASHES] == 2


def test_fail_open_a_re_published_copy_runs_on_its_headers_count_while_the_store_is_down(
    app: Celery,
) -> None:
    app.conf.snakepit_store_url = "redis://127.0.0.1:1/0"
    task = gated(app)
    fresh = came_back("down-2", redelivered=False)
    assert task._crash_ledger_gate(task.snakepit_runtime, fresh, {HEADER_CRASHES: 2}) == 2
    with pytest.raises(WorkerCrashedError):  # max_restarts=2: a third crash stops it
        task._crash_ledger_gate(task.snakepit_runtime, fresh, {HEADER_CRASHES: 3})
