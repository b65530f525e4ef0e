"""``Store.node_reap``: the last record of a dead node goes to exactly one live worker.

A node's record leaves ``node_list`` when its heartbeat expires, but the last
record of each incarnation (one run of a node) stays hidden for
``NODE_RETENTION`` seconds, so the orphan reaper of any live worker can claim
it and give the tasks it had in flight a final state. Every test runs on
``MemoryStore`` and ``RedisStore`` (real Redis, a key prefix unique to the test).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import pytest
import redis

import snakepit_celery.store.memory_nodes as memory_module
import snakepit_celery.store.redis_nodes as redis_module
from snakepit_celery.store import MemoryStore, RedisStore, Store
from snakepit_celery.store.base import DEFAULT_GROUP, NODE_RETENTION

SHORT = 0.2  # a heartbeat TTL short enough to wait out in a test
PAST_SHORT = 0.3
IN_FLIGHT = {"t-1": {"name": "app.once", "early_ack": True, "crash_barrier": True}}


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, key_prefix: str) -> Iterator[Store]:
    """A fresh store of each backend."""
    if request.param == "memory":
        yield MemoryStore(key_prefix=key_prefix)
        return
    redis_store = RedisStore(request.getfixturevalue("redis_url"), key_prefix=key_prefix)
    yield redis_store
    drop_keys(redis_store)
    redis_store.close()


def drop_keys(store: RedisStore) -> None:
    """Delete the test's keys (the dead records would otherwise stay for NODE_RETENTION)."""
    keys = list(store.client.scan_iter(match=f"{store.key_prefix}:*", count=1000))
    if keys:
        store.client.delete(*keys)


def on_both_stores(monkeypatch: pytest.MonkeyPatch, name: str, value: float) -> None:
    """Set the store module constant ``name`` for both ``MemoryStore`` and ``RedisStore``."""
    monkeypatch.setattr(memory_module, name, value)
    monkeypatch.setattr(redis_module, name, value)


def register(store: Store, node: str, incarnation: str, ttl: float = SHORT, **data: Any) -> None:
    store.node_register(node, {"incarnation": incarnation, **data}, ttl=ttl)


def reaped(store: Store, grace: float = 0.0) -> list[tuple[str, str]]:
    return [(r["node"], r["incarnation"]) for r in store.node_reap(grace=grace)]


def test_dead_node_leaves_node_list_but_its_last_record_is_reaped(store: Store) -> None:
    register(store, "n1", "a", in_flight_tasks={"t-0": {}})
    register(store, "n1", "a", in_flight_tasks=IN_FLIGHT)
    time.sleep(PAST_SHORT)
    assert store.node_list() == []
    [record] = store.node_reap(grace=0.0)
    assert (record["node"], record["incarnation"]) == ("n1", "a")
    assert record["in_flight_tasks"] == IN_FLIGHT
    assert record["heartbeat_age"] >= SHORT


def test_a_dead_node_is_reaped_only_once(store: Store) -> None:
    register(store, "n1", "a")
    time.sleep(PAST_SHORT)
    assert reaped(store) == [("n1", "a")]
    assert reaped(store) == []


def test_a_claim_not_given_back_as_done_is_handed_out_again_after_the_reclaim_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its reaper died, or the store went down before the claim's reply arrived: not lost."""
    on_both_stores(monkeypatch, "REAP_RECLAIM", 0.3)
    register(store, "n1", "a", in_flight_tasks=IN_FLIGHT)
    time.sleep(PAST_SHORT)
    assert reaped(store) == [("n1", "a")]
    assert reaped(store) == []  # claimed: hidden meanwhile
    time.sleep(0.4)
    [again] = store.node_reap(grace=0.0)
    assert (again["node"], again["incarnation"], again["in_flight_tasks"]) == ("n1", "a", IN_FLIGHT)
    assert store.node_reap(grace=0.0, done=[("n1", "a")]) == []
    time.sleep(0.4)
    assert reaped(store) == []  # done: dropped for good
    assert store.node_register("n1", {"incarnation": "a"}, ttl=SHORT) is False  # still fenced


