"""A job the prefork pool puts back after its child died is sent on marked ``redelivered``.

The payload is built as Celery's ``AsynPool.send_job`` builds it (pickled
``(TASK, (job, i, trace, args, kwargs))`` with a 4-byte length header), and
the pool is a stand-in whose ``on_partial_read`` records what billiard's
would put back.
"""

from __future__ import annotations

import pickle
import struct
from types import SimpleNamespace
from typing import Any

from billiard.pool import TASK
from celery.app.trace import fast_trace_task

from snakepit_celery.celery.bootsteps.putback import mark_came_back, mark_put_back_jobs


class Job:
    """What the wrapper reads of billiard's ``ApplyResult``."""

    def __init__(self, task_id: str, accepted: bool = False) -> None:
        request = {"id": task_id, "delivery_info": {"routing_key": "q", "redelivered": False}}
        args = ("demo.task", task_id, request, b"[[], {}, {}]", "application/json", "utf-8")
        body = pickle.dumps((TASK, (7, None, fast_trace_task, args, {})), protocol=5)
        self._payload = (memoryview(struct.pack(">I", len(body))), memoryview(body), len(body))
        self._accepted = accepted


class Inner:
    """Stands in for billiard's ``AsynPool``: records the jobs it would put back."""

    def __init__(self) -> None:
        self.put_back: list[Any] = []

    def on_partial_read(self, job: Any, proc: Any) -> None:
        if not job._accepted:
            self.put_back.append(job)


def decoded(job: Job) -> tuple[Any, ...]:
    header, body, size = job._payload
    assert struct.unpack(">I", bytes(header))[0] == size == len(bytes(body))
    kind, call = pickle.loads(bytes(body))
    assert kind == TASK
    return tuple(call)


def test_a_job_whose_child_died_before_accepting_it_goes_on_marked_redelivered() -> None:
    inner = Inner()
    assert mark_put_back_jobs(SimpleNamespace(_pool=inner))
    job = Job("put-back-1")
    inner.on_partial_read(job, SimpleNamespace(pid=123))
    assert inner.put_back == [job]
    job_id, _, trace, args, _ = decoded(job)
    assert (job_id, trace) == (7, fast_trace_task)
    assert args[2]["delivery_info"] == {"routing_key": "q", "redelivered": True}
    assert args[:2] == ("demo.task", "put-back-1") and args[3] == b"[[], {}, {}]"


def test_an_accepted_job_is_left_as_it_was() -> None:
    inner = Inner()
    mark_put_back_jobs(SimpleNamespace(_pool=inner))
    job = Job("accepted-1", accepted=True)
    before = bytes(job._payload[1])
    inner.on_partial_read(job, SimpleNamespace(pid=123))
    assert bytes(job._payload[1]) == before and inner.put_back == []


def test_the_pool_is_wrapped_once_and_pools_without_children_not_at_all() -> None:
    pool = SimpleNamespace(_pool=Inner())
    assert mark_put_back_jobs(pool)
    assert not mark_put_back_jobs(pool)
    assert not mark_put_back_jobs(SimpleNamespace())  # solo / threads: no child processes


def test_a_payload_that_is_no_celery_call_is_not_touched() -> None:
    body = pickle.dumps((TASK, (1, None, len, ([1, 2],), {})))
    job = SimpleNamespace(_payload=(b"", memoryview(body), len(body)))
    assert mark_came_back(job) is None
    assert bytes(job._payload[1]) == body
