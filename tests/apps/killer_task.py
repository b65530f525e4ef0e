"""A task whose every message makes the worker's main process exit (``imports`` of a test app).

Its Celery strategy raises ``SystemExit(3)`` as the message arrives, before
any request exists: the message guard lets it through (it is no error of the
message's form), and Celery stops the node with that error, as it does for
a message that breaks its own code. The crash barrier's backstop counts the
deaths of the nodes that held it (``celery.bootsteps.giveback``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from snakepit_celery import snakepit_task

#: The exit code of a node the message killed.
EXIT_CODE = 3


def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Callable[..., None]:
    """Celery task strategy: every message of the task stops the worker."""

    def handle(message: Any, *args: Any, **kwargs: Any) -> None:
        raise SystemExit(EXIT_CODE)

    return handle


@snakepit_task(
    name="killer.main_process",
    bind=True,
    idempotent=True,
    Strategy="tests.apps.killer_task:strategy",
)
def main_process(self: Any) -> None:
    """Never runs: its message stops the worker's main process first."""
