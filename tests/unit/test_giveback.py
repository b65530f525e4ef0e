"""Which shutdowns count a death against the messages a node gives back (``stopping_error``)."""

from __future__ import annotations

import pytest
from celery.exceptions import WorkerShutdown, WorkerTerminate

from snakepit_celery.celery.bootsteps.giveback import stopping_error


def _seen_while_handling(error: BaseException) -> BaseException | None:
    try:
        raise error
    except BaseException:
        return stopping_error()


@pytest.mark.parametrize(
    "error",
    [WorkerShutdown(0), WorkerShutdown(1), WorkerTerminate(1), KeyboardInterrupt(), SystemExit(0)],
    ids=["term", "int", "quit", "ctrl-c", "exit-0"],
)
def test_shutdowns_asked_for_are_no_deaths(error: BaseException) -> None:
    assert _seen_while_handling(error) is None


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), SystemExit(3), MemoryError()], ids=["error", "exit-3", "oom"]
)
def test_a_worker_stopping_with_an_error_dies(error: BaseException) -> None:
    assert _seen_while_handling(error) is error


def test_a_shutdown_outside_any_error_is_no_death() -> None:
    assert stopping_error() is None
