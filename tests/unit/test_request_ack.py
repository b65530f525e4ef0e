"""Which acknowledgements ride on the next pop (``SnakepitRequest.acknowledge``).

Real Redis, a real message through snakepit's transport: a crash-barrier task
whose copy the gate would drop (late-acked, its state stored) lets its
acknowledgement wait for the next pop; any other is acknowledged as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from snakepit_celery.celery.install import install
from snakepit_celery.celery.request import SnakepitRequest
from snakepit_celery.celery.task import snakepit_task
from snakepit_celery.transport.redis import Channel


@pytest.fixture
def app(redis_url: str, key_prefix: str) -> Iterator[Celery]:
    app = Celery("ack_ride_test", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.broker_transport_options = {"global_keyprefix": f"{key_prefix}:"}
    app.conf.snakepit_key_prefix = key_prefix
    app.conf.snakepit_crash_barrier = {"enabled": True}
    install(app)
    snakepit_task(app=app, name="ride.idem", idempotent=True, shared=False)(_noop)
    snakepit_task(app=app, name="ride.ignored", idempotent=True, ignore_result=True, shared=False)(
        _noop
    )
    snakepit_task(app=app, name="ride.early", acks_late=False, shared=False)(_noop)
    yield app
    app.close()


def _noop() -> None:
    """Never run: only the tasks' options matter."""


def _delivered(app: Celery, conn: Connection, name: str) -> Any:
    """A message of task ``name``, delivered through the app's broker transport."""
    app.send_task(name, queue="ride")
    return conn.SimpleQueue("ride").get(timeout=5)


@pytest.mark.parametrize(
    ("name", "rides"),
    [("ride.idem", True), ("ride.ignored", False), ("ride.early", False)],
    ids=["late-acked-barrier-task", "ignore_result", "acked-early"],
)
def test_an_ack_rides_on_the_next_pop_only_when_the_gate_would_drop_a_copy(
    app: Celery, name: str, rides: bool
) -> None:
    with app.connection_for_read() as conn:
        message = _delivered(app, conn, name)
        assert isinstance(message.channel, Channel)  # snakepit's Redis transport
        request = SnakepitRequest(message, app=app, task=app.tasks[name])
        request.acknowledge()
        assert (str(message.delivery_tag) in message.channel.qos.deferrable) is rides
        message.channel.qos.deferrable.clear()
