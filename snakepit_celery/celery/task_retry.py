"""What a ``SnakepitTask`` does when its body fails: defer or retry.

``defer`` re-queues a task that met an open circuit breaker after the
breaker's ``retry_after``, without spending an attempt; ``retry_or_give_up``
retries a failed task through Celery's ``retry()`` with the retry policy's
countdown, or ends it with ``RetryExhaustedError``. Both always raise.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from snakepit_celery import signals
from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.celery.headers import HEADER_DEFERRALS, HEADER_FIRST_TRY, MessageHeaders
from snakepit_celery.errors import CircuitOpenError, RetryExhaustedError
from snakepit_celery.policy.retry import RetryPolicy
from snakepit_celery.testing import is_testing

__all__ = [
    "MIN_DEFER_COUNTDOWN",
    "RetryingTask",
    "defer",
    "retry_or_give_up",
]

logger = logging.getLogger(__name__)

#: Shortest countdown of a task re-queued by an open breaker (s).
MIN_DEFER_COUNTDOWN = 0.1


class RetryingTask(Protocol):
    """What deferring and retrying read of a task."""

    name: str

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's ``Task.retry``."""
        ...


def defer(
    task: RetryingTask,
    exc: CircuitOpenError,
    breaker: CircuitBreaker | None,
    request: Any,
    headers: MessageHeaders,
) -> None:
    """Re-queue after ``retry_after`` without spending an attempt (always raises Retry).

    A saturated half-open breaker answers with its probe's lease; waiting
    longer than ``reset_timeout`` for that probe's verdict gains nothing.
    """
    countdown = exc.retry_after
    if breaker is not None and exc.breaker == breaker.name:
        countdown = min(countdown, breaker.reset_timeout)
    countdown = max(countdown, MIN_DEFER_COUNTDOWN)
    retry_headers = {**headers.republished(), HEADER_DEFERRALS: headers.deferrals + 1}
    logger.info(
        "task %s[%s] deferred %.2fs: breaker %s is open",
        task.name,
        request.id,
        countdown,
        exc.breaker,
        extra={"task_id": request.id, "breaker": exc.breaker, "countdown": countdown},
    )
    raise task.retry(
        exc=exc, countdown=countdown, max_retries=headers.retries + 1, headers=retry_headers
    )


def retry_or_give_up(
    task: RetryingTask,
    policy: RetryPolicy,
    exc: Exception,
    attempt: int,
    headers: MessageHeaders,
) -> None:
    """Retry through Celery with the policy's countdown, or raise RetryExhaustedError."""
    if policy.should_retry(attempt):
        delay = 0.0 if is_testing() else policy.backoff_for_attempt(attempt)
        signals.retry_attempt.send(sender=task, attempt=attempt, delay=delay)
        retry_headers = {
            **headers.republished(),
            HEADER_FIRST_TRY: headers.first_try or time.time(),
        }
        raise task.retry(
            exc=exc, countdown=delay, max_retries=headers.retries + 1, headers=retry_headers
        )
    signals.retry_exhausted.send(
        sender=task,
        attempts=attempt,
        total_duration=headers.since_first_try(),
        last_error=exc,
    )
    raise RetryExhaustedError(attempt, exc) from exc
