"""Redis Cluster as the store, for real: a private 3-master cluster started by the suite.

The cluster (``LocalCluster``: three cluster-enabled ``redis-server`` nodes on
free ports, slots split between them) is shared by the module and stopped at
its end; the tests are skipped, saying why, without a ``redis-server`` binary.
Every store operation runs on objects whose slots lie on each master; a real
worker uses the cluster as its store (the broker stays the plain Redis); and
breaker calls keep working, with their state, while a slot moves to another
master (also a move slower than redis-py's own TRYAGAIN retries) and while
every node forgets its Lua scripts.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from snakepit_celery.barrier import CrashBarrier
from snakepit_celery.breaker import BreakerState, CircuitBreaker
from snakepit_celery.celery.app_context import app_group
from snakepit_celery.errors import CircuitOpenError
from snakepit_celery.health import HealthMonitor
from snakepit_celery.store import RedisStore, fail_open, set_fail_open, store_error_count
from snakepit_celery.store.base import DEFAULT_GROUP
from snakepit_celery.testing.redis_cluster import LocalCluster
from snakepit_celery.testing.redis_server import EmbeddedRedis, find_redis_server_binary
from tests.support.deployments import CallLoop
from tests.support.harness import Harness, harness_fixture

pytestmark = [pytest.mark.timeout(120)]

BARRIER: dict[str, Any] = {
    "snakepit_crash_barrier": {
        "enabled": True,
        "max_restarts": 1,
        "taint_duration": 30.0,
        "backoff": [0.05],
    }
}
#: Breaker calls made after each disruption before the loop is stopped.
CALLS_AFTER = 20
#: Seconds between the steps of a slot move (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE):
#: long enough for the calls to meet each state, well inside redis-py's TRYAGAIN retries.
MIGRATION_STEP = 0.05
#: A slot move whose steps are this far apart (s) outlasts redis-py's TRYAGAIN retries
#: (as moving a slot that also holds many keys of other applications does).
SLOW_MIGRATION_STEP = 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    binary = find_redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary: install redis-server to test Redis Cluster")
    with LocalCluster(binary, masters=3) as started:
        yield started


@pytest.fixture
def store(cluster: LocalCluster) -> Iterator[RedisStore]:
    """A store on the cluster with a key prefix unique to the test."""
    cluster_store = RedisStore(cluster.url, key_prefix=f"spcluster-{uuid.uuid4().hex[:8]}")
    yield cluster_store
    cluster_store.close()


@pytest.fixture
def strict_store() -> Iterator[None]:
    """Fail-open off: any store error during the test raises instead of being ignored."""
    previous = fail_open()
    set_fail_open(False)
    yield
    set_fail_open(previous)


def owner_of(cluster: LocalCluster, store: RedisStore, kind: str, name: str) -> EmbeddedRedis:
    return cluster.owner(key_slot(store.key(kind, name).encode()))


def one_name_per_master(cluster: LocalCluster, store: RedisStore, kind: str) -> list[str]:
    """Names of objects of ``kind`` whose keys lie on each master in turn."""
    found: dict[int, str] = {}
    for number in range(1000):
        name = f"{kind}{number}"
        found.setdefault(owner_of(cluster, store, kind, name).port, name)
        if len(found) == len(cluster.nodes):
            return [found[node.port] for node in cluster.nodes]
    raise AssertionError(f"no {kind} name found for every master")


# -- every store operation, on every master ----------------------------------------------


def test_store_answers_with_the_cluster_clock(store: RedisStore) -> None:
    assert store.ping() is True
    assert abs(store.now() - time.time()) < 5


def test_breaker_operations_work_on_every_master(cluster: LocalCluster, store: RedisStore) -> None:
    names = one_name_per_master(cluster, store, "br")
    for name in names:
        admitted = store.breaker_acquire(
            name, reset_timeout=0.2, half_open_max_calls=1, probe_ttl=10
        )
        assert (admitted.allowed, admitted.state) == (True, "closed")
        assert store.breaker_record(name, success=True, failure_threshold=2).state == "closed"
        opened = store.breaker_record(name, success=False, failure_threshold=2, count=2)
        assert (opened.state, opened.transition) == ("open", "opened")
        assert store.breaker_peek(name, reset_timeout=60.0).state == "open"
    time.sleep(0.3)
    for name in names:
        probe = store.breaker_acquire(name, reset_timeout=0.2, half_open_max_calls=1, probe_ttl=10)
        assert (probe.allowed, probe.transition) == (True, "half_open")
        closed = store.breaker_record(name, success=True, failure_threshold=2, probe=probe.probe)
        assert closed.transition == "closed"
    assert store.breaker_names() == sorted(names)
    for name in names:
        store.breaker_reset(name)
    assert store.breaker_names() == []


def test_health_operations_work_on_every_master(cluster: LocalCluster, store: RedisStore) -> None:
    pools = one_name_per_master(cluster, store, "hm")
    for pool in pools:
        store.health_record(pool, "w1", window=60.0, max_entries=100)
        snapshot = store.health_record(pool, "w2", window=60.0, max_entries=100)
        assert (snapshot.total_crashes, snapshot.crashes_in_window) == (2, 2)
        stats = store.health_stats(pool, window=60.0)
        assert stats.workers_with_crashes == 2
        assert store.health_worker(pool, "w1", window=60.0).count == 1
    assert set(pools) <= set(store.pool_names())


def test_taint_operations_work_on_every_master(cluster: LocalCluster, store: RedisStore) -> None:
    pools = one_name_per_master(cluster, store, "taint")
    for pool in pools:
        assert store.taint_set(pool, "worker:a", duration=30.0, details={"reason": "segfault"})
        assert store.taint_set(pool, "device:n:cuda:0", duration=30.0, details={})
        assert store.taint_active(pool, "worker:a")
        listed = store.taint_list(pool)
        assert {t.member for t in listed} == {"worker:a", "device:n:cuda:0"}
        assert store.taint_clear(pool, "worker:a") == 1
        assert store.taint_clear(pool) == 1
        assert store.taint_list(pool) == []


def test_ledger_operations_work_on_every_master(cluster: LocalCluster, store: RedisStore) -> None:
    for task_id in one_name_per_master(cluster, store, "task"):
        assert store.ledger_start(task_id, worker_id="w1", lease=30.0, ttl=60.0).starts == 0
        assert store.ledger_hold({task_id: "w1"}, lease=30.0, ttl=60.0) == [True]
        assert store.ledger_start(task_id, worker_id="w2", lease=30.0, ttl=60.0).running_on == "w1"
        assert store.ledger_crash(task_id, ttl=60.0).crashes == 1
        store.ledger_release(task_id, ttl=60.0)
        assert store.ledger_start(task_id, worker_id="w2", lease=30.0, ttl=60.0).released
        store.ledger_finish(task_id)
        entry = store.ledger_get(task_id)
        assert entry is not None
        assert (entry.starts, entry.finishes, entry.crashes, entry.running_on) == (2, 1, 1, None)


def test_node_registry_operations_work_on_the_cluster(store: RedisStore) -> None:
    store.node_register("gone@host", {"incarnation": "i1"}, ttl=0.2)
    store.node_register("live@host", {"incarnation": "i2", "queues": ["snakepit.cpu"]}, ttl=30.0)
    store.node_register("left@host", {"incarnation": "i3"}, ttl=30.0)
    store.node_remove("left@host")
    time.sleep(0.3)
    assert [(n["node"], n["queues"]) for n in store.node_list()] == [
        ("live@host", ["snakepit.cpu"])
    ]
    assert [(r["node"], r["incarnation"]) for r in store.node_reap(grace=0.0)] == [
        ("gone@host", "i1")
    ]
    assert store.node_reap(grace=0.0) == []


# -- a running cluster changing under the calls ------------------------------------------


def breakers(store: RedisStore) -> tuple[CircuitBreaker, CircuitBreaker]:
    """A closed breaker asked on every call, and an open one."""
    loop = CircuitBreaker("loop", reset_timeout=60.0, max_staleness=0.0, store=store)
    tripped = CircuitBreaker("tripped", failure_threshold=2, reset_timeout=60.0, store=store)
    tripped.record_failure()
    tripped.record_failure()
    assert tripped.state == BreakerState.OPEN
    return loop, tripped


def assert_state_kept(loop: CallLoop, tripped: CircuitBreaker, errors_before: int) -> None:
    assert loop.errors == []
    assert store_error_count() == errors_before
    stats = loop.breaker.stats()
    assert (stats.state, stats.failure_count, stats.success_count) == ("closed", 0, loop.calls)
    assert (tripped.state, tripped.stats().failure_count) == (BreakerState.OPEN, 2)
    with pytest.raises(CircuitOpenError):
        tripped.call(lambda: None)


def move_breaker_slots(
    cluster: LocalCluster, store: RedisStore, loop: CallLoop, pause: float, names: tuple[str, ...]
) -> None:
    """Move the slots of breakers ``names`` to other masters, one after the other, mid-loop."""
    for name in names:
        slot = key_slot(store.key("br", name).encode())
        source = cluster.owner(slot)
        target = next(node for node in cluster.nodes if node is not source)
        assert cluster.move_slot(slot, target, pause=pause) >= 1
        assert cluster.owner(slot) is target
        loop.wait_calls(CALLS_AFTER)


def redirections(cluster: LocalCluster) -> int:
    """ASK and TRYAGAIN replies the cluster's nodes have sent so far."""
    total = 0
    for node in cluster.nodes:
        errors = node.command("INFO", "errorstats")
        total += sum(
            int(errors.get(f"errorstat_{e}", {}).get("count", 0)) for e in ("ASK", "TRYAGAIN")
        )
    return total


