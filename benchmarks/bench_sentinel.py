"""Sentinel failover: time from a master's SIGKILL until the store answers again.

Each round starts a private Sentinel set (``SentinelSet``: master, one replica,
one Sentinel with ``down-after-milliseconds`` 1000 and ``failover-timeout``
3000, all ``redis-server`` processes), opens a breaker through a
``redis+sentinel://`` store, waits until the replica has it (``WAIT``), and
SIGKILLs the master. This process then polls every 10 ms, with the same store
object (nothing restarted), until a store call succeeds; it also notes when
Sentinel first names the promoted replica. The breaker must still be open
afterwards (state kept). Most of the time is Sentinel's own detection
(``down-after``) and election, which the settings above bound.
"""

from __future__ import annotations

import statistics
import time

import redis

from benchmarks.apps.fleet import machine_details
from snakepit_celery.breaker import BreakerState, CircuitBreaker
from snakepit_celery.errors import StoreUnavailableError
from snakepit_celery.store import RedisStore
from snakepit_celery.testing.redis_sentinel import SentinelSet
from snakepit_celery.testing.redis_server import find_redis_server_binary

ROUNDS = 3
POLL = 0.01
DOWN_AFTER = 1.0
FAILOVER_TIMEOUT = 3.0
#: Give up on one failover after this many seconds.
RECOVERY_TIMEOUT = 60.0


def failover_once(binary: str) -> tuple[dict[str, float], str]:
    """One round: seconds from the kill to Sentinel naming the new master and to a store answer.

    Also returns the machine line (with the master's Redis version).
    """
    with SentinelSet(binary, down_after=DOWN_AFTER, failover_timeout=FAILOVER_TIMEOUT) as group:
        store = RedisStore(group.url, key_prefix="bench-sentinel")
        sentinel = group.sentinel_nodes[0].client()
        try:
            breaker = CircuitBreaker("bench", failure_threshold=1, reset_timeout=600.0, store=store)
            breaker.record_failure()
            group.wait_replicated()
            old_port = group.master_port()
            master = redis.Redis(port=old_port)
            machine = machine_details(master)
            master.close()
            times = poll_recovery(group, store, sentinel, old_port)
            if breaker.state != BreakerState.OPEN:
                raise AssertionError("the open breaker was lost in the failover")
            return times, machine
        finally:
            sentinel.close()
            store.close()


def poll_recovery(
    group: SentinelSet, store: RedisStore, sentinel: redis.Redis, old_port: int
) -> dict[str, float]:
    """SIGKILL the master, then poll Sentinel and the store until both show the new master."""
    times: dict[str, float] = {"failed calls": 0.0}
    started = time.perf_counter()
    group.kill_master()
    while "store" not in times:
        elapsed = time.perf_counter() - started
        if elapsed > RECOVERY_TIMEOUT:
            raise TimeoutError(f"the store did not answer within {RECOVERY_TIMEOUT}s")
        if "sentinel" not in times:
            address = sentinel.sentinel_get_master_addr_by_name(group.service)
            if isinstance(address, tuple | list) and int(address[1]) != old_port:
                times["sentinel"] = elapsed
        try:
            store.breaker_peek("bench", reset_timeout=600.0)
        except StoreUnavailableError:
            times["failed calls"] += 1
            time.sleep(POLL)
            continue
        times["store"] = time.perf_counter() - started
    times.setdefault("sentinel", times["store"])
    return times


def report(rounds: list[dict[str, float]], machine: str) -> str:
    """The Markdown section for RESULTS.md."""
    lines = [
        machine,
        "",
        f"Master SIGKILLed under a `redis+sentinel://` store (one replica, one Sentinel, "
        f"down-after {DOWN_AFTER * 1000:.0f} ms, failover-timeout "
        f"{FAILOVER_TIMEOUT * 1000:.0f} ms), {ROUNDS} rounds, polled every "
        f"{POLL * 1000:.0f} ms with the same store object. An open breaker written before "
        "the kill was still open after every failover.",
        "",
        "| from the master's SIGKILL to | min ms | median ms | max ms |",
        "|---|---|---|---|",
    ]
    for label, key in (
        ("Sentinel names the promoted replica", "sentinel"),
        ("first successful store call (time to recovery)", "store"),
    ):
        values = [r[key] * 1000 for r in rounds]
        lines.append(
            f"| {label} | {min(values):.0f} | {statistics.median(values):.0f} | {max(values):.0f} |"
        )
    failed = [int(r["failed calls"]) for r in rounds]
    lines += [
        "",
        f"Store calls refused meanwhile (fail fast, `StoreUnavailableError`): "
        f"{min(failed)}-{max(failed)} per round. Detection (`down-after`) and Sentinel's "
        "election make up most of the time; the client finds the new master on its next "
        "call after Sentinel names it.",
    ]
    return "\n".join(lines)


def main() -> str:
    """Fail the master of a private Sentinel set ``ROUNDS`` times; return the Markdown section."""
    binary = find_redis_server_binary()
    if binary is None:
        raise RuntimeError("the Sentinel benchmark needs a redis-server binary")
    results = [failover_once(binary) for _ in range(ROUNDS)]
    return report([times for times, _ in results], results[-1][1])


if __name__ == "__main__":
    print(main())
