"""Cost of ``CircuitBreaker.call`` on Redis against pybreaker.

Measured in one run on the same Redis:
- per-call cost (min/median of several repeats) of snakepit's breaker (default
  ``max_staleness`` and strict ``max_staleness=0``), pybreaker with
  ``CircuitRedisStorage`` and pybreaker in memory, as ratios;
- client round trips per call, counted with Redis ``MONITOR`` (commands run
  inside Lua scripts are left out: MONITOR tags them ``[<db> lua]``);
- per-call cost with 1, 4 and 16 processes calling one breaker at once.

``HealthMonitor`` costs are in ``bench_health.py``.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import pybreaker
import redis

from snakepit_celery.breaker import CircuitBreaker
from snakepit_celery.store import store_from_url
from snakepit_celery.testing.monitor import CommandLog
from snakepit_celery.testing.redis_server import redis_url as find_redis_url

REPEATS = 5
CALLS = 2000
SCALING_SECONDS = 0.5
PROCESS_COUNTS = (1, 4, 16)
CTX = multiprocessing.get_context("fork")


def noop() -> None:
    """The protected call: free, so the breaker's own cost is what is measured."""


_TAGS: list[str] = []


def _tag(kind: str) -> str:
    """A key prefix / namespace unique to this run (its keys are deleted at the end)."""
    tag = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    _TAGS.append(tag)
    return tag


def _make(kind: str, url: str, tag: str) -> Callable[[], Any]:
    """A zero-argument function making one call through breaker ``kind``."""
    if kind == "snakepit":
        snake = CircuitBreaker(f"bench-{tag}", store=store_from_url(url, key_prefix=tag))
        return lambda: snake.call(noop)
    if kind == "snakepit-strict":
        strict = CircuitBreaker(
            f"bench-{tag}", max_staleness=0, store=store_from_url(url, key_prefix=tag)
        )
        return lambda: strict.call(noop)
    if kind == "pybreaker-redis":
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, redis.Redis.from_url(url), namespace=tag
        )
        py_redis = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)
        return lambda: py_redis.call(noop)
    py_memory = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30)
    return lambda: py_memory.call(noop)


def _per_call(call: Callable[[], Any], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls


def _flush() -> None:
    from snakepit_celery.breaker import flush_all

    flush_all()


def per_call_costs(url: str) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per call of each breaker, repeats interleaved."""
    kinds = ("snakepit", "snakepit-strict", "pybreaker-redis", "pybreaker-memory")
    calls = {kind: _make(kind, url, _tag("pc")) for kind in kinds}
    for call in calls.values():
        _per_call(call, 200)  # warm up: connections, scripts
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for _ in range(REPEATS):
        for kind, call in calls.items():
            samples[kind].append(_per_call(call, CALLS))
    _flush()
    return {kind: (min(s), statistics.median(s)) for kind, s in samples.items()}


def round_trips_per_call(url: str, kind: str, calls: int = 2000) -> float:
    """Client commands per call seen by MONITOR (script-internal commands excluded)."""
    tag = _tag("rt")
    call = _make(kind, url, tag)
    call()
    _flush()
    time.sleep(0.2)
    client = redis.Redis.from_url(url)
    with CommandLog(url) as log:
        start = log.mark(client)
        for _ in range(calls):
            call()
        _flush()
        seen = [c for c in log.since(start, log.mark(client)) if tag in c]
    client.close()
    return len(seen) / calls


def _scaling_worker(url: str, kind: str, tag: str, start: Any, out: Any) -> None:
    call = _make(kind, url, tag)
    _per_call(call, 50)
    start.wait(30)
    calls, began = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - began) < SCALING_SECONDS:
        for _ in range(20):
            call()
        calls += 20
    out.put((calls, elapsed))
    _flush()


def scaling(url: str, kind: str, processes: int) -> tuple[float, float]:
    """(median per-call seconds in each process, aggregate calls per second).

    Every process calls for ``SCALING_SECONDS`` after a common start.
    """
    tag = _tag("sc")
    start, out = CTX.Barrier(processes), CTX.Queue()
    procs = [
        CTX.Process(target=_scaling_worker, args=(url, kind, tag, start, out))
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(10)
    per_call = statistics.median(elapsed / calls for calls, elapsed in results)
    rate = sum(calls / elapsed for calls, elapsed in results)
    return per_call, rate


def _cleanup(url: str) -> None:
    client = redis.Redis.from_url(url)
    for pattern in [p for tag in _TAGS for p in (f"{tag}:*", f"pybreaker:{tag}:*")]:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    client.close()


def main() -> str:
    """Run every measurement; return the Markdown section for RESULTS.md."""
    url = find_redis_url().rstrip("/")
    try:
        return _report(url)
    finally:
        _cleanup(url)


def _report(url: str) -> str:
    costs = per_call_costs(url)
    base = costs["pybreaker-redis"][1]
    lines = [
        f"Per call (µs), min / median of {REPEATS} repeats x {CALLS} calls; "
        "ratio = pybreaker-Redis median / this median (higher is cheaper).",
        "",
        "| breaker | min µs | median µs | vs pybreaker-redis | round trips/call |",
        "|---|---|---|---|---|",
    ]
    for kind, (low, mid) in costs.items():
        trips = "0 (memory)"
        if kind != "pybreaker-memory":
            trips = f"{round_trips_per_call(url, kind):.3f}"
        lines.append(
            f"| {kind} | {low * 1e6:.1f} | {mid * 1e6:.1f} | {base / mid:.1f}x | {trips} |"
        )
    snake, memory = costs["snakepit"][1], costs["pybreaker-memory"][1]
    lines += [
        "",
        f"**snakepit (default max_staleness) is {base / snake:.0f}x cheaper per call than "
        f"pybreaker with CircuitRedisStorage, {memory / snake:.1f}x pybreaker in memory.**",
    ]
    lines += [
        "",
        f"Processes calling one breaker name at once for {SCALING_SECONDS} s: median per-call "
        "µs in a process, aggregate calls/s (the machine's cores are shared, so per-call "
        "cost grows with CPU contention).",
        "",
        "| processes | snakepit µs | snakepit calls/s | pybreaker-redis µs "
        "| pybreaker-redis calls/s |",
        "|---|---|---|---|---|",
    ]
    for processes in PROCESS_COUNTS:
        snake_cost, snake_rate = scaling(url, "snakepit", processes)
        py_cost, py_rate = scaling(url, "pybreaker-redis", processes)
        lines.append(
            f"| {processes} | {snake_cost * 1e6:.1f} | {snake_rate:,.0f} | "
            f"{py_cost * 1e6:.1f} | {py_rate:,.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
