"""Cost of ``HealthMonitor`` as crashes pile up: O(log n) in the crashes kept.

A pool with ``max_crashes=10000`` keeps up to 100k crashes in its window.
Measured on Redis and on the in-process memory store, each with 0, 10k and
100k crashes kept: ``record_crash`` (one Lua call: add, prune, count the
worker's crashes), ``stats()`` and ``worker_health()`` (counters, no scans);
plus the size of the pool's Redis keys.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from snakepit_celery.health import HealthMonitor
from snakepit_celery.store import MemoryStore, RedisStore, store_from_url
from snakepit_celery.store.redis_schema import HEALTH_TOTAL_TTL
from snakepit_celery.testing.redis_server import redis_url as find_redis_url

MAX_CRASHES = 10_000
FILLS = (0, 10_000, 100_000)
REPEATS = 7
CALLS = 20
WORKERS = 64


def _cost(call: Callable[[], Any]) -> tuple[float, float]:
    """(min, median) seconds per call over ``REPEATS`` rounds of ``CALLS`` calls."""
    rounds = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(CALLS):
            call()
        rounds.append((time.perf_counter() - started) / CALLS)
    return min(rounds), statistics.median(rounds)


def _prefill_redis(store: RedisStore, monitor: HealthMonitor, count: int) -> None:
    """Record ``count`` crashes with the store's own script, pipelined (fast set-up only)."""
    piped = RedisStore(store.client.pipeline(transaction=False), key_prefix=store.key_prefix)
    keys = [
        store.key("hm", monitor.pool, part) for part in (None, "crashes", "by_worker", "workers")
    ]
    args = [monitor.crash_window, monitor.max_entries, int(HEALTH_TOTAL_TTL * 1000)]
    for done in range(0, count, 1000):
        for i in range(done, min(done + 1000, count)):
            piped._run("health_record", keys, [f"w{i % WORKERS}", *args])
        piped.client.execute()


def _prefill_memory(monitor: HealthMonitor, count: int) -> None:
    for i in range(count):
        monitor.store.health_record(
            monitor.pool,
            f"w{i % WORKERS}",
            window=monitor.crash_window,
            max_entries=monitor.max_entries,
        )


def _measure(monitor: HealthMonitor) -> dict[str, tuple[float, float]]:
    return {
        "record_crash": _cost(lambda: monitor.record_crash("w-bench")),
        "stats": _cost(monitor.stats),
        "worker_health": _cost(lambda: monitor.worker_health("w1")),
    }


def _rows(
    kind: str, url: str, tag: str
) -> list[tuple[str, int, dict[str, tuple[float, float]], int]]:
    store: Any = store_from_url(url, key_prefix=tag) if kind == "redis" else MemoryStore()
    rows = []
    for fill in FILLS:
        monitor = HealthMonitor(
            f"fill-{fill}", max_crashes=MAX_CRASHES, crash_window=3600.0, store=store
        )
        if kind == "redis":
            _prefill_redis(store, monitor, fill)
        else:
            _prefill_memory(monitor, fill)
        kept = monitor.stats().crashes_in_window
        costs = _measure(monitor)
        size = 0
        if kind == "redis":
            pattern = f"{tag}:{{hm:{monitor.pool}}}*"
            size = sum(
                int(store.client.memory_usage(k) or 0)
                for k in store.client.scan_iter(match=pattern)
            )
        rows.append((kind, kept, costs, size))
    return rows


def main() -> str:
    """Run every measurement; return the Markdown section for RESULTS.md."""
    url = find_redis_url().rstrip("/")
    tag = f"bench-hm-{uuid.uuid4().hex[:8]}"
    try:
        rows = _rows("redis", url, tag) + _rows("memory", url, tag)
    finally:
        client = redis.Redis.from_url(url)
        for key in client.scan_iter(match=f"{tag}:*", count=1000):
            client.delete(key)
        client.close()
    lines = [
        f"`HealthMonitor(max_crashes={MAX_CRASHES:,})` (keeps up to {10 * MAX_CRASHES:,} crashes), "
        f"{WORKERS} workers; min / median µs per call over {REPEATS} x {CALLS} calls.",
        "",
        "| store | crashes kept | record_crash µs | stats µs | worker_health µs "
        "| pool keys (bytes) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, kept, costs, size in rows:
        cells = " | ".join(f"{costs[op][0] * 1e6:.0f} / {costs[op][1] * 1e6:.0f}" for op in costs)
        lines.append(f"| {kind} | {kept:,} | {cells} | {size:,} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
