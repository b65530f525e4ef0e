"""The app of the observability tests (Flower, Prometheus, RabbitMQ events).

``celery -A tests.apps.observe_app worker|flower``: the worker test app
(``tests/worker_helpers.make_app``, from env ``WORKER_APP_REDIS_URL`` /
``WORKER_APP_KEY_PREFIX``) plus snakepit tasks whose stories are known: one
that runs until released, one that fails once and is retried, one behind a
breaker, one that fails for good, one that segfaults once. Env
``OBSERVE_BROKER_URL`` puts the broker elsewhere (RabbitMQ), with the default
queue ``OBSERVE_DEFAULT_QUEUE``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery import Celery

from snakepit_celery import RetryPolicy
from snakepit_celery.celery.task import snakepit_task
from tests.support.fleet import make_app

#: The breaker of ``observe.guarded`` (the tests open it from outside).
GATE = "observe-gate"
#: The crash barrier of the segfaulting tasks: crashes go through snakepit's crash path.
BARRIER = {"enabled": True, "max_restarts": 2, "backoff": [0.1]}


def add_tasks(app: Celery) -> Celery:
    """Declare the observability tasks on ``app`` (the worker's and the test's)."""

    @snakepit_task(app=app, name="observe.hold", shared=False)
    def hold(release: str) -> str:
        """Run until the file ``release`` exists (at most 60 s)."""
        deadline = time.monotonic() + 60
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return "released"

    @snakepit_task(
        app=app,
        name="observe.flaky",
        shared=False,
        retry_policy=RetryPolicy(max_attempts=3, backoff=(3.0,), retriable_errors="all"),
    )
    def flaky(marker: str) -> str:
        """Fail the first time (``marker`` does not exist yet), then succeed."""
        path = Path(marker)
        if not path.exists():
            path.write_text("failed once")
            raise ConnectionError("first attempt fails")
        return "second attempt"

    @snakepit_task(app=app, name="observe.guarded", shared=False, breaker=GATE)
    def guarded() -> str:
        """Behind the breaker ``GATE``."""
        return "passed"

    @snakepit_task(app=app, name="observe.ok", shared=False)
    def ok() -> str:
        return "ok"

    @snakepit_task(app=app, name="observe.fail", shared=False)
    def fail() -> None:
        raise ValueError("fails for good")

    @snakepit_task(
        app=app,
        name="observe.segfault_once",
        shared=False,
        idempotent=True,
        crash_barrier=BARRIER,
        device=["cuda", "cpu"],
    )
    def segfault_once(marker: str) -> str:
        """Kill its own process the first time (``marker`` does not exist yet), then succeed."""
        path = Path(marker)
        if not path.exists():
            path.write_text("crashed once")
            os.kill(os.getpid(), signal.SIGSEGV)
        return "survived"

    @snakepit_task(app=app, name="observe.segfault", shared=False, crash_barrier=BARRIER)
    def segfault() -> Any:
        """Kill its own process every time (not idempotent: it ends FAILURE)."""
        os.kill(os.getpid(), signal.SIGSEGV)

    return app


app = add_tasks(
    make_app(
        os.environ.get("WORKER_APP_REDIS_URL", "redis://127.0.0.1:6379/0"),
        os.environ.get("WORKER_APP_KEY_PREFIX", "observe-app"),
    )
)
# The result backend keeps the node, queue and retries (``celery snakepit task`` shows them).
app.conf.result_extended = True
if os.environ.get("OBSERVE_BROKER_URL"):
    app.conf.broker_url = os.environ["OBSERVE_BROKER_URL"]
    app.conf.broker_transport_options = {}
    app.conf.task_default_queue = os.environ["OBSERVE_DEFAULT_QUEUE"]
