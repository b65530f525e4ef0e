"""What ``@snakepit_task`` costs a no-op task, against plain ``@app.task`` on the same worker.

One prefork worker node (concurrency 2) of ``benchmarks/apps/bench_app.py`` on
a private Redis (broker, result backend and store) runs interleaved batches of
each task of a pair, round after round, the order alternating between rounds;
each round gives one paired ratio, so load from elsewhere on the machine hits
both sides alike. The worker sends task events (``-E``, as under Flower), for
both sides alike. Reported per pair: throughput ratio (snakepit tasks/s over
plain tasks/s) and CPU ratio (plain CPU seconds per task over snakepit's,
worker processes + redis-server, read with psutil); 1.0 means free, the
target is >= 0.90. The plain-vs-plain pair shows the noise of the method.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from benchmarks.apps.fleet import Batch, BenchFleet, machine_details

ROUNDS = 5
TASKS = 300
WARMUP = 100
#: (label, baseline task, measured task).
PAIRS = (
    ("snakepit (breaker + crash barrier) vs plain", "bench.plain", "bench.snake"),
    ("idempotent snakepit vs plain acks_late", "bench.plain_late", "bench.snake_idem"),
    ("start marks vs snakepit (cost of start_marks=True)", "bench.snake", "bench.snake_marked"),
    ("A-A control: plain vs plain", "bench.plain", "bench.plain"),
)
TARGET = 0.90


def measure(
    fleet: BenchFleet,
    pairs: Sequence[tuple[str, str, str]] = PAIRS,
    rounds_count: int = ROUNDS,
    tasks: int = TASKS,
    warmup: int = WARMUP,
) -> dict[str, list[tuple[Batch, Batch]]]:
    """Per pair label, the (baseline, measured) batches of every round."""
    for task in {task for _, base, measured in pairs for task in (base, measured)}:
        fleet.run_batch(task, warmup)
    rounds: dict[str, list[tuple[Batch, Batch]]] = {label: [] for label, _, _ in pairs}
    for number in range(rounds_count):
        for label, base, measured in pairs:
            if number % 2 == 0:
                first = fleet.run_batch(base, tasks)
                second = fleet.run_batch(measured, tasks)
                rounds[label].append((first, second))
            else:
                second = fleet.run_batch(measured, tasks)
                first = fleet.run_batch(base, tasks)
                rounds[label].append((first, second))
    return rounds


def rate(batch: Batch) -> float:
    """Tasks per second of one batch."""
    return batch.tasks / batch.wall


def min_median(values: Sequence[float]) -> str:
    """Paired per-round ratios as a table cell: ``min / median``."""
    return f"{min(values):.2f} / {statistics.median(values):.2f}"


def rates_cells(pairs: Sequence[tuple[Batch, Batch]]) -> str:
    """Median baseline and measured tasks/s and the throughput ratio cell of a pair's rounds."""
    return (
        f"{statistics.median(rate(b) for b, _ in pairs):.0f} "
        f"| {statistics.median(rate(m) for _, m in pairs):.0f} "
        f"| {min_median([rate(m) / rate(b) for b, m in pairs])}"
    )


def _cpu_ms(batch: Batch) -> float:
    return 1000 * batch.cpu / batch.tasks


def report(rounds: dict[str, list[tuple[Batch, Batch]]], machine: str) -> str:
    """The Markdown section for RESULTS.md."""
    lines = [
        machine,
        "",
        f"No-op tasks, one prefork worker node (concurrency 2, task events on: -E), "
        "Redis broker and result "
        f"backend; {ROUNDS} rounds x {TASKS} tasks of each kind, interleaved (order alternating). "
        "Ratios are per round (paired), shown as min / median; throughput ratio = measured "
        "tasks/s / baseline tasks/s, CPU ratio = baseline CPU per task / measured CPU per task "
        f"(worker processes + redis-server). Target: >= {TARGET:.2f}.",
        "",
        "| pair | baseline tasks/s | measured tasks/s | throughput ratio | "
        "baseline CPU ms/task | measured CPU ms/task | CPU ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, pairs in rounds.items():
        cpu = [_cpu_ms(b) / _cpu_ms(m) for b, m in pairs]
        lines.append(
            f"| {label} | {rates_cells(pairs)} "
            f"| {statistics.median(_cpu_ms(b) for b, _ in pairs):.2f} "
            f"| {statistics.median(_cpu_ms(m) for _, m in pairs):.2f} "
            f"| {min_median(cpu)} |"
        )
    main_pair = rounds[PAIRS[0][0]]
    median_cpu = statistics.median(_cpu_ms(b) / _cpu_ms(m) for b, m in main_pair)
    verdict = "meets" if median_cpu >= TARGET else "misses"
    lines += ["", f"Median CPU ratio of the main pair {median_cpu:.2f}: {verdict} the target."]
    return "\n".join(lines)


def main() -> str:
    """Run the rounds on a private Redis and worker node; return the Markdown section."""
    with BenchFleet(concurrency=2, worker_args=("-E",)) as fleet:
        machine = machine_details(fleet.redis)
        rounds = measure(fleet)
    return report(rounds, machine)


if __name__ == "__main__":
    print(main())
