"""Client round trips to Redis per task: ``@snakepit_task`` against plain ``@app.task``.

Counted with Redis ``MONITOR`` on a private server while one worker node runs a
batch that was published beforehand; commands that Lua scripts run are left
out (MONITOR tags them ``lua``), so one ``EVALSHA`` is one round trip. The
baseline pays Celery's own commands (fetch, ack, result), so the difference
is what snakepit adds. Four cases, each against its plain twin:
- first delivery, not idempotent (breaker + crash barrier on);
- first delivery, idempotent (``acks_late``);
- redelivered idempotent messages (as kombu restores them after a node died:
  ``redelivered`` set), where the crash ledger is read;
- first delivery with ``start_marks=True`` (the start mark is written).
Targets: 0 extra for a first delivery, at most 1 extra otherwise (start marks: the
one round trip a task asks for).
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import redis

from benchmarks.apps.fleet import BenchFleet, machine_details
from snakepit_celery.testing.monitor import CommandLog

REPEATS = 3
TASKS = 200
#: Seconds to keep counting after the last result, so deferred bookkeeping is seen.
SETTLE = 0.5
#: (label, baseline task, measured task, redelivered).
CASES = (
    ("first delivery", "bench.plain", "bench.snake", False),
    ("first delivery, idempotent", "bench.plain_late", "bench.snake_idem", False),
    ("redelivered, idempotent", "bench.plain_late", "bench.snake_idem", True),
    ("first delivery, start marks", "bench.plain", "bench.snake_marked", False),
)
RESULT_KEY = "celery-task-meta-"


@dataclass
class CommandCount:
    """Commands seen by MONITOR between two markers (script-internal ones excluded)."""

    total: int = 0
    by_name: Counter[str] = field(default_factory=Counter)
    results: int = 0


def _count(commands: list[str]) -> CommandCount:
    count = CommandCount(total=len(commands))
    for command in commands:
        count.by_name[command.split(" ", 1)[0].upper()] += 1
        if command.upper().startswith("SET") and RESULT_KEY in command:
            count.results += 1
    return count


def mark_redelivered(client: redis.Redis, queue: str) -> None:
    """Rewrite the messages waiting in ``queue`` as kombu restores them (``redelivered``)."""
    messages = client.lrange(queue, 0, -1)
    rewritten = []
    for raw in messages:
        payload = json.loads(raw)
        payload.setdefault("headers", {})["redelivered"] = True
        payload["properties"].setdefault("delivery_info", {})["redelivered"] = True
        rewritten.append(json.dumps(payload))
    pipe = client.pipeline()
    pipe.delete(queue)
    pipe.rpush(queue, *rewritten)
    pipe.execute()


def count_batch(
    fleet: BenchFleet, monitor: CommandLog, task: str, tasks: int, redelivered: bool
) -> CommandCount:
    """Client commands while the node runs a batch of ``tasks`` calls of ``task``."""
    queue = f"bench.rt.{uuid.uuid4().hex[:8]}"
    ids = fleet.publish(task, tasks, queue)
    if redelivered:
        mark_redelivered(fleet.redis, queue)
    start = monitor.mark(fleet.redis)
    fleet.consume(queue)
    deadline = time.monotonic() + 120
    while _count(monitor.since(start)).results < tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch of {task} did not finish")
        time.sleep(0.02)
    time.sleep(SETTLE)
    fleet.release(queue)
    count = _count(monitor.since(start, monitor.mark(fleet.redis)))
    fleet.redis.delete(*[f"{RESULT_KEY}{task_id}" for task_id in ids])
    return count


Pair = tuple[CommandCount, CommandCount]


def measure(fleet: BenchFleet) -> dict[str, list[Pair]]:
    """Per case, (baseline, measured) command counts of every repeat."""
    monitor = CommandLog(fleet.url)
    try:
        for _, base, measured, _ in CASES:
            count_batch(fleet, monitor, base, 20, False)
            count_batch(fleet, monitor, measured, 20, False)
        results: dict[str, list[Pair]] = {label: [] for label, *_ in CASES}
        for _ in range(REPEATS):
            for label, base, measured, redelivered in CASES:
                plain = count_batch(fleet, monitor, base, TASKS, redelivered)
                snake = count_batch(fleet, monitor, measured, TASKS, redelivered)
                results[label].append((plain, snake))
        return results
    finally:
        monitor.close()


def _extra_by_name(pairs: list[Pair]) -> str:
    """Commands whose per-task count differs most between measured and baseline."""
    diff: Counter[str] = Counter()
    for plain, snake in pairs:
        diff.update(snake.by_name)
        diff.subtract(plain.by_name)
    per_task = {name: n / (TASKS * len(pairs)) for name, n in diff.items()}
    shown = [(n, name) for name, n in per_task.items() if abs(n) >= 0.01]
    return ", ".join(f"{name} {n:+.2f}" for n, name in sorted(shown, reverse=True)[:3]) or "-"


def report(results: dict[str, list[Pair]], machine: str) -> str:
    """The Markdown section for RESULTS.md."""
    lines = [
        machine,
        "",
        f"Client commands to Redis per task (MONITOR, commands run inside Lua excluded), "
        f"{REPEATS} repeats x {TASKS} tasks, one prefork worker (concurrency 2); includes the "
        "worker's idle polling and heartbeat during the batch, alike for both. "
        "Extra = measured - baseline (median of per-repeat differences, min..max in brackets). "
        "Target: 0 extra for a first delivery, <= 1 otherwise.",
        "",
        "| case | baseline commands/task | snakepit commands/task | extra per task "
        "| extra by command |",
        "|---|---|---|---|---|",
    ]
    for label, pairs in results.items():
        plain = [p.total / TASKS for p, _ in pairs]
        snake = [s.total / TASKS for _, s in pairs]
        extra = [s - p for p, s in zip(plain, snake, strict=True)]
        lines.append(
            f"| {label} | {statistics.median(plain):.2f} | {statistics.median(snake):.2f} "
            f"| {statistics.median(extra):+.2f} [{min(extra):+.2f}..{max(extra):+.2f}] "
            f"| {_extra_by_name(pairs)} |"
        )
    return "\n".join(lines)


def main() -> str:
    """Count on a private Redis and worker node; return the Markdown section."""
    with BenchFleet(concurrency=2) as fleet:
        machine = machine_details(fleet.redis)
        results = measure(fleet)
    return report(results, machine)


if __name__ == "__main__":
    print(main())