def test_a_silence_of_the_whole_group_counts_against_no_node(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store was down (no node could beat): the first write after it forgives the gap.

    Else the first node back would reap every other live node (a chaos run
    fenced 32 live nodes so, one per store restart).
    """
    on_both_stores(monkeypatch, "STORE_SILENCE", 0.3)
    register(store, "n1", "a", ttl=0.5)
    time.sleep(0.8)  # n1's record would have expired meanwhile
    register(store, "n2", "b", ttl=30.0)  # the first write after the silence
    assert [r["node"] for r in store.node_list()] == ["n1", "n2"]
    assert reaped(store) == []
    for _ in range(3):  # n2 beats on; n1 never again: dead once its remaining TTL ran out
        time.sleep(0.2)
        register(store, "n2", "b", ttl=30.0)
    assert reaped(store) == [("n1", "a")]


def test_a_node_that_stops_beating_while_others_beat_is_reaped_after_its_ttl(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_both_stores(monkeypatch, "STORE_SILENCE", 0.3)
    register(store, "n1", "a", ttl=0.5)
    for _ in range(4):
        time.sleep(0.2)
        register(store, "n2", "b", ttl=30.0)
    assert reaped(store) == [("n1", "a")]


def test_live_node_is_not_reaped(store: Store) -> None:
    register(store, "n1", "a", ttl=30.0)
    assert reaped(store) == []
    assert [n["node"] for n in store.node_list()] == ["n1"]


def test_node_within_grace_is_not_reaped_yet(store: Store) -> None:
    register(store, "n1", "a")
    time.sleep(PAST_SHORT)
    assert reaped(store, grace=30.0) == []
    assert reaped(store, grace=0.0) == [("n1", "a")]


def test_node_restarted_under_the_same_name_does_not_hide_the_dead_one(store: Store) -> None:
    register(store, "n1", "dead", in_flight_tasks=IN_FLIGHT)
    register(store, "n1", "alive", ttl=30.0)
    time.sleep(PAST_SHORT)
    [record] = store.node_reap(grace=0.0)
    assert (record["node"], record["incarnation"]) == ("n1", "dead")
    assert record["in_flight_tasks"] == IN_FLIGHT
    assert [n["node"] for n in store.node_list()] == ["n1"]


def test_clean_shutdown_leaves_nothing_to_reap(store: Store) -> None:
    register(store, "n1", "a", in_flight_tasks=IN_FLIGHT)
    store.node_remove("n1")
    time.sleep(PAST_SHORT)
    assert reaped(store) == []


def test_clean_shutdown_keeps_the_dead_incarnation_before_it(store: Store) -> None:
    register(store, "n1", "dead")
    register(store, "n1", "alive")
    store.node_remove("n1")
    time.sleep(PAST_SHORT)
    assert reaped(store) == [("n1", "dead")]


def test_records_without_incarnation_are_one_incarnation(store: Store) -> None:
    store.node_register("n1", {"v": 1}, ttl=SHORT)
    store.node_register("n1", {"v": 2}, ttl=SHORT)
    time.sleep(PAST_SHORT)
    [record] = store.node_reap(grace=0.0)
    assert (record["node"], record["incarnation"], record["v"]) == ("n1", "", 2)


def test_dead_records_are_dropped_after_the_retention(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_both_stores(monkeypatch, "NODE_RETENTION", 0.1)
    register(store, "n1", "a")
    time.sleep(PAST_SHORT + 0.1)
    assert reaped(store) == []


def test_racing_reapers_in_threads_claim_each_dead_node_exactly_once(store: Store) -> None:
    for i in range(6):
        register(store, f"n{i}", "a")
    register(store, "alive", "a", ttl=30.0)
    time.sleep(PAST_SHORT)
    gate = threading.Barrier(8, timeout=10)

    def reap() -> list[tuple[str, str]]:
        gate.wait()
        return reaped(store) + reaped(store)

    with ThreadPoolExecutor(8) as pool:
        claims = [c for result in pool.map(lambda _: reap(), range(8)) for c in result]
    assert Counter(claims) == {(f"n{i}", "a"): 1 for i in range(6)}


def _reap_at(url: str, key_prefix: str, start: float) -> list[tuple[str, str]]:
    """In another process: wait for ``start`` (epoch s), then reap twice."""
    store = RedisStore(url, key_prefix=key_prefix)
    try:
        time.sleep(max(0.0, start - time.time()))
        return reaped(store) + reaped(store)
    finally:
        store.close()


def test_racing_reapers_in_processes_claim_each_dead_node_exactly_once(
    redis_url: str, key_prefix: str
) -> None:
    store = RedisStore(redis_url, key_prefix=key_prefix)
    for i in range(6):
        register(store, f"n{i}", "a")
    time.sleep(PAST_SHORT)
    # The group beats on (n0..n5 alone went quiet), well within STORE_SILENCE of their
    # last beats: a longer silence of the whole group would move their expiries on.
    register(store, "alive", "a", ttl=30.0)
    start = time.time() + 1.0
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_reap_at, redis_url, key_prefix, start) for _ in range(4)]
        claims = [c for f in futures for c in f.result(timeout=60)]
    assert Counter(claims) == {(f"n{i}", "a"): 1 for i in range(6)}
    drop_keys(store)
    store.close()


def test_incarnation_keys_outlive_the_live_keys_by_the_retention(
    redis_url: str, key_prefix: str, redis_client: redis.Redis
) -> None:
    store = RedisStore(redis_url, key_prefix=key_prefix)
    register(store, "n1", "a", ttl=30.0)
    assert 0 < redis_client.ttl(store.key("nodes", DEFAULT_GROUP)) <= 32
    for part in ("incarnations", "incarnation_records"):
        ttl = redis_client.ttl(store.key("nodes", DEFAULT_GROUP, part=part))
        assert NODE_RETENTION < ttl <= NODE_RETENTION + 32
    drop_keys(store)
    store.close()
