"""Many OS processes on one breaker name (real Redis): exact signals, probes and counts."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from snakepit_celery.breaker import BreakerState, CircuitBreaker
from snakepit_celery.errors import CircuitOpenError
from snakepit_celery.store import store_from_url
from snakepit_celery.testing import wait_until
from tests.support.breakers import BREAKER_SIGNALS

PROCESSES = 8
CTX = multiprocessing.get_context("fork")


class ServiceDownError(Exception):
    """The failure the protected function raises."""


@contextmanager
def _forward_signals(client: redis.Redis, key: str, pool: str) -> Iterator[None]:
    """Make this process push every breaker signal for ``pool`` onto a Redis list."""
    receivers = []
    for name, sig in BREAKER_SIGNALS.items():

        def receive(sender: Any = None, signal: Any = None, _name: str = name, **kw: Any) -> None:
            if kw.get("pool") == pool:
                client.rpush(key, json.dumps({"signal": _name, "pid": os.getpid(), **kw}))

        sig.connect(receive, weak=False)
        receivers.append((sig, receive))
    try:
        yield
    finally:
        for sig, receive in receivers:
            sig.disconnect(receive)


class Swarm:
    """Shared setup of one race: the breaker's config, the Redis keys the workers report to."""

    def __init__(self, redis_url: str, key_prefix: str, **breaker_kwargs: Any) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.name = f"race-{key_prefix}"
        self.kwargs = breaker_kwargs
        self.signals_key = f"{key_prefix}:test:signals"
        self.client = redis.Redis.from_url(redis_url)

    def breaker(self) -> CircuitBreaker:
        store = store_from_url(self.redis_url, key_prefix=self.key_prefix)
        return CircuitBreaker(self.name, store=store, **self.kwargs)

    def key(self, name: str) -> str:
        return f"{self.key_prefix}:test:{name}"

    def signals(self) -> list[str]:
        return [json.loads(raw)["signal"] for raw in self.client.lrange(self.signals_key, 0, -1)]

    def run(self, target: Callable[[Swarm, int], None], processes: int = PROCESSES) -> None:
        """Run ``target(swarm, index)`` in ``processes`` forked processes started together."""
        start = CTX.Barrier(processes)
        procs = [
            CTX.Process(target=_worker, args=(self, target, start, i)) for i in range(processes)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=60)
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        assert [proc.exitcode for proc in procs] == [0] * processes


def _worker(swarm: Swarm, target: Callable[[Swarm, int], None], start: Any, index: int) -> None:
    swarm.client = redis.Redis.from_url(swarm.redis_url)
    with _forward_signals(swarm.client, swarm.signals_key, swarm.name):
        start.wait(timeout=30)
        target(swarm, index)


# -- the workers' bodies (module level so they survive fork unchanged) ---------------


def _fail_until_refused(swarm: Swarm, index: int) -> None:
    breaker = swarm.breaker()

    def fail() -> None:
        swarm.client.incr(swarm.key("executed"))
        raise ServiceDownError("down")

    for _ in range(20):
        try:
            breaker.call(fail)
        except ServiceDownError:
            pass
        except CircuitOpenError:
            swarm.client.incr(swarm.key("refused"))


def _succeed(swarm: Swarm, index: int) -> None:
    breaker = swarm.breaker()
    for _ in range(300):
        breaker.call(lambda: None)
    # No explicit flush: batched successes must be written when the process exits.


def _probe(swarm: Swarm, outcome: str, deadline: float) -> None:
    breaker = swarm.breaker()

    def probe() -> None:
        concurrent = swarm.client.incr(swarm.key("concurrent"))
        swarm.client.rpush(swarm.key("observed"), concurrent)
        time.sleep(0.02)
        swarm.client.decr(swarm.key("concurrent"))
        if outcome == "fail":
            raise ServiceDownError("still down")

    while time.time() < deadline:
        try:
            breaker.call(probe)
        except (ServiceDownError, CircuitOpenError):
            time.sleep(0.005)


def _probe_failing(swarm: Swarm, index: int) -> None:
    _probe(swarm, "fail", float(swarm.client.get(swarm.key("deadline")) or 0))


def _probe_succeeding(swarm: Swarm, index: int) -> None:
    _probe(swarm, "ok", float(swarm.client.get(swarm.key("deadline")) or 0))


def _hang_in_probe(swarm: Swarm) -> None:
    breaker = swarm.breaker()

    def probe() -> None:
        swarm.client.set(swarm.key("in_probe"), os.getpid())
        time.sleep(120)

    breaker.call(probe)


# -- the races ---------------------------------------------------------------------


