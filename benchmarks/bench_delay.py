"""Worker drain rate when every Redis round trip costs 2 ms more: snakepit against plain.

The node of ``BenchFleet`` reaches its private Redis through a ``DelayProxy``
that holds every request ``DELAY`` seconds (a Redis in another zone); the
client publishes each batch directly, before the node is told to consume it,
so the producer stays outside the timing. Interleaved rounds of the pairs of
``bench_throughput`` (paired ratios, min / median). What a snakepit task adds
on its path shows here multiplied by the delay; what it does on the
heartbeat thread (records, reaper) does not hold the tasks up. A
non-idempotent crash-barrier task is acknowledged on record (for a no-op:
when it ends, like ``acks_late``), not on receipt like plain Celery; its
acknowledgement rides on the node's next pop (``ack_with_next_pop``), so
the event loop waits no round trip for it, while plain Celery's waits one
per task (on receipt, or at the end with ``acks_late``: the third pair).
Target: drain-rate ratio >= 0.97.
"""

from __future__ import annotations

import statistics

from benchmarks.apps.fleet import Batch, BenchFleet, machine_details
from benchmarks.bench_throughput import measure, rate, rates_cells

#: Seconds added to every request the worker node sends to Redis.
DELAY = 0.002
ROUNDS = 10
TASKS = 150
WARMUP = 50
PAIRS = (
    ("snakepit (breaker + crash barrier) vs plain", "bench.plain", "bench.snake"),
    ("idempotent snakepit vs plain acks_late", "bench.plain_late", "bench.snake_idem"),
    ("snakepit (acked on record) vs plain acks_late", "bench.plain_late", "bench.snake"),
    ("A-A control: plain vs plain", "bench.plain", "bench.plain"),
)
TARGET = 0.97


def report(rounds: dict[str, list[tuple[Batch, Batch]]], machine: str) -> str:
    """The Markdown section for RESULTS.md."""
    lines = [
        machine,
        "",
        f"No-op tasks, one prefork worker node (concurrency 2) whose every Redis request is "
        f"held {DELAY * 1000:.0f} ms by a TCP proxy (`benchmarks/delay_proxy.py`; about "
        f"0.9 ms of its own on this machine), producer outside the timing; {ROUNDS} rounds x "
        f"{TASKS} tasks of each kind, interleaved. Drain-rate ratio = measured tasks/s / "
        f"baseline tasks/s, per round (min / median). Target: >= {TARGET:.2f}.",
        "",
        "| pair | baseline tasks/s | measured tasks/s | drain-rate ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {label} | {rates_cells(pairs)} |" for label, pairs in rounds.items()]
    main_pair = rounds[PAIRS[0][0]]
    median = statistics.median(rate(m) / rate(b) for b, m in main_pair)
    verdict = "meets" if median >= TARGET else "misses"
    lines += ["", f"Median drain-rate ratio of the main pair {median:.2f}: {verdict} the target."]
    return "\n".join(lines)


def main() -> str:
    """Drain batches through the delay proxy; return the Markdown section."""
    with BenchFleet(concurrency=2, delay=DELAY) as fleet:
        machine = machine_details(fleet.redis)
        rounds = measure(fleet, PAIRS, ROUNDS, TASKS, WARMUP)
    return report(rounds, machine)


if __name__ == "__main__":
    print(main())
