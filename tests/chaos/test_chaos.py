"""Reliability under chaos: real worker nodes killed at random lose no task.

Three prefork nodes of ``tests/apps/chaos_app.py`` run a mix of idempotent,
non-idempotent and always-crashing tasks while a chaos loop SIGKILLs and
SIGSEGVs random pool children, SIGKILLs whole nodes (parent and children) and
restarts them. The run happens once per size (a module fixture); each test
checks one invariant from the result backend and the execution log the tasks
write (one ``LPUSH`` of the task id per execution):

- no task is lost: every task id a node received reaches a final state in
  bounded time (a message kombu's Redis transport loses before any node
  receives it is counted apart, see ``TRANSPORT_LOSS``);
- every idempotent task that does not crash by itself succeeds (unless the
  chaos loop killed each of its ``max_restarts + 1`` runs);
- no non-idempotent task runs twice;
- no task runs more than ``max_restarts + 1`` times;
- a task that crashes its process every time ends FAILURE (WorkerCrashedError).

The small run (about 80 tasks, bounded at 90 s) is part of ``make test``; the
full run (1,000 tasks, bounded at 5 minutes) runs with ``make chaos``
(``SNAKEPIT_CHAOS_FULL=1 pytest -m slow tests/chaos/test_chaos.py``). Knobs:
``CHAOS_KILLS=N`` (env ``SNAKEPIT_CHAOS_KILLS``) keeps the full run going, with
more tasks, until N whole nodes were SIGKILLed; ``CHAOS_BROKER=amqp``
(``SNAKEPIT_CHAOS_BROKER``) runs it on RabbitMQ (127.0.0.1:5672, quorum
queues) instead of Redis (``snakepit_celery.transport.redis``, which
``install()`` picks for Redis brokers).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from benchmarks.__main__ import record
from benchmarks.apps.fleet import machine_details
from snakepit_celery.testing.workers import WorkerNode
from tests.support.chaos import ChaosFleet

FULL = os.environ.get("SNAKEPIT_CHAOS_FULL") == "1"
#: Whole-node kills the full run goes on to (0: the run ends when its tasks do).
KILLS = int(os.environ.get("SNAKEPIT_CHAOS_KILLS") or 0)
#: The broker of the run: ``redis`` or ``amqp`` (RabbitMQ, quorum queues).
BROKER = os.environ.get("SNAKEPIT_CHAOS_BROKER") or "redis"
AMQP_CONF: dict[str, Any] = {
    "broker_url": "amqp://guest:guest@127.0.0.1:5672//",
    "task_default_queue_type": "quorum",
    "worker_detect_quorum_queues": True,
    "broker_transport_options": {"confirm_publish": True},
}
MAX_RESTARTS = 2
BARRIER: dict[str, Any] = {
    "enabled": True,
    "max_restarts": MAX_RESTARTS,
    "taint_duration": 1.0,
    "backoff": [0.05, 0.1],
}
#: Task name -> (share of the tasks, idempotent, crashes by itself).
MIX: dict[str, tuple[float, bool, bool]] = {
    "chaos.idempotent": (0.5, True, False),
    "chaos.once": (0.3, False, False),
    "chaos.poison": (0.1, True, True),
    "chaos.poison_once": (0.1, False, True),
}


@dataclass(frozen=True)
class Size:
    """How big a run is and how long each phase may last (s)."""

    tasks: int
    work: tuple[float, float]
    chaos: float
    drain: float
    nodes: int = 3
    #: Keep the chaos going (more tasks) until this many whole nodes were killed.
    kills: int = 0


SMALL = Size(tasks=80, work=(0.1, 0.4), chaos=15.0, drain=35.0)
LARGE = Size(tasks=1000, work=(0.05, 0.25), chaos=120.0 + KILLS * 4.0, drain=90.0, kills=KILLS)


@dataclass
class ChaosRun:
    """What a run did and what it left: task kinds, final states, execution counts."""

    kinds: dict[str, str]
    states: dict[str, dict[str, Any] | None]
    executions: Counter[str]
    actions: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    logs: str = ""
    #: Tasks whose messages the broker still held at the end (queued or unacknowledged).
    in_broker: set[str] = field(default_factory=set)

    def received(self, task_id: str) -> bool:
        """True when some node logged receiving the task (Celery's "Task ...[id] received")."""
        return f"[{task_id}] received" in self.logs

    def lost(self, ids: list[str]) -> list[str]:
        """Tasks without a final state."""
        return [t for t in ids if self.status(t) not in ("SUCCESS", "FAILURE")]

    def lost_by_transport(self) -> list[str]:
        """Lost tasks no node ever received, whose message the broker no longer holds.

        kombu's Redis transport pops a message off its queue (BRPOP) before it
        writes it to the unacknowledged hash; a node SIGKILLed in between loses
        it before Celery, let alone snakepit, sees it.
        """
        lost = self.lost(list(self.kinds))
        return [t for t in lost if not self.received(t) and t not in self.in_broker]

    def ids(self, *, idempotent: bool | None = None, crashes: bool | None = None) -> list[str]:
        return [
            task_id
            for task_id, kind in self.kinds.items()
            if (idempotent is None or MIX[kind][1] == idempotent)
            and (crashes is None or MIX[kind][2] == crashes)
        ]

    def killed_out(self, task_id: str) -> bool:
        """A task the chaos loop killed on each of its ``max_restarts + 1`` runs.

        The crash barrier rightly stops it (FAILURE ``WorkerCrashedError``):
        a task that does not crash by itself fails only when every one of its
        runs was killed (its child or its whole node).
        """
        return (
            self.status(task_id) == "FAILURE"
            and self.error_type(task_id) == "WorkerCrashedError"
            and self.executions[task_id] == MAX_RESTARTS + 1
        )

    def status(self, task_id: str) -> str | None:
        meta = self.states.get(task_id)
        return None if meta is None else str(meta.get("status"))

    def error_type(self, task_id: str) -> str | None:
        result = (self.states.get(task_id) or {}).get("result")
        return str(result.get("exc_type")) if isinstance(result, dict) else None

    def summary(self) -> str:
        """Outcomes per task kind and how often tasks ran, for the test log."""
        outcomes = Counter(
            (kind, self.status(t), self.error_type(t), self.executions[t])
            for t, kind in self.kinds.items()
        )
        lines = [f"{count:4d} x {key}" for key, count in sorted(outcomes.items(), key=str)]
        return "\n".join(lines)

    def report(self, seed: int) -> str:
        """The run's figures as Markdown, for ``benchmarks/RESULTS.md`` (full runs)."""
        non_idempotent = self.ids(idempotent=False)
        unrun = [
            t for t in non_idempotent if self.status(t) == "FAILURE" and not self.executions[t]
        ]
        healthy = self.ids(idempotent=True, crashes=False)
        rows = [
            ("tasks / seconds / seed", f"{len(self.kinds)} / {self.seconds:.0f} s / {seed}"),
            ("chaos actions", ", ".join(f"{k} {v}" for k, v in sorted(self.actions.items()))),
            (
                "tasks a node received without a final state",
                str(len(self.lost(list(self.kinds))) - len(self.lost_by_transport())),
            ),
            (
                "messages lost by the broker transport (never received)",
                str(len(self.lost_by_transport())),
            ),
            (
                "idempotent tasks that do not crash themselves: SUCCESS",
                f"{sum(self.status(t) == 'SUCCESS' for t in healthy)} of {len(healthy)} "
                f"({sum(self.killed_out(t) for t in healthy)} killed on all "
                f"{MAX_RESTARTS + 1} runs: stopped by max_restarts)",
            ),
            (
                "non-idempotent tasks run twice",
                str(sum(self.executions[t] > 1 for t in non_idempotent)),
            ),
            (
                "tasks run more than max_restarts + 1 times",
                str(sum(self.executions[t] > MAX_RESTARTS + 1 for t in self.kinds)),
            ),
            (
                "non-idempotent tasks failed without running (held by a SIGKILLed node)",
                f"{len(unrun)} of {len(non_idempotent)}",
            ),
        ]
        table = "\n".join(f"| {what} | {value} |" for what, value in rows)
        return (
            "`make chaos`: 3 prefork nodes (concurrency 2), random SIGKILL/SIGSEGV of pool "
            "children and SIGKILL of whole nodes, restarted; final states from the result "
            "backend, executions from a log each task writes first.\n\n"
            f"| invariant | result |\n|---|---|\n{table}\n\n"
            f"Outcomes (kind, status, error, runs):\n\n```\n{self.summary()}\n```"
        )

    def describe(self, ids: list[str], limit: int = 10) -> str:
        return "; ".join(
            f"{task_id} {self.kinds[task_id]} status={self.status(task_id)} "
            f"runs={self.executions[task_id]}"
            for task_id in ids[:limit]
        ) + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")


def _chaos_step(fleet: ChaosFleet, rng: random.Random, restarts: dict[str, float]) -> str:
    """One random act of violence; returns its name."""
    alive = fleet.alive()
    if not alive:
        return "none"
    action = rng.choices(["kill_child", "segv_child", "kill_node"], weights=[4, 3, 2])[0]
    if action == "kill_node" and len(alive) < 2:
        action = "kill_child"
    if action == "kill_node":
        node = rng.choice(alive)
        node.kill()
        restarts[node.name] = time.monotonic() + rng.uniform(0.5, 2.0)
        return action
    children = fleet.pool_children(rng.choice(alive))
    if not children:
        return "none"
    try:
        os.kill(rng.choice(children), signal.SIGKILL if action == "kill_child" else signal.SIGSEGV)
    except ProcessLookupError:
        return "none"
    return action


def _dead(node: WorkerNode) -> bool:
    return node.process is not None and node.process.poll() is not None


def _send_tasks(fleet: ChaosFleet, rng: random.Random, size: Size, kinds: dict[str, str]) -> None:
    """Send ``size.tasks`` tasks of the mix, noting each one's kind in ``kinds``."""
    names = list(MIX)
    weights = [MIX[name][0] for name in names]
    for _ in range(size.tasks):
        name = rng.choices(names, weights=weights)[0]
        kinds[fleet.send(name, rng.uniform(*size.work))] = name


def run_chaos(fleet: ChaosFleet, size: Size, seed: int) -> ChaosRun:
    """Send the tasks, unleash chaos, restart every node, and wait for final states."""
    rng = random.Random(seed)
    started = time.monotonic()
    fleet.start_all(size.nodes)
    kinds: dict[str, str] = {}
    _send_tasks(fleet, rng, size, kinds)
    ids = list(kinds)
    actions: Counter[str] = Counter()
    restarts: dict[str, float] = {}
    chaos_until = time.monotonic() + size.chaos
    while time.monotonic() < chaos_until and (
        fleet.unfinished(ids) or actions["kill_node"] < size.kills
    ):
        if not fleet.unfinished(ids[-size.tasks // 4 :]):
            _send_tasks(fleet, rng, Size(size.tasks // 4, size.work, 0, 0), kinds)
            ids = list(kinds)
        time.sleep(rng.uniform(0.3, 0.9))
        actions[_chaos_step(fleet, rng, restarts)] += 1
        for name, node in fleet.nodes.items():
            if (
                name not in restarts
                and node.process is not None
                and node.process.poll() is not None
            ):
                restarts[name] = time.monotonic()  # died by itself (a child killed at start-up)
        for name, when in list(restarts.items()):
            if time.monotonic() >= when:
                fleet.start(name)
                del restarts[name]
    for name, node in list(fleet.nodes.items()):
        if name in restarts or _dead(node):
            fleet.start(name)
    drain_until = time.monotonic() + size.drain
    while fleet.unfinished(ids) and time.monotonic() < drain_until:
        time.sleep(0.25)
    return ChaosRun(
        kinds=kinds,
        states=fleet.states(ids),
        executions=fleet.executions(),
        actions=actions,
        seconds=time.monotonic() - started,
        logs=fleet.logs(0),
        in_broker=fleet.in_broker(),
    )


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(SMALL, id="small", marks=pytest.mark.integration),
        pytest.param(LARGE, id="full", marks=[pytest.mark.slow, pytest.mark.integration]),
    ],
)
def chaos(request: pytest.FixtureRequest, redis_base_url: str) -> Iterator[ChaosRun]:
    """One chaos run of the requested size, shared by the tests of the module."""
    size: Size = request.param
    if size is LARGE and not FULL:
        pytest.skip("the 1,000-task chaos run needs SNAKEPIT_CHAOS_FULL=1 (make chaos)")
    extra = AMQP_CONF if BROKER == "amqp" and size is LARGE else None
    fleet = ChaosFleet.create(redis_base_url, "spchaos", BARRIER, extra=extra)
    seed = int(os.environ.get("SNAKEPIT_CHAOS_SEED", "1234"))
    try:
        run = run_chaos(fleet, size, seed=seed)
        print(
            f"chaos run: {len(run.kinds)} tasks in {run.seconds:.1f}s, actions {dict(run.actions)}"
            f"\n(kind, status, error, runs):\n{run.summary()}"
        )
        log_file = os.environ.get("SNAKEPIT_CHAOS_LOG_FILE")
        if log_file:
            with open(log_file, "w", encoding="utf-8") as out:
                out.write(run.logs)
        if size is LARGE:
            broker = f"broker: {BROKER}, whole-node kills asked: {KILLS or 'none'}"
            section = "chaos" if BROKER == "redis" else f"chaos-{BROKER}"
            record(section, f"{machine_details(fleet.redis)}\n{broker}\n\n{run.report(seed)}")
        yield run
    finally:
        fleet.close()


pytestmark = pytest.mark.timeout(int(360 + KILLS * 6) if FULL else 150)


def test_chaos_actually_happened(chaos: ChaosRun) -> None:
    assert chaos.actions["kill_child"] + chaos.actions["segv_child"] > 0
    assert chaos.actions["kill_node"] > 0


def _lost_by_us(chaos: ChaosRun, ids: list[str]) -> list[str]:
    """Lost tasks that are not the transport's (a node received them, or the broker holds them)."""
    transport = set(chaos.lost_by_transport())
    return [t for t in chaos.lost(ids) if t not in transport]


def test_no_task_a_node_received_is_lost(chaos: ChaosRun) -> None:
    lost = _lost_by_us(chaos, list(chaos.kinds))
    assert not lost, f"{len(lost)} task(s) without a final state: {chaos.describe(lost)}"


def test_no_message_is_lost_by_the_broker_transport(chaos: ChaosRun) -> None:
    lost = chaos.lost_by_transport()
    assert not lost, f"{len(lost)} message(s) never received by any node: {chaos.describe(lost)}"


def test_every_idempotent_task_that_does_not_crash_itself_succeeds(chaos: ChaosRun) -> None:
    transport = set(chaos.lost_by_transport())
    failed = [
        t
        for t in chaos.ids(idempotent=True, crashes=False)
        if chaos.status(t) != "SUCCESS" and t not in transport and not chaos.killed_out(t)
    ]
    assert not failed, f"{len(failed)} idempotent task(s) did not succeed: {chaos.describe(failed)}"


def test_no_non_idempotent_task_runs_twice(chaos: ChaosRun) -> None:
    twice = [t for t in chaos.ids(idempotent=False) if chaos.executions[t] > 1]
    assert not twice, f"{len(twice)} non-idempotent task(s) ran twice: {chaos.describe(twice)}"


def test_no_task_runs_more_than_max_restarts_plus_one_times(chaos: ChaosRun) -> None:
    over = [t for t in chaos.kinds if chaos.executions[t] > MAX_RESTARTS + 1]
    assert not over, f"{len(over)} task(s) ran > {MAX_RESTARTS + 1} times: {chaos.describe(over)}"


def test_task_crashing_its_process_every_time_ends_failure(chaos: ChaosRun) -> None:
    poison = [t for t in chaos.ids(crashes=True) if t not in chaos.lost_by_transport()]
    wrong = [t for t in poison if chaos.status(t) != "FAILURE"]
    assert not wrong, f"{len(wrong)} poison task(s) not FAILURE: {chaos.describe(wrong)}"
    assert {chaos.error_type(t) for t in poison} == {"WorkerCrashedError"}


def test_every_task_that_ran_is_in_the_log(chaos: ChaosRun) -> None:
    never_ran = [t for t in chaos.kinds if chaos.status(t) == "SUCCESS" and not chaos.executions[t]]
    assert not never_ran, f"SUCCESS without an execution: {chaos.describe(never_ran)}"
