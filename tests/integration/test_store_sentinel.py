"""Redis Sentinel as the store, for real: a master SIGKILLed under running calls.

The suite starts its own Sentinel set (``SentinelSet``: a master, one replica
and one Sentinel with a 1 s ``down-after-milliseconds``, all ``redis-server``
processes on free ports) and skips, saying why, without a ``redis-server``
binary. State written before the kill (an open breaker, crash counts, a
taint, a task's crash ledger) is on the promoted replica, and the same store
objects answer again once Sentinel has promoted it, with nothing restarted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from snakepit_celery.breaker import BreakerState, CircuitBreaker
from snakepit_celery.errors import CircuitOpenError, StoreUnavailableError
from snakepit_celery.store import RedisStore
from snakepit_celery.testing import wait_until
from snakepit_celery.testing.redis_sentinel import SentinelSet
from snakepit_celery.testing.redis_server import find_redis_server_binary
from tests.support.deployments import CallLoop

pytestmark = [pytest.mark.timeout(120)]

#: Longest time (s) from the master's SIGKILL to the first answer of the promoted
#: replica: Sentinel's 1 s down-after, its election and the promotion, with room for load.
RECOVERY_BOUND = 20.0


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    binary = find_redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary: install redis-server to test Redis Sentinel")
    with SentinelSet(binary, down_after=1.0, failover_timeout=3.0) as started:
        yield started


@pytest.fixture
def store(sentinel_set: SentinelSet) -> Iterator[RedisStore]:
    sentinel_store = RedisStore(sentinel_set.url, key_prefix=f"spsentinel-{uuid.uuid4().hex[:8]}")
    yield sentinel_store
    sentinel_store.close()


def first_answer_after(started: float, call: Callable[[], object]) -> float:
    """Call ``call`` until the store answers; seconds from ``started`` (monotonic) to that."""

    def answered() -> bool:
        try:
            call()
        except StoreUnavailableError:
            return False
        return True

    wait_until(answered, RECOVERY_BOUND, interval=0.01, what="the store to answer after failover")
    return time.monotonic() - started


def test_state_survives_a_master_sigkill_and_calls_come_back_without_a_restart(
    sentinel_set: SentinelSet, store: RedisStore, record_property: Callable[[str, object], None]
) -> None:
    tripped = CircuitBreaker("tripped", failure_threshold=2, reset_timeout=60.0, store=store)
    tripped.record_failure()
    tripped.record_failure()
    working = CircuitBreaker("working", reset_timeout=60.0, max_staleness=0.0, store=store)
    store.health_record("default", "w1", window=60.0, max_entries=100)
    store.taint_set("default", "worker:w1", duration=60.0, details={"reason": "segfault"})
    store.ledger_start("task-1", worker_id="w1", lease=60.0, ttl=60.0)
    sentinel_set.wait_replicated()
    old_master = sentinel_set.master_port()

    with CallLoop(working, interval=0.005) as loop:
        loop.wait_calls(10)
        killed_at = time.monotonic()
        sentinel_set.kill_master()
        recovery = first_answer_after(killed_at, lambda: store.breaker_peek("x", reset_timeout=1))
        loop.wait_calls(10)
    record_property("sentinel_recovery_s", round(recovery, 3))

    assert loop.errors == []  # fail-open: calls ran on while the store was away
    assert sentinel_set.master_port() != old_master
    assert (tripped.state, tripped.stats().failure_count) == (BreakerState.OPEN, 2)
    with pytest.raises(CircuitOpenError):
        tripped.call(lambda: None)
    assert working.stats().state == BreakerState.CLOSED
    assert store.health_worker("default", "w1", window=60.0).count == 1
    assert store.taint_active("default", "worker:w1")
    entry = store.ledger_get("task-1")
    assert entry is not None
    assert (entry.starts, entry.running_on) == (1, "w1")
    assert recovery < RECOVERY_BOUND
