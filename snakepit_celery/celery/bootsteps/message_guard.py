"""The message guard: a message that would kill the worker's main process is quarantined.

Celery 5.x builds a request from each message in the worker's main process.
A few malformed messages make that code raise something Celery does not
expect there (a body that is not ``[args, kwargs, embed]``, a ``timelimit``
header that is not two numbers, no ``id`` header); the worker then exits with
"Unrecoverable error" (or its consumer restarts in a loop), the message goes
back to the broker, and kills every node that takes it.

Counting those deaths would stop such a message only after ``max_restarts``
dead nodes; this guard stops it before the first. It wraps every task
strategy of the consumer (after ``Tasks`` builds them, on every consumer
start): pure checks of the headers and the already-decoded body first, then
any unexpected exception of Celery's own strategy is caught. Either way the
message is quarantined (``snakepit_celery.quarantine``; by task id, or by a
digest of the message without one), its task ends FAILURE when it has an
id, and Celery rejects it (``InvalidTaskError``): it leaves the queue and
the node goes on consuming. The checks cost a few ``isinstance`` calls per
message and no store round trip.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from celery import bootsteps
from celery.exceptions import InvalidTaskError
from kombu.exceptions import ContentDisallowed, DecodeError

from snakepit_celery.celery.poison import quarantine_delivered
from snakepit_celery.quarantine import REASON_MALFORMED

__all__ = ["MessageGuardStep", "guard_strategies", "message_problem"]

logger = logging.getLogger(__name__)

#: Errors Celery's consumer handles itself (it rejects the message and goes on).
_HANDLED_BY_CELERY = (InvalidTaskError, ContentDisallowed, DecodeError)


class MessageGuardStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: wrap each task strategy in the message guard (every start)."""

    name = "snakepit.message_guard"
    label = "snakepit message guard"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        """Guard the strategies ``Tasks`` just built."""
        guard_strategies(c)


def guard_strategies(c: Any) -> None:
    """Wrap each of the consumer's task strategies in the guard (once each)."""
    for name, strategy in list(c.strategies.items()):
        if not getattr(strategy, "snakepit_guarded", False):
            c.strategies[name] = _guarded(c, strategy)


def message_problem(message: Any) -> str | None:
    """Why Celery's main process would fail on this task message, or None.

    Only protocol-2 messages (with a ``task`` header) are checked; an
    undecodable body is left to Celery, which rejects it itself.
    """
    headers = getattr(message, "headers", None)
    if not isinstance(headers, Mapping) or "task" not in headers:
        return None
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        return f"no usable 'id' header: {task_id!r}"
    if not _valid_timelimit(headers.get("timelimit")):
        return f"'timelimit' header is not two numbers >= 0: {headers.get('timelimit')!r}"
    try:
        body = message.decode()
    except Exception:
        return None
    if not _valid_body(body):
        return f"body is not [args, kwargs, embed]: {_short(body)}"
    return None


def _valid_timelimit(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, list | tuple) or len(value) != 2:
        return False
    return all(
        limit is None
        or (
            isinstance(limit, int | float)
            and not isinstance(limit, bool)
            and math.isfinite(limit)
            and limit >= 0
        )
        for limit in value
    )


def _valid_body(body: Any) -> bool:
    if not isinstance(body, list | tuple) or len(body) != 3:
        return False
    args, kwargs, embed = body
    return (
        isinstance(args, list | tuple)
        and isinstance(kwargs, Mapping)
        and (embed is None or isinstance(embed, Mapping))
    )


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _guarded(c: Any, strategy: Callable[..., Any]) -> Callable[..., Any]:
    connection_errors = tuple(getattr(c, "connection_errors", ()) or ())

    @functools.wraps(strategy)
    def guarded(message: Any, *args: Any, **kwargs: Any) -> Any:
        problem = message_problem(message)
        if problem is None:
            try:
                return strategy(message, *args, **kwargs)
            except _HANDLED_BY_CELERY:
                raise
            except Exception as exc:
                if connection_errors and isinstance(exc, connection_errors):
                    raise
                problem = f"Celery failed on the message: {type(exc).__name__}: {exc}"
        failure = InvalidTaskError(problem)
        quarantine_delivered(
            c.app, str(c.hostname), message, reason=REASON_MALFORMED, failure=failure
        )
        raise failure

    guarded.snakepit_guarded = True  # type: ignore[attr-defined]
    return guarded
