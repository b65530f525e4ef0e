"""``VisibilityKeeper``: the heartbeat keeps the broker from restoring messages this node holds.

A real kombu Redis channel (its ``unacked_index`` under the test's key prefix)
and requests placed in Celery's worker state, as the heartbeat thread sees them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from celery.worker import state as worker_state
from kombu import Connection

from snakepit_celery.celery.bootsteps.visibility import VisibilityKeeper
from snakepit_celery.celery.install import install
from snakepit_celery.celery.task import snakepit_task

OLD = 1000.0  # a delivery time long past any visibility timeout


@dataclass(eq=False)
class FakeRequest:
    """What the keeper reads of a Celery request."""

    id: str
    delivery_tag: str
    acknowledged: bool = False
    hostname: str = "node@test"
    worker_pid: int | None = None
    task: Any = None
    message: Any = field(init=False)

    def __post_init__(self) -> None:
        self.message = SimpleNamespace(delivery_tag=self.delivery_tag)


@pytest.fixture
def channel(redis_url: str, key_prefix: str) -> Iterator[Any]:
    options = {"global_keyprefix": f"{key_prefix}:", "visibility_timeout": 5.0}
    with Connection(redis_url, transport_options=options) as connection:
        yield connection.default_channel


@pytest.fixture
def held() -> Iterator[list[FakeRequest]]:
    requests: list[FakeRequest] = []
    yield requests
    for request in requests:
        worker_state.reserved_requests.discard(request)


def keeper_for(channel: Any) -> VisibilityKeeper:
    """A keeper for a consumer whose task channel is ``channel``, beating every 2 s."""
    return VisibilityKeeper(SimpleNamespace(task_consumer=SimpleNamespace(channel=channel)), 2.0)


def score(client: redis.Redis, key: str, tag: str) -> float | None:
    return client.zscore(key, tag)


def test_messages_held_by_the_node_get_a_fresh_delivery_time(
    channel: Any, redis_url: str, key_prefix: str, held: list[FakeRequest]
) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"{key_prefix}:{channel.unacked_index_key}"
    client.zadd(key, {"held": OLD, "not-held": OLD})
    held.append(FakeRequest("t1", "held"))
    worker_state.reserved_requests.add(held[0])
    keeper_for(channel).keep()
    assert (score(client, key, "held") or 0) > time.time() - 5
    assert score(client, key, "not-held") == OLD


def test_an_acknowledged_message_is_not_brought_back(
    channel: Any, redis_url: str, key_prefix: str, held: list[FakeRequest]
) -> None:
    client = redis.Redis.from_url(redis_url)
    key = f"{key_prefix}:{channel.unacked_index_key}"
    held.append(FakeRequest("t1", "gone"))
    worker_state.reserved_requests.add(held[0])
    keeper_for(channel).keep()
    assert score(client, key, "gone") is None


def test_short_lived_messages_cost_nothing_under_a_long_timeout(
    redis_url: str, key_prefix: str, held: list[FakeRequest]
) -> None:
    options = {"global_keyprefix": f"{key_prefix}:", "visibility_timeout": 3600.0}
    client = redis.Redis.from_url(redis_url)
    with Connection(redis_url, transport_options=options) as connection:
        channel = connection.default_channel
        key = f"{key_prefix}:{channel.unacked_index_key}"
        client.zadd(key, {"young": OLD})
        held.append(FakeRequest("t1", "young"))
        worker_state.reserved_requests.add(held[0])
        keeper = VisibilityKeeper(
            SimpleNamespace(task_consumer=SimpleNamespace(channel=channel)), 2.0
        )
        assert keeper.threshold(3600.0) == pytest.approx(1796.0)
        keeper.keep()
    assert score(client, key, "young") == OLD


def test_without_a_visibility_timeout_running_tasks_hold_a_lease_from_the_first_beat(
    redis_url: str, key_prefix: str, held: list[FakeRequest]
) -> None:
    """AMQP redelivers a message as soon as its consumer's connection drops, even while
    its task runs on: the copy must find the run's lease (``ledger_gate`` then waits)."""
    app = Celery("keeper_amqp", broker="amqp://127.0.0.1:1//", set_as_current=False)
    app.conf.snakepit_store_url = redis_url
    app.conf.snakepit_key_prefix = key_prefix
    app.conf.broker_transport_options = {"visibility_timeout": 4.0}
    app.conf.snakepit_crash_barrier = {"enabled": True}
    install(app)

    @snakepit_task(app=app, name="keeper.long", idempotent=True, shared=False)
    def long() -> None:
        return None

    request = FakeRequest("amqp-1", "1", worker_pid=4321, task=long)
    held.append(request)
    worker_state.active_requests.add(request)
    barrier = long.snakepit_runtime.barrier
    calls: list[dict[str, str]] = []
    hold = barrier.ledger_hold

    def counted(holds: dict[str, str], lease: float) -> dict[str, bool]:
        calls.append(dict(holds))
        return hold(holds, lease)

    barrier.ledger_hold = counted  # type: ignore[method-assign]
    try:
        keeper = VisibilityKeeper(SimpleNamespace(task_consumer=None, app=app), 0.5)
        assert keeper.threshold(4.0) == pytest.approx(1.0)
        keeper.keep()
        entry = barrier.ledger_get("amqp-1")
        assert entry is not None and entry.running_on == "node@test/4321"
        keeper.keep()  # younger than the renewal threshold: nothing more to write
        assert calls == [{"amqp-1": "node@test/4321"}]
        time.sleep(0.6)
        keeper.keep()
        assert len(calls) == 2  # renewed
        worker_state.active_requests.discard(request)
        keeper.keep()
        after = barrier.ledger_get("amqp-1")  # let go: no run holds it (a bare entry reads None)
        assert after is None
    finally:
        worker_state.active_requests.discard(request)
        app.close()
