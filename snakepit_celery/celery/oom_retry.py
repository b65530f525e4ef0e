"""Is this send a task re-sending itself after CUDA/HIP ran out of memory? On which GPU?

A task retried through Celery's ``retry()`` is re-published from inside the
``except`` block that caught its error, in the process that ran it, with the
same task id and the delivery's routing key. The router asks
:func:`oom_retry_gpu` so such a retry goes to another GPU with more free
memory instead of back to the queue it came from (``celery.router``).
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

from snakepit_celery.errors import error_kind

__all__ = ["oom_retry_gpu", "unpin_delivery"]


def oom_retry_gpu(task: Any) -> str | None:
    """The UUID of the GPU ``task`` just ran out of memory on, when this send is its retry.

    True only while ``task`` runs in this thread (its request is current) and
    a ``gpu_oom`` error is being handled: its ``retry()`` re-sending it.
    """
    exc = sys.exc_info()[1]
    if exc is None or task is None or error_kind(exc) != "gpu_oom":
        return None
    request = getattr(task, "request", None)
    if request is None or getattr(request, "id", None) is None:
        return None
    try:
        device = task.resolved_device
    except Exception:
        return None
    uuid = getattr(device, "uuid", None)
    return uuid if isinstance(uuid, str) and uuid else None


def unpin_delivery(options: MutableMapping[str, Any]) -> None:
    """Drop the old delivery's queue, exchange and routing key from a retry's options.

    Celery merges the send's options over the router's route, so the retry
    would otherwise go back to the queue it came from.
    """
    options.pop("queue", None)
    options.pop("exchange", None)
    options.pop("routing_key", None)
