"""RedisStore specifics: key schema, scripts, TTLs, unreachable Redis, processes and forks."""

from __future__ import annotations

import multiprocessing
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
import redis
import redis.exceptions
from redis.crc import key_slot

from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.store import RedisStore
from snakepit_celery.store.base import DEFAULT_GROUP
from snakepit_celery.store.redis_schema import KEY_SCHEMA, SCRIPTS

WINDOW = 60.0


@pytest.fixture
def store(redis_url: str, key_prefix: str) -> Iterator[RedisStore]:
    """A RedisStore with a key prefix unique to the test."""
    redis_store = RedisStore(redis_url, key_prefix=key_prefix)
    yield redis_store
    redis_store.close()


def exercise(store: RedisStore) -> None:
    """Touch every kind of key once."""
    store.breaker_record("payments", success=False, failure_threshold=1)
    store.breaker_acquire("payments", reset_timeout=0.0, half_open_max_calls=1, probe_ttl=10.0)
    store.health_record("gpu", "w1", window=WINDOW, max_entries=100)
    store.taint_set("gpu", "worker:w1", duration=30.0, details={"why": "segv"})
    store.ledger_start("task-1", worker_id="w1", lease=30.0, ttl=600.0)
    store.node_register("n1", {"queues": []}, ttl=30.0)


def keys_of(client: redis.Redis, prefix: str) -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000))


def schema_regex(prefix: str, pattern: str) -> re.Pattern[str]:
    escaped = re.escape(f"{prefix}:{pattern}")
    return re.compile("^" + re.sub(r"<[a-z_]+>", "[^}]+", escaped.replace(r"\<", "<")) + "$")


# -- keys -----------------------------------------------------------------------------


def test_key_helper_builds_hash_tagged_keys(store: RedisStore, key_prefix: str) -> None:
    assert store.key("br", "payments") == f"{key_prefix}:{{br:payments}}"
    assert store.key("br", "payments", "probes") == f"{key_prefix}:{{br:payments}}:probes"
    assert store.key("nodes") == f"{key_prefix}:{{nodes}}"


def test_every_key_carries_a_hash_tag(
    store: RedisStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    exercise(store)
    keys = keys_of(redis_client, key_prefix)
    assert keys
    assert all(re.match(rf"^{re.escape(key_prefix)}:\{{[^}}]+\}}", k) for k in keys)


def test_keys_of_one_object_share_one_slot(store: RedisStore) -> None:
    pairs = [
        (store.key("br", "x"), store.key("br", "x", "probes")),
        (store.key("hm", "p"), store.key("hm", "p", "crashes")),
        (store.key("hm", "p"), store.key("hm", "p", "by_worker")),
        (store.key("taint", "p"), store.key("taint", "p", "details")),
        (store.key("nodes"), store.key("nodes", part="records")),
    ]
    for first, second in pairs:
        assert key_slot(first.encode()) == key_slot(second.encode())


def test_every_key_written_is_listed_in_key_schema(
    store: RedisStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    exercise(store)
    patterns = [schema_regex(key_prefix, p) for p in KEY_SCHEMA.values()]
    for key in keys_of(redis_client, key_prefix):
        assert any(p.match(key) for p in patterns), key


def test_every_script_has_a_lua_file_and_every_file_a_script() -> None:
    folder = resources.files("snakepit_celery.store").joinpath("lua")
    files = {p.name[:-4] for p in folder.iterdir() if p.name.endswith(".lua")}
    assert files - {"_common"} == set(SCRIPTS)


# -- scripts --------------------------------------------------------------------------


def test_script_missing_on_server_is_loaded_and_retried(store: RedisStore) -> None:
    store.forget_scripts()
    decision = store.breaker_acquire("b", reset_timeout=1.0, half_open_max_calls=1, probe_ttl=1.0)
    assert decision.allowed
    assert store.breaker_record("b", success=False, failure_threshold=1).transition == "opened"


def test_wrong_script_sha_is_replaced_by_the_loaded_one(store: RedisStore) -> None:
    store._shas["taint_active"] = "f" * 40
    assert store.taint_active("pool", "worker:1") is False
    assert store._shas["taint_active"] != "f" * 40
    assert store.client.script_exists(store._shas["taint_active"]) == [True]


# -- TTLs and bounded memory ------------------------------------------------------


def test_breaker_keys_have_a_ttl(store: RedisStore, redis_client: redis.Redis) -> None:
    exercise(store)
    assert redis_client.ttl(store.key("br", "payments")) > 0
    assert redis_client.ttl(store.key("br", "payments", "probes")) > 0


def test_health_window_keys_expire_after_two_windows(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    exercise(store)
    for part in ("crashes", "by_worker"):
        assert 0 < redis_client.pttl(store.key("hm", "gpu", part)) <= WINDOW * 2000 + 1000
    assert redis_client.ttl(store.key("hm", "gpu")) > 0


def test_taint_keys_expire_with_the_last_taint(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    exercise(store)
    for key in (store.key("taint", "gpu"), store.key("taint", "gpu", "details")):
        assert 0 < redis_client.ttl(key) <= 32


def test_ledger_key_has_the_ledger_ttl(store: RedisStore, redis_client: redis.Redis) -> None:
    exercise(store)
    assert 590 < redis_client.ttl(store.key("task", "task-1")) <= 600


def test_node_keys_expire_with_the_last_heartbeat(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    exercise(store)
    for key in (store.key("nodes", DEFAULT_GROUP), store.key("nodes", DEFAULT_GROUP, "records")):
        assert 0 < redis_client.ttl(key) <= 32


def test_crash_storm_keeps_health_keys_small(store: RedisStore, redis_client: redis.Redis) -> None:
    for i in range(20_000):
        store.health_record("storm", f"worker-{i % 700}", window=3600.0, max_entries=1000)
    crashes, by_worker = store.key("hm", "storm", "crashes"), store.key("hm", "storm", "by_worker")
    assert redis_client.zcard(crashes) == 1000
    assert redis_client.zcard(by_worker) == 1000
    usage = sum(redis_client.memory_usage(k, samples=0) or 0 for k in (crashes, by_worker))
    assert usage < 256 * 1024
    snap = store.health_stats("storm", window=3600.0)
    assert (snap.total_crashes, snap.crashes_in_window) == (20_000, 1000)


# -- unreachable Redis --------------------------------------------------------------


def test_unreachable_redis_raises_store_unavailable_with_cause() -> None:
    dead = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.05, connect_timeout=0.05)
    with pytest.raises(StoreUnavailableError) as info:
        dead.breaker_acquire("b", reset_timeout=1.0, half_open_max_calls=1, probe_ttl=1.0)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.now(),
        lambda s: s.breaker_reset("b"),
        lambda s: s.health_stats("p", window=1.0),
        lambda s: s.taint_list("p"),
        lambda s: s.ledger_get("t"),
        lambda s: s.node_list(),
    ],
)
def test_every_operation_maps_unreachable_redis_to_store_unavailable(call: Any) -> None:
    dead = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.05, connect_timeout=0.05)
    with pytest.raises(StoreUnavailableError):
        call(dead)


def test_ping_of_unreachable_redis_is_false() -> None:
    dead = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.05, connect_timeout=0.05)
    assert dead.ping() is False


