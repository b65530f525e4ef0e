"""Store errors: a refused script is no outage, nothing half-written, no value overflows Redis."""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from snakepit_celery import CrashBarrier, CrashBarrierConfig, HealthMonitor
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.errors import ConfigError, StoreScriptError, StoreUnavailableError
from snakepit_celery.store import (
    MemoryStore,
    RedisStore,
    redis_connect,
    script_error_count,
    set_fail_open,
)
from snakepit_celery.store.redis_schema import MAX_SECONDS
from tests.support.harness import Harness, harness_fixture


@pytest.fixture
def store(redis_url: str, key_prefix: str) -> Iterator[RedisStore]:
    redis_store = RedisStore(redis_url, key_prefix=key_prefix)
    yield redis_store
    redis_store.close()


@pytest.fixture(autouse=True)
def fail_open_on() -> Iterator[None]:
    set_fail_open(True)
    yield
    set_fail_open(True)


@pytest.fixture
def acl_user(redis_client: redis.Redis, redis_url: str) -> Iterator[Any]:
    """Make a Redis ACL user from rules; yields a factory returning the user's URL."""
    made: list[str] = []

    def make(rules: list[str]) -> str:
        name = f"sptest-{uuid.uuid4().hex[:10]}"
        password = uuid.uuid4().hex
        redis_client.acl_setuser(name, enabled=True, passwords=[f"+{password}"], reset=True)
        redis_client.execute_command("ACL", "SETUSER", name, *rules)
        made.append(name)
        scheme, rest = redis_url.split("://", 1)
        return f"{scheme}://{name}:{password}@{rest}"

    yield make
    for name in made:
        redis_client.acl_deluser(name)


# -- a script error is no outage -------------------------------------------------------


