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
from celery.worker import state as worker_state
from kombu import Connection

from snakepit_celery.celery.bootsteps.visibility import VisibilityKeeper

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


def test_other_transports_are_left_alone() -> None:
    keeper = VisibilityKeeper(SimpleNamespace(task_consumer=None), 2.0)
    keeper.keep()