def test_unreachable_cluster_fails_per_call_not_at_construction() -> None:
    dead = RedisStore("redis+cluster://127.0.0.1:1", socket_timeout=0.05, connect_timeout=0.05)
    with pytest.raises(StoreUnavailableError):
        dead.taint_active("p", "worker:1")


def test_errors_and_repr_hide_the_password() -> None:
    dead = RedisStore("redis://:hunter2@127.0.0.1:1/0", socket_timeout=0.05, connect_timeout=0.05)
    with pytest.raises(StoreUnavailableError) as info:
        dead.node_list()
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(dead)


# -- clients, clocks, processes -----------------------------------------------------------


def test_store_on_a_given_client_leaves_it_open(redis_client: redis.Redis, key_prefix: str) -> None:
    store = RedisStore(redis_client, key_prefix=key_prefix)
    store.taint_set("p", "worker:1", duration=30.0, details={})
    store.close()
    assert redis_client.ping()
    assert store.client is redis_client


def test_clock_is_the_redis_servers(store: RedisStore, redis_client: redis.Redis) -> None:
    seconds, micros = redis_client.time()
    assert abs(store.now() - (seconds + micros / 1e6)) < 1.0


def _open_race(redis_url: str, key_prefix: str, gate: Any, out: Any) -> None:
    store = RedisStore(redis_url, key_prefix=key_prefix)
    gate.wait(timeout=30)
    transitions = [
        store.breaker_record("race", success=False, failure_threshold=20).transition
        for _ in range(5)
    ]
    out.put(transitions)


def test_processes_racing_to_open_a_breaker_see_one_opened(redis_url: str, key_prefix: str) -> None:
    ctx = multiprocessing.get_context("fork")
    gate, out = ctx.Barrier(8), ctx.Queue()
    procs = [
        ctx.Process(target=_open_race, args=(redis_url, key_prefix, gate, out)) for _ in range(8)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
    transitions = [t for batch in results for t in batch]
    assert transitions.count("opened") == 1
    store = RedisStore(redis_url, key_prefix=key_prefix)
    assert store.breaker_peek("race", reset_timeout=60.0).failures == 40


def _use_inherited(store: RedisStore, out: Any) -> None:
    out.put(store.taint_active("p", "worker:1"))


def test_store_used_before_fork_works_in_the_child(store: RedisStore) -> None:
    store.taint_set("p", "worker:1", duration=30.0, details={})  # parent holds a connection
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    children = [ctx.Process(target=_use_inherited, args=(store, out)) for _ in range(3)]
    for child in children:
        child.start()
    answers = [out.get(timeout=30) for _ in children]
    for child in children:
        child.join(timeout=30)
    assert answers == [True, True, True]
    assert all(child.exitcode == 0 for child in children)
    assert store.taint_active("p", "worker:1")  # the parent's connection still works


def test_breaker_names_survive_glob_characters_in_prefix(redis_url: str, key_prefix: str) -> None:
    store = RedisStore(redis_url, key_prefix=f"{key_prefix}[*?]")
    store.breaker_record("a*b", success=False, failure_threshold=5)
    assert store.breaker_names() == ["a*b"]


def test_server_refusals_are_store_unavailable(store: RedisStore, monkeypatch: Any) -> None:
    def refuse(*args: Any) -> Any:
        raise redis.exceptions.ResponseError(
            "OOM command not allowed when used memory > 'maxmemory'"
        )

    monkeypatch.setattr(store.client, "evalsha", refuse)
    with pytest.raises(StoreUnavailableError) as info:
        store.taint_active("p", "worker:1")
    assert "OOM" in str(info.value)