def test_script_error_raises_counts_and_logs_the_script(
    store: RedisStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    redis_client.set(store.key("taint", "p"), "not a zset")
    before = script_error_count()
    with (
        caplog.at_level(logging.ERROR, logger="snakepit_celery.store"),
        pytest.raises(StoreScriptError, match="taint_active"),
    ):
        store.taint_active("p", "worker:1")
    assert script_error_count() == before + 1
    assert any(getattr(r, "snakepit_script", None) == "taint_active" for r in caplog.records)


def test_fail_open_does_not_swallow_a_script_error(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    redis_client.set(store.key("hm", "p"), "not a hash")
    with pytest.raises(StoreScriptError, match="health_record"):
        HealthMonitor("p", store=store).record_crash("w1")


def test_acl_denial_inside_a_script_writes_nothing(
    acl_user: Any, key_prefix: str, redis_client: redis.Redis
) -> None:
    url = acl_user(["resetkeys", f"~{key_prefix}:*", "+@all", "-pexpire"])
    denied = RedisStore(url, key_prefix=key_prefix)
    with pytest.raises(StoreScriptError, match="health_record"):
        denied.health_record("p", "w1", window=60.0, max_entries=10)
    with pytest.raises(StoreScriptError, match="ledger_start"):
        denied.ledger_start("t1", worker_id="w1", lease=30.0, ttl=600.0)
    denied.close()
    assert list(redis_client.scan_iter(match=f"{key_prefix}:*")) == []


# -- a Cluster slot in migration is no outage either ---------------------------------------


class MigratingClient:
    """A redis-py stand-in whose EVALSHA fails with ``errors`` first, then answers "ok"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    def evalsha(self, *args: Any) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


MIGRATION_ERRORS = [
    redis.exceptions.TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
    redis.exceptions.AskError("3999 127.0.0.1:7001"),
    redis.exceptions.ClusterError("TTL exhausted."),
]


def test_a_script_call_is_retried_while_its_slot_migrates() -> None:
    client = MigratingClient(*MIGRATION_ERRORS)
    store = RedisStore(client, key_prefix="migrating")
    assert store.taint_active("p", "worker:a") is True
    assert client.calls == 4


def test_other_errors_are_not_retried() -> None:
    client = MigratingClient(redis.exceptions.ConnectionError("refused"))
    store = RedisStore(client, key_prefix="migrating")
    with pytest.raises(StoreUnavailableError):
        store.taint_active("p", "worker:a")
    assert client.calls == 1


def test_a_migration_longer_than_the_wait_is_an_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_connect, "MIGRATION_WAIT", 0.2)
    client = MigratingClient(*MIGRATION_ERRORS * 100)
    store = RedisStore(client, key_prefix="migrating")
    with pytest.raises(StoreUnavailableError, match=r"TryAgainError|AskError|ClusterError"):
        store.taint_active("p", "worker:a")
    assert 2 < client.calls < 10


# -- ranges -----------------------------------------------------------------------------


#: Holds the server for 0.75 s: commands sent meanwhile wait, then run.
_BUSY = """
local t = redis.call('TIME')
local start = t[1] * 1000000 + t[2]
repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 750000
return 1
"""


def test_a_script_whose_reply_timed_out_is_not_run_again(
    redis_url: str, redis_client: redis.Redis, key_prefix: str
) -> None:
    """The server runs a script whose reply the client gave up on; sent again, it counts twice.

    The server is busy 0.75 s; the call times out after 0.5 s; a call sent again then
    would run at 0.75 s, within its own timeout, and succeed: two crashes, no error.
    """
    store = RedisStore(redis_url, key_prefix=key_prefix, socket_timeout=0.5)
    try:
        store.ledger_crash("warm-up", ttl=60.0)  # the script is loaded: one command below
        busy = threading.Thread(target=redis_client.eval, args=(_BUSY, 0))
        busy.start()
        time.sleep(0.05)
        with pytest.raises(StoreUnavailableError):
            store.ledger_crash("t", ttl=60.0)
        busy.join()
        entry = store.ledger_get("t")
    finally:
        store.close()
    assert entry is not None and entry.crashes == 1


def test_huge_max_restarts_keeps_a_bounded_ledger_ttl(
    store: RedisStore, redis_client: redis.Redis
) -> None:
    barrier = CrashBarrier(CrashBarrierConfig(enabled=True, max_restarts=10**15), store=store)
    barrier.ledger_start("t1", "w1", lease=30.0)
    barrier.ledger_crash("t1")
    ttl = redis_client.pttl(store.key("task", "t1"))
    assert 0 < ttl <= MAX_SECONDS * 1000
    assert store.ledger_get("t1") is not None


@pytest.mark.parametrize("window", [1e300, math.inf])
def test_huge_durations_are_capped_not_overflowed(
    store: RedisStore, redis_client: redis.Redis, window: float
) -> None:
    snap = store.health_record("p", "w1", window=window, max_entries=10**30)
    assert snap.crashes_in_window == 1
    assert store.taint_set("p", "worker:1", duration=window, details={})
    assert redis_client.pttl(store.key("hm", "p", "crashes")) > 0


@pytest.mark.parametrize("value", [-1.0, math.nan])
def test_negative_or_nan_durations_are_config_errors(store: RedisStore, value: float) -> None:
    with pytest.raises(ConfigError, match="window"):
        store.health_stats("p", window=value)


# -- health cost and equivalence ------------------------------------------------------


def _replay(store: Any, ops: list[tuple[str, str, float, int]]) -> list[Any]:
    out: list[Any] = []
    for kind, worker, window, cap in ops:
        if kind == "record":
            snap = store.health_record("p", worker, window=window, max_entries=cap)
            out.append((snap.total_crashes, snap.crashes_in_window, snap.workers[worker].count))
            out.append(snap.workers_with_crashes)
        elif kind == "stats":
            snap = store.health_stats("p", window=window)
            out.append((snap.total_crashes, snap.crashes_in_window, snap.workers_with_crashes))
        else:
            out.append(store.health_worker("p", worker, window=window).count)
    return out


def test_health_counts_agree_on_memory_and_redis(store: RedisStore) -> None:
    rng = random.Random(7)
    workers = ["a", "b", "a|b", "1|a", "ü", "b|"]
    ops = [
        (rng.choice(["record", "record", "stats", "worker"]), rng.choice(workers), 60.0, 7)
        for _ in range(300)
    ]
    assert _replay(MemoryStore(), ops) == _replay(store, ops)


def _record_cost(store: RedisStore, pool: str, worker: str) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(20):
            store.health_record(pool, worker, window=3600.0, max_entries=100_000)
        samples.append((time.perf_counter() - started) / 20)
    return min(samples)


def test_health_cost_does_not_grow_with_crashes_kept(store: RedisStore) -> None:
    empty = _record_cost(store, "empty", "w")
    piped = store.client.pipeline(transaction=False)
    for i in range(20_000):
        piped.evalsha(
            store._shas["health_record"], 4, *store._health_keys("full"), "w", 3600.0, 10**6, 1
        )
        if i % 2000 == 1999:
            piped.execute()
    full = _record_cost(store, "full", "w")
    started = time.perf_counter()
    stats = store.health_stats("full", window=3600.0)
    stats_cost = time.perf_counter() - started
    assert stats.crashes_in_window > 20_000
    assert full < 5 * empty + 0.002
    assert stats_cost < 0.005 + 5 * empty


# -- the minimal ACL (README) ---------------------------------------------------------

#: The ACL the README documents, for the key prefix ``<prefix>``.
MINIMAL_ACL = [
    "resetkeys",
    "~<prefix>:*",
    "resetchannels",
    "-@all",
    "+evalsha",
    "+script|load",
    "+time",
    "+ping",
    "+select",
    "+scan",
    "+del",
    "+exists",
    "+hget",
    "+hmget",
    "+hset",
    "+hdel",
    "+hincrby",
    "+zadd",
    "+zrem",
    "+zcard",
    "+zcount",
    "+zscore",
    "+zrange",
    "+zrangebyscore",
    "+zrevrangebylex",
    "+zlexcount",
    "+zremrangebyscore",
    "+zremrangebyrank",
    "+pexpire",
    "+pexpireat",
    "+pttl",
]


def test_every_store_operation_runs_under_the_minimal_acl(acl_user: Any, key_prefix: str) -> None:
    url = acl_user([rule.replace("<prefix>", key_prefix) for rule in MINIMAL_ACL])
    store = RedisStore(url, key_prefix=key_prefix)
    store.forget_scripts()
    before = script_error_count()
    assert store.ping()
    store.now()
    store.breaker_record("b", success=False, failure_threshold=1)
    store.breaker_acquire("b", reset_timeout=0.0, half_open_max_calls=1, probe_ttl=5.0)
    store.breaker_record("b", success=True, failure_threshold=1)
    store.breaker_peek("b", reset_timeout=1.0)
    assert store.breaker_names() == ["b"]
    store.breaker_reset("b")
    store.health_record("p", "w1", window=60.0, max_entries=1)
    store.health_record("p", "w2", window=60.0, max_entries=1)
    store.health_stats("p", window=60.0)
    store.health_worker("p", "w2", window=60.0)
    store.taint_set("p", "worker:w1", duration=30.0, details={"why": "segv"})
    assert store.taint_active("p", "worker:w1")
    assert len(store.taint_list("p")) == 1
    assert store.pool_names() == ["p"]
    store.taint_clear("p", "worker:w1")
    store.taint_clear("p")
    store.ledger_start("t1", worker_id="w1", lease=30.0, ttl=600.0)
    store.ledger_hold({"t1": "w1"}, lease=30.0, ttl=600.0)
    store.ledger_finish("t1")
    store.ledger_crash("t1", ttl=600.0)
    store.ledger_release("t1", ttl=600.0)
    assert store.ledger_get("t1") is not None
    store.node_register("n1", {"incarnation": "i1"}, ttl=0.05)
    store.node_list()
    time.sleep(0.1)
    assert store.node_reap(grace=0.0)
    store.node_register("n2", {"incarnation": "i2"}, ttl=30.0)
    store.node_remove("n2")
    assert script_error_count() == before
    store.close()


@pytest.fixture
def harness(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Harness]:
    yield from harness_fixture(redis_url, key_prefix, tmp_path)


@pytest.mark.integration
def test_a_worker_with_the_crash_barrier_runs_with_its_store_under_the_minimal_acl(
    acl_user: Any, harness: Harness, key_prefix: str
) -> None:
    url = acl_user([rule.replace("<prefix>", key_prefix) for rule in MINIMAL_ACL])
    barrier = {"enabled": True, "max_restarts": 1, "taint_duration": 30.0, "backoff": [0.05]}
    conf = {"snakepit_store_url": url, "snakepit_crash_barrier": barrier}
    worker = harness.worker("acl", conf=conf)
    crashed = harness.send("crash_once", harness.key("runs"), "segv")
    plain = harness.send("noop")
    assert crashed.get(timeout=60) == 2
    assert plain.get(timeout=30) is None
    store = RedisStore(url, key_prefix=key_prefix)
    try:
        assert HealthMonitor(store=store).worker_health(worker.name).crash_count == 1
        assert CrashBarrier(barrier, store=store).worker_tainted(worker.name)
        nodes = store.node_list(group=app_group(harness.client))
        assert worker.name in [node["node"] for node in nodes]
    finally:
        store.close()
    log = worker.logs()
    assert "snakepit store operation" not in log  # no script refused (NOPERM)
    assert "snakepit store unavailable" not in log


def test_readme_documents_exactly_the_tested_acl() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = readme.split("ACL SETUSER snakepit", 1)[1].split("```", 1)[0]
    assert set(re.findall(r"\+[a-z|]+", block)) == {r for r in MINIMAL_ACL if r[0] == "+"}
    assert "~<prefix>:*" in block
