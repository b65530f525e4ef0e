"""A job the prefork pool sends to another child after its first child died reads "came back".

Celery's prefork parent writes each job to a child, and the child answers
that it accepted the job before it runs the task. When the child dies before
the parent has read that answer (a SIGKILL, the OOM killer: the answer may be
in the pipe, or the task may have run for a while), billiard's pool puts the
job back and writes it to another child (``AsynPool.on_partial_read``). No
crash is reported anywhere, so without this a task that is not idempotent
could run twice, the first run lost with its child.

``mark_put_back_jobs`` wraps the pool's ``on_partial_read`` so that such a
job's request reads ``redelivered`` (in its ``delivery_info``, as kombu marks
a restored message) before it is written again: in the next child the crash
ledger gate counts the lost run as a crash, so an idempotent task runs again
and one that is not ends FAILURE ``WorkerCrashedError``, exactly as a message
lost with a crash. A job whose child died before it was written to it is put
back unmarked by billiard's other path: it never ran. Like a restored
message, a job written but never read is counted too; ``start_marks`` tasks
are told apart exactly by their ledger.
"""

from __future__ import annotations

import logging
import pickle
import struct
from typing import Any

__all__ = ["mark_came_back", "mark_put_back_jobs"]

logger = logging.getLogger(__name__)

#: Index of the request dict in the arguments Celery gives the pool's trace function
#: (type, task id, request dict, body, content type, content encoding).
_REQUEST_DICT = 2


def mark_came_back(job: Any) -> str | None:
    """Rewrite ``job``'s pool payload so its request reads ``redelivered``; its task id.

    None (the payload left as it was) for a job that is not a Celery task call.
    """
    _, body, _ = job._payload
    kind, (job_id, index, trace, args, kwargs) = pickle.loads(bytes(body))
    if not isinstance(args, tuple) or len(args) <= _REQUEST_DICT:
        return None
    request = args[_REQUEST_DICT]
    if not isinstance(request, dict):
        return None
    delivery_info = dict(request.get("delivery_info") or {})
    delivery_info["redelivered"] = True
    marked = (*args[:_REQUEST_DICT], {**request, "delivery_info": delivery_info})
    new_args = marked + args[_REQUEST_DICT + 1 :]
    payload = pickle.dumps(
        (kind, (job_id, index, trace, new_args, kwargs)), pickle.HIGHEST_PROTOCOL
    )
    job._payload = memoryview(struct.pack(">I", len(payload))), memoryview(payload), len(payload)
    return str(request.get("id") or args[1])


def mark_put_back_jobs(pool: Any) -> bool:
    """Wrap the prefork pool's ``on_partial_read`` (``pool``: Celery's ``TaskPool``).

    False, changing nothing, for a pool without child processes (solo, threads).
    """
    inner: Any = getattr(pool, "_pool", None)
    original = getattr(inner, "on_partial_read", None)
    if original is None or getattr(original, "snakepit_marks", False):
        return False

    def on_partial_read(job: Any, proc: Any) -> Any:
        if not job._accepted:
            try:
                task_id = mark_came_back(job)
            except Exception:
                logger.exception("snakepit: could not mark a job put back by the pool")
            else:
                if task_id is not None:
                    logger.warning(
                        "task %s: its pool child died before it reported the task accepted; "
                        "sent to another child as a delivery that came back",
                        task_id,
                        extra={"task_id": task_id, "pid": getattr(proc, "pid", None)},
                    )
        return original(job, proc)

    on_partial_read.snakepit_marks = True  # type: ignore[attr-defined]
    inner.on_partial_read = on_partial_read
    return True
