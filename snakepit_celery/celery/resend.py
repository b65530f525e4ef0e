"""A message the crash-ledger gate sends again goes out from the pool parent, with the ack.

The gate sends a task's message again for later in two cases: a copy of a
run that still lives (checked again after a while) and a store that does not
answer (a retry, its crashes in the header). Published from the pool child
while the pool parent acknowledges the old message, a node that died
between the two would leave both: two copies of the task, each counting its
own crashes (so more than ``max_restarts + 1`` runs while the store is
down), or two runs at once. So the child raises :class:`SendAgain` (the copy
is dropped, no state is written) or :class:`RetryAgain` (Celery stores
``RETRY`` in the child, as for ``Task.retry``) carrying the new message's
signature, and ``SnakepitRequest`` publishes it in the parent together with
the old message's acknowledgement: on snakepit's Redis transport in one
transaction (``transport.redis.publish_with_ack``); on other brokers right
before it, as Celery's own retry does, the new message marked a copy
(``headers.HEADER_COPY``: it waits for the store rather than run on its
header beside the old one, should that come back). A task run outside such a request
(eagerly, or with a request class of its own) publishes in place, as before.
"""

from __future__ import annotations

from typing import Any, NoReturn

from celery.exceptions import Ignore, Retry
from kombu.utils.imports import symbol_by_name

__all__ = ["SENDS_AGAIN", "RetryAgain", "SendAgain", "retry_again", "send_again"]

#: Attribute (True) of a request class that publishes these messages in the pool parent.
SENDS_AGAIN = "snakepit_sends_again"


class SendAgain(Ignore):  # type: ignore[misc]
    """Drop this delivery; the pool parent publishes ``signature`` with its acknowledgement."""

    def __init__(self, signature: dict[str, Any], when: float) -> None:
        super().__init__(f"sent again in {when:.1f}s")
        self.signature = dict(signature)
        self.when = when

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signature, self.when))


class RetryAgain(Retry):  # type: ignore[misc]
    """Celery's ``Retry``, whose new message the pool parent publishes with the acknowledgement."""

    def __init__(self, signature: dict[str, Any], exc: BaseException | None, when: float) -> None:
        super().__init__(exc=exc, when=when)
        self.signature = dict(signature)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signature, self.exc, self.when))


def _parent_sends(task: Any, request: Any) -> bool:
    """True when a ``SnakepitRequest`` in a worker handles this run's outcome."""
    if request.is_eager or request.called_directly:
        return False
    try:
        request_class = symbol_by_name(getattr(task, "Request", None))  # type: ignore[no-untyped-call]
    except (ImportError, AttributeError, ValueError):
        return False
    return bool(getattr(request_class, SENDS_AGAIN, False))


def send_again(task: Any, request: Any, countdown: float, headers: dict[str, Any]) -> NoReturn:
    """Drop this delivery of ``request``; its task's message is sent again in ``countdown`` s."""
    signature = task.signature_from_request(request, countdown=countdown, headers=headers)
    if _parent_sends(task, request):
        raise SendAgain(signature, countdown)
    signature.apply_async()
    raise Ignore()


def retry_again(
    task: Any, request: Any, exc: BaseException, countdown: float, headers: dict[str, Any]
) -> NoReturn:
    """Retry ``request``'s task in ``countdown`` s, spending no attempt of its retry policy."""
    if not _parent_sends(task, request):
        raise task.retry(
            exc=exc,
            countdown=countdown,
            max_retries=(request.retries or 0) + 1,
            headers=headers,
        )
    signature = task.signature_from_request(
        request, countdown=countdown, retries=(request.retries or 0) + 1, headers=headers
    )
    raise RetryAgain(signature, exc, countdown)
