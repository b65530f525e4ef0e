"""Events from a worker's main process reach a ``Receiver`` on RabbitMQ as on Redis.

Each crash of a prefork child is handled in the worker's main process, which
publishes ``snakepit-worker-crash`` through a pooled producer; a connection
the broker dropped is re-opened and the publish retried, so no event is lost.
Needs RabbitMQ on 127.0.0.1:5672 (skipped with the reason when it does not answer).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from snakepit_celery.testing import wait_until
from snakepit_celery.testing.workers import WorkerNode
from tests.apps.observe_app import add_tasks
from tests.support.events import Capture
from tests.support.fleet import CPU_HARDWARE, ROOT, make_app, write_hardware
from tests.support.rabbitmq import AMQP_URL, require_rabbitmq

NODE = f"rabbit-{uuid.uuid4().hex[:6]}@test"
CRASHES = 4

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(params=["redis", "amqp"])
def rabbit_app(
    request: pytest.FixtureRequest, redis_url: str, key_prefix: str, tmp_path: Path
) -> Iterator[tuple[Celery, WorkerNode]]:
    """A prefork worker (one child) on Redis, or on RabbitMQ when it answers."""
    queue = f"observe-{uuid.uuid4().hex[:8]}"
    app = add_tasks(make_app(redis_url, key_prefix))
    broker: dict[str, str] = {}
    if request.param == "amqp":
        require_rabbitmq()
        app.conf.broker_url = AMQP_URL
        app.conf.broker_transport_options = {}
        app.conf.task_default_queue = queue
        broker = {"OBSERVE_BROKER_URL": AMQP_URL, "OBSERVE_DEFAULT_QUEUE": queue}
    node = WorkerNode(
        "tests.apps.observe_app",
        NODE,
        concurrency=1,
        env={
            "WORKER_APP_REDIS_URL": redis_url,
            "WORKER_APP_KEY_PREFIX": key_prefix,
            **broker,
            "PYTHONPATH": str(ROOT),
            "SNAKEPIT_HARDWARE": str(write_hardware(tmp_path / "hw.json", CPU_HARDWARE)),
        },
        cwd=str(ROOT),
        pool="prefork",
        flags=("--without-mingle", "--without-gossip"),
        log_path=tmp_path / "worker.log",
    )
    try:
        yield app, node.start().wait_ready(60)
    finally:
        node.stop()
        app.close()


def test_every_crash_event_of_the_main_process_arrives(
    rabbit_app: tuple[Celery, WorkerNode],
) -> None:
    app, node = rabbit_app
    with Capture(app, keep=lambda event: event.get("hostname") == NODE) as receiver:
        task_ids = []
        for _ in range(CRASHES):
            result = app.tasks["observe.segfault"].delay()
            with contextlib.suppress(Exception):
                result.get(timeout=60)
            assert result.state == "FAILURE", node.logs()[-3000:]
            task_ids.append(result.id)
        crashes = wait_until(
            lambda: (
                (found := receiver.of_type("snakepit-worker-crash"))
                and len(found) >= CRASHES
                and found
            ),
            30,
            what=f"{CRASHES} crash events\n{node.logs()[-4000:]}",
        )
    assert len(crashes) == CRASHES
    assert sorted(e["uuid"] for e in crashes) == sorted(task_ids)
    assert {e["pid"] for e in crashes} == {node.pid}
    tainted = receiver.of_type("snakepit-worker-tainted")
    assert [e["uuid"] for e in tainted] == task_ids[:1]  # the first crash tainted the node
    assert "could not publish" not in node.logs()
