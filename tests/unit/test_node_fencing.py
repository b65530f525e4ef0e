"""Incarnation fencing: a node declared dead cannot come back as the same incarnation.

Once ``Store.node_reap`` has claimed an incarnation (its heartbeat expired, its
tasks moved on), ``node_register`` refuses that incarnation: it returns False
and writes nothing, so a node that was only paused (GC, slow disk, a frozen VM)
learns at its next heartbeat that it was declared dead. A fresh incarnation of
the same node name registers as usual. Every test runs on ``MemoryStore`` and
``RedisStore``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from snakepit_celery.store import MemoryStore, RedisStore, Store

SHORT = 0.2
PAST_SHORT = 0.3


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(key_prefix=key_prefix)
        return
    redis_store = RedisStore(request.getfixturevalue("redis_url"), key_prefix=key_prefix)
    yield redis_store
    keys = list(redis_store.client.scan_iter(match=f"{key_prefix}:*", count=1000))
    if keys:
        redis_store.client.delete(*keys)
    redis_store.close()


def test_live_incarnation_registers(store: Store) -> None:
    assert store.node_register("n1", {"incarnation": "a"}, ttl=30.0) is True
    assert store.node_register("n1", {"incarnation": "a"}, ttl=30.0) is True


def test_reaped_incarnation_is_refused_and_not_listed(store: Store) -> None:
    store.node_register("n1", {"incarnation": "a"}, ttl=SHORT)
    time.sleep(PAST_SHORT)
    assert [r["incarnation"] for r in store.node_reap(grace=0.0)] == ["a"]
    assert store.node_register("n1", {"incarnation": "a"}, ttl=30.0) is False
    assert store.node_list() == []
    assert store.node_reap(grace=0.0) == []


def test_new_incarnation_of_a_reaped_node_registers(store: Store) -> None:
    store.node_register("n1", {"incarnation": "a"}, ttl=SHORT)
    time.sleep(PAST_SHORT)
    store.node_reap(grace=0.0)
    assert store.node_register("n1", {"incarnation": "b"}, ttl=30.0) is True
    assert [r["node"] for r in store.node_list()] == ["n1"]


def test_expired_but_unreaped_incarnation_may_still_beat(store: Store) -> None:
    """A late heartbeat before any reaper claimed the node is no death."""
    store.node_register("n1", {"incarnation": "a"}, ttl=SHORT)
    time.sleep(PAST_SHORT)
    assert store.node_register("n1", {"incarnation": "a"}, ttl=30.0) is True
    assert store.node_reap(grace=0.0) == []