def test_breaker_calls_keep_working_and_state_is_kept_while_slots_move(
    cluster: LocalCluster, store: RedisStore, strict_store: None
) -> None:
    loop_breaker, tripped = breakers(store)
    errors_before, redirections_before = store_error_count(), redirections(cluster)
    with CallLoop(loop_breaker) as loop:
        loop.wait_calls(CALLS_AFTER)
        move_breaker_slots(cluster, store, loop, MIGRATION_STEP, ("loop", "tripped"))
    assert redirections(cluster) > redirections_before  # the calls met the slots mid-move
    assert_state_kept(loop, tripped, errors_before)


def test_breaker_calls_keep_working_while_a_slot_move_takes_a_second(
    cluster: LocalCluster, store: RedisStore, strict_store: None
) -> None:
    loop_breaker, tripped = breakers(store)
    errors_before = store_error_count()
    with CallLoop(loop_breaker) as loop:
        loop.wait_calls(CALLS_AFTER)
        move_breaker_slots(cluster, store, loop, SLOW_MIGRATION_STEP, ("loop",))
    assert_state_kept(loop, tripped, errors_before)


#: A store call on an object whose keys do not all exist yet, per kind of multi-key script.
FRESH_OBJECT_CALLS: dict[str, Callable[[RedisStore, str], object]] = {
    "hm": lambda store, pool: store.health_record(pool, "w1", window=60.0, max_entries=10),
    "taint": lambda store, pool: store.taint_set(pool, "worker:a", duration=30.0, details={}),
    "nodes": lambda store, _: store.node_register("n@host", {"incarnation": "i1"}, ttl=30.0),
}


