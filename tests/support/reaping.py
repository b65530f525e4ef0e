"""The in-process app and reaper of the reaper and node-restore tests (no worker node runs).

``reaper_app`` builds an app whose broker (snakepit's Redis transport, as in a
worker), result backend and store live under the test's key prefix
(``chaos_conf``), with no-op crash-barrier tasks
of the given options, and deletes every key of the test afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from celery import Celery

from snakepit_celery.celery.install import use_redis_transport
from snakepit_celery.celery.task import snakepit_task
from tests.support.chaos import chaos_conf

#: The crash barrier of the in-process tests.
BARRIER: dict[str, Any] = {"enabled": True, "max_restarts": 2, "taint_duration": 1.0}
#: Heartbeat TTL (s) of the dead nodes the tests make up.
SHORT_TTL = 0.2


def noop(work: float = 0.0) -> None:
    """Body of the test tasks (never run here: only their options matter)."""


def reaper_app(
    redis_url: str, key_prefix: str, tasks: Mapping[str, Mapping[str, Any]]
) -> Iterator[Celery]:
    """Generator behind an ``app`` fixture: ``tasks`` maps task names to snakepit options."""
    app = Celery("reaper_test", set_as_current=False)
    app.conf.update(chaos_conf(redis_url, key_prefix, BARRIER))
    use_redis_transport(app)  # as install() does in a worker
    for name, options in tasks.items():
        snakepit_task(app=app, name=name, shared=False, **options)(noop)
    yield app
    client = app.backend.client
    keys = list(client.scan_iter(match=f"{key_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    app.close()
