"""The snakepit_celery fault-tolerance tour (``make demo``).

Starts a private Redis, then shows what the package does, step by step,
checking each claim as it goes. Exits non-zero if any step did not behave as
narrated, and leaves no process behind.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue

from snakepit_celery import CircuitBreaker, CircuitOpenError, signals
from snakepit_celery.store import clear_store_cache, store_from_url
from snakepit_celery.testing.redis_server import (
    EmbeddedRedis,
    find_redis_server_binary,
    redis_url,
)


@dataclass
class Tour:
    """Narrates steps and remembers which checks failed."""

    failures: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def say(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def check(self, ok: bool, claim: str) -> None:
        mark = "ok " if ok else "FAIL"
        print(f"   [{mark}] {claim}", flush=True)
        if not ok:
            self.failures.append(claim)


def _failing_downstream() -> None:
    raise ConnectionError("model server refused the request")


def _breaker_worker(url: str, prefix: str, calls: int, outcomes: Queue[str]) -> None:
    """Run in a separate OS process: call a failing downstream through the shared breaker."""
    breaker = CircuitBreaker(
        "model-server",
        failure_threshold=5,
        reset_timeout=1.0,
        store=store_from_url(url, key_prefix=prefix),
    )
    for _ in range(calls):
        try:
            breaker.call(_failing_downstream)
        except CircuitOpenError as exc:
            outcomes.put(f"refused:{exc.retry_after:.2f}")
        except ConnectionError:
            outcomes.put("failed")
    outcomes.put("done")


def shared_breaker(tour: Tour, url: str) -> None:
    """Two OS processes hammer one downstream; the breaker they share opens once for both."""
    tour.step("1. A circuit breaker shared by two processes (state in Redis)")
    prefix = f"demo-{int(time.time())}"
    opened: list[dict[str, object]] = []
    closed: list[str] = []

    def on_open(sender: object, **kw: object) -> None:
        opened.append(kw)

    def on_close(sender: object, **kw: object) -> None:
        closed.append(str(kw.get("pool")))

    signals.breaker_opened.connect(on_open, weak=False)
    signals.breaker_closed.connect(on_close, weak=False)
    ctx = multiprocessing.get_context("fork")
    outcomes: Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_breaker_worker, args=(url, prefix, 6, outcomes)) for _ in range(2)]
    for proc in procs:
        proc.start()
    results: list[str] = []
    deadline = time.monotonic() + 20
    while results.count("done") < 2 and time.monotonic() < deadline:
        results.append(outcomes.get(timeout=max(0.1, deadline - time.monotonic())))
    for proc in procs:
        proc.join(timeout=5)
    failed = results.count("failed")
    refused = [r for r in results if r.startswith("refused")]
    tour.say(f"12 calls from 2 processes: {failed} reached the downstream, {len(refused)} refused")
    tour.check(
        5 <= failed <= 6,
        "the downstream saw failure_threshold=5 failures (plus at most one call already in flight)",
    )
    tour.check(len(refused) == 12 - failed, "every later call, from either process, was refused")

    breaker = CircuitBreaker(
        "model-server",
        failure_threshold=5,
        reset_timeout=1.0,
        store=store_from_url(url, key_prefix=prefix),
    )
    stats = breaker.stats()
    tour.say(f"stats seen from a third process: {stats.as_dict()}")
    tour.check(stats.state == "open", "the third process sees the breaker open")
    time.sleep(1.1)
    tour.check(breaker.state == "half_open", "after reset_timeout (Redis clock) it is half-open")
    breaker.call(lambda: "recovered")
    tour.check(breaker.state == "closed", "one successful probe closes it for everybody")
    tour.check(len(closed) == 1, "breaker_closed was signalled once")
    signals.breaker_opened.disconnect(on_open)
    signals.breaker_closed.disconnect(on_close)


STEPS: list[Callable[[Tour, str], None]] = [shared_breaker]


def main() -> int:
    """Run the tour; 0 when every check held."""
    tour = Tour()
    binary = find_redis_server_binary()
    server = EmbeddedRedis(binary).start() if binary else None
    url = server.url if server else redis_url()
    print(f"snakepit_celery tour — Redis at {url} ({'private server' if server else 'shared'})")
    try:
        for step in STEPS:
            step(tour, url)
    finally:
        clear_store_cache()
        if server is not None:
            server.stop()
    elapsed = time.monotonic() - tour.started
    if tour.failures:
        print(f"\n{len(tour.failures)} check(s) failed in {elapsed:.1f}s:")
        for claim in tour.failures:
            print(f" - {claim}")
        return 1
    print(f"\nAll checks held ({elapsed:.1f}s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