def test_many_processes_crossing_the_threshold_open_it_once(
    redis_url: str, key_prefix: str
) -> None:
    swarm = Swarm(redis_url, key_prefix, failure_threshold=5, reset_timeout=60.0)
    swarm.run(_fail_until_refused)
    assert swarm.signals() == ["opened"]
    stats = swarm.breaker().stats()
    executed = int(swarm.client.get(swarm.key("executed")) or 0)
    refused = int(swarm.client.get(swarm.key("refused")) or 0)
    assert stats.state == BreakerState.OPEN
    assert stats.failure_count == executed
    assert executed + refused == PROCESSES * 20
    assert executed >= 5


def test_successes_from_many_processes_are_counted_exactly(redis_url: str, key_prefix: str) -> None:
    swarm = Swarm(redis_url, key_prefix)
    swarm.run(_succeed)
    stats = swarm.breaker().stats()
    assert (stats.state, stats.success_count) == (BreakerState.CLOSED, PROCESSES * 300)
    assert swarm.signals() == []


def _open_now(swarm: Swarm) -> None:
    breaker = swarm.breaker()
    with _forward_signals(swarm.client, swarm.signals_key, swarm.name):
        for _ in range(breaker.failure_threshold):
            breaker.record_failure()
    assert breaker.state == BreakerState.OPEN


@pytest.mark.parametrize("max_probes", [1, 2])
def test_half_open_never_admits_more_than_half_open_max_calls(
    redis_url: str, key_prefix: str, max_probes: int
) -> None:
    swarm = Swarm(
        redis_url, key_prefix, failure_threshold=1, reset_timeout=0.1,
        half_open_max_calls=max_probes,
    )  # fmt: skip
    _open_now(swarm)
    swarm.client.set(swarm.key("deadline"), time.time() + 1.5)
    swarm.run(_probe_failing)
    observed = [int(x) for x in swarm.client.lrange(swarm.key("observed"), 0, -1)]
    names = swarm.signals()
    assert observed, "no probe ran"
    assert max(observed) <= max_probes
    assert names.count("half_open") >= 2
    assert names.count("opened") == 1 + names.count("half_open")
    assert "closed" not in names


def test_a_successful_probe_closes_once_for_everyone(redis_url: str, key_prefix: str) -> None:
    swarm = Swarm(redis_url, key_prefix, failure_threshold=1, reset_timeout=0.2)
    _open_now(swarm)
    swarm.client.set(swarm.key("deadline"), time.time() + 1.0)
    swarm.run(_probe_succeeding)
    assert swarm.signals() == ["opened", "half_open", "closed"]
    assert swarm.breaker().state == BreakerState.CLOSED


def test_a_killed_probe_does_not_wedge_the_breaker(redis_url: str, key_prefix: str) -> None:
    swarm = Swarm(redis_url, key_prefix, failure_threshold=1, reset_timeout=0.1, probe_ttl=3.0)
    _open_now(swarm)
    breaker = swarm.breaker()
    assert wait_until(lambda: breaker.state == BreakerState.HALF_OPEN, timeout=5.0)
    proc = CTX.Process(target=_hang_in_probe, args=(swarm,))
    proc.start()
    try:
        assert wait_until(lambda: swarm.client.get(swarm.key("in_probe")) is not None, 10.0)
        os.kill(proc.pid or 0, signal.SIGKILL)
        proc.join(timeout=10)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
    assert breaker.allow_call() is False
    with pytest.raises(CircuitOpenError):
        breaker.call(lambda: None)
    assert wait_until(breaker.allow_call, timeout=15.0)
    breaker.call(lambda: None)
    assert breaker.state == BreakerState.CLOSED


def _reset(swarm: Swarm, index: int) -> None:
    swarm.breaker().reset()


def test_many_processes_resetting_an_open_breaker_close_it_once(
    redis_url: str, key_prefix: str
) -> None:
    swarm = Swarm(redis_url, key_prefix, failure_threshold=1, reset_timeout=60.0)
    _open_now(swarm)
    swarm.run(_reset)
    assert swarm.signals() == ["opened", "closed"]
    assert swarm.breaker().state == BreakerState.CLOSED


def _call_three_times(swarm: Swarm) -> None:
    breaker = swarm.breaker()
    for _ in range(3):
        breaker.call(lambda: None)


def test_a_forked_child_does_not_flush_its_parents_batch_twice(
    redis_url: str, key_prefix: str
) -> None:
    swarm = Swarm(redis_url, key_prefix, max_staleness=60.0)
    parent = swarm.breaker()
    for _ in range(5):
        parent.call(lambda: None)  # batched, not yet written
    child = CTX.Process(target=_call_three_times, args=(swarm,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert parent.stats().success_count == 8
