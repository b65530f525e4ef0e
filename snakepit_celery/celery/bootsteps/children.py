"""Dead pool children noticed within ``CHILD_WATCH_INTERVAL`` (prefork pool).

Celery's prefork parent watches each child's sentinel fd and runs the pool's
maintenance when it becomes readable. The fd closes while the dying child is
still being torn down, a moment before the kernel lets the parent reap it;
when the parent looks in between it finds the child alive, stops watching
the fd, and only its 5 s ``maintain_pool`` timer finds the death (up to
4.96 s measured from the kill). ``PoolChildWatch`` asks every child whether
it exited (``waitpid(WNOHANG)``: one system call per child) every
``CHILD_WATCH_INTERVAL`` seconds on the event loop, and runs the pool's
maintenance as soon as one did: the task it ran fails (``WorkerLostError``,
then the crash barrier) and a fresh child replaces it. It also has the pool
mark a job it sends to another child after its first child died
(``putback.mark_put_back_jobs``), so that run is not a silent second one.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from snakepit_celery.celery.bootsteps.putback import mark_put_back_jobs

__all__ = [
    "CHILD_WATCH_INTERVAL",
    "PoolChildWatch",
    "maintain_if_child_died",
    "pool_pids",
    "pool_processes",
]

logger = logging.getLogger(__name__)

#: Seconds between two looks at the pool's children.
CHILD_WATCH_INTERVAL = 0.1


def pool_processes(pool: Any) -> list[Any]:
    """The child processes of Celery's prefork ``TaskPool`` (empty for solo, threads...)."""
    children = getattr(getattr(pool, "_pool", None), "_pool", None)
    return list(children) if isinstance(children, list) else []


def pool_pids(pool: Any) -> list[int]:
    """The pids of a prefork pool's children (none for other pools)."""
    return [int(child.pid) for child in pool_processes(pool) if child.pid]


def maintain_if_child_died(pool: Any) -> bool:
    """Run the prefork pool's maintenance when one of its children exited; True when it did.

    ``pool`` is Celery's ``TaskPool``; other pools (solo, threads) have no
    child processes and are left alone.
    """
    if all(child.exitcode is None for child in pool_processes(pool)):
        return False
    pool._pool.maintain_pool()
    return True


class PoolChildWatch(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer bootstep: look for dead pool children every ``CHILD_WATCH_INTERVAL`` seconds."""

    name = "snakepit.children"
    label = "snakepit child watch"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        """Start looking (on the consumer's event-loop timer); mark put-back jobs."""
        mark_put_back_jobs(c.pool)
        self.tref = c.timer.call_repeatedly(CHILD_WATCH_INTERVAL, self._watch, (c,), priority=10)

    def _watch(self, c: Any) -> None:
        try:
            if maintain_if_child_died(c.pool):
                logger.debug("snakepit: a pool child exited; pool maintained")
        except Exception:
            logger.exception("snakepit: could not look after the pool's children")

    def stop(self, c: Any) -> None:
        """Stop looking."""
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        """Stop looking (consumer shutdown)."""
        self.stop(c)