@pytest.mark.parametrize("kind", sorted(FRESH_OBJECT_CALLS))
def test_multi_key_scripts_wait_out_a_slot_move_that_takes_a_second(
    cluster: LocalCluster, store: RedisStore, strict_store: None, kind: str
) -> None:
    name = DEFAULT_GROUP if kind == "nodes" else "moving"
    slot = key_slot(store.key(kind, name).encode())
    target = next(node for node in cluster.nodes if node is not cluster.owner(slot))
    failures: list[BaseException] = []

    def move() -> None:
        try:
            cluster.move_slot(slot, target, pause=SLOW_MIGRATION_STEP)
        except BaseException as exc:
            failures.append(exc)

    mover = threading.Thread(target=move, daemon=True)
    redirections_before = redirections(cluster)
    mover.start()
    time.sleep(SLOW_MIGRATION_STEP / 4)  # the slot is MIGRATING now, for about two seconds
    FRESH_OBJECT_CALLS[kind](store, name)
    mover.join(30)
    assert failures == []
    assert redirections(cluster) > redirections_before  # the call met the slot mid-move
    assert cluster.owner(slot) is target


def test_breaker_calls_reload_scripts_and_keep_state_after_script_flush(
    cluster: LocalCluster, store: RedisStore, strict_store: None
) -> None:
    loop_breaker, tripped = breakers(store)
    owner = owner_of(cluster, store, "br", "loop")
    errors_before = store_error_count()
    loads_before = script_loads(owner)
    with CallLoop(loop_breaker) as loop:
        loop.wait_calls(CALLS_AFTER)
        cluster.script_flush()
        loop.wait_calls(CALLS_AFTER)
    assert script_loads(owner) > loads_before
    assert_state_kept(loop, tripped, errors_before)


def script_loads(node: EmbeddedRedis) -> int:
    """How many ``SCRIPT LOAD`` commands ``node`` has served."""
    stats = node.command("INFO", "commandstats")
    return int(stats.get("cmdstat_script|load", {}).get("calls", 0))


# -- a real worker with its crash barrier on the cluster ---------------------------------


@pytest.fixture
def harness(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Harness]:
    yield from harness_fixture(redis_url, key_prefix, tmp_path)


@pytest.mark.integration
def test_worker_with_the_crash_barrier_survives_a_segfault_with_the_store_on_the_cluster(
    cluster: LocalCluster, harness: Harness
) -> None:
    conf = {**BARRIER, "snakepit_store_url": cluster.url}
    worker = harness.worker("cluster", conf=conf)
    result = harness.send("crash_once", harness.key("runs"), "segv")
    assert result.get(timeout=60) == 2
    assert harness.count("runs") == 2
    store = RedisStore(cluster.url, key_prefix=harness.key_prefix)
    try:
        assert HealthMonitor(store=store).worker_health(worker.name).crash_count == 1
        assert CrashBarrier(BARRIER["snakepit_crash_barrier"], store=store).worker_tainted(
            worker.name
        )
        nodes = store.node_list(group=app_group(harness.client))
        assert worker.name in [node["node"] for node in nodes]
    finally:
        store.close()
    assert list(harness.redis.scan_iter(match=f"{harness.key_prefix}:{{*")) == []
