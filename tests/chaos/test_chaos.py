"""Reliability under chaos: real worker nodes killed at random lose no task.

Two apps share one snakepit store (``snakepit_store_url`` and
``snakepit_key_prefix``), each with its own broker database, key prefix and
result backend: the first app runs three prefork nodes of
``tests/apps/chaos_app.py``, the second two. Each sends its own mix of
idempotent, non-idempotent and always-crashing tasks, and of long tasks
(``chaos.long``, ``chaos.long_once``: 8 to 10 s of work, longer than the
broker's 6 s visibility timeout, so only the nodes' visibility keeper stops the
broker from delivering them twice). Meanwhile a chaos loop

- SIGKILLs (``kill_child``) and SIGSEGVs (``segv_child``) random pool children;
- SIGKILLs whole nodes, parent and children (``kill_node``), of either app,
  and restarts them 0.5 to 2 s later;
- SIGKILLs the store's own redis-server (``kill_store``; the first act of
  every run, then at random) and restarts it on the same port 2 to 4 s later.
  The store persists every write (AOF, ``appendfsync always``), so it comes
  back with its data, as a production store with persistence does; the nodes
  run fail-open (``snakepit_fail_open``, the default) meanwhile. A store that
  comes back empty is not part of the run: node records and crash ledgers
  are the store's to keep, and an acknowledged task of a node that died
  around such a restart has nothing left to give it a final state.

The run happens once per size (a module fixture); each test checks one
invariant, for each app, from its result backend and the execution log its
tasks write (a ``start`` record when a run begins, an ``end`` record when its
body ends; see ``tests/apps/chaos_app.py``):

- no task is lost: every task id a node received reaches a final state in
  bounded time (a message kombu's Redis transport loses before any node
  receives it is counted apart, see ``TRANSPORT_LOSS``);
- every idempotent task that does not crash by itself succeeds, unless the
  chaos loop killed each of its ``max_restarts + 1`` runs (long tasks are hit
  that often): then it ends FAILURE (WorkerCrashedError);
- no non-idempotent task runs twice;
- no task runs more than ``max_restarts + 1`` times;
- no task has two executions that overlap in time (see
  ``test_no_task_has_two_executions_that_overlap_in_time``);
- a task that crashes its process every time ends FAILURE (WorkerCrashedError);
- neither app's tasks reach the other's result backend or nodes.

The small run (about 80 + 40 tasks, bounded at 150 s) is part of ``make
test``, with the same invariants, strict, save one: an idempotent task that
failed with fewer destroyed deliveries than this module can see (a message
a node popped and died before logging it, README Known limits) is reported
XFAIL there, with its details; the full run keeps that one strict too. The full run
(1,000 + 500 tasks, bounded at 6 minutes) runs with ``make chaos``
(``SNAKEPIT_CHAOS_FULL=1 pytest -m slow tests/chaos/test_chaos.py``). Knobs: ``CHAOS_KILLS=N`` (env
``SNAKEPIT_CHAOS_KILLS``) keeps the full run going, with more tasks, until N
whole nodes were SIGKILLed; ``CHAOS_BROKER=amqp`` (``SNAKEPIT_CHAOS_BROKER``)
runs the first app on RabbitMQ (127.0.0.1:5672, quorum queues) instead of
Redis (``snakepit_celery.transport.redis``, which ``install()`` picks for
Redis brokers); the second app stays on Redis.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

import pytest

from benchmarks.__main__ import record
from benchmarks.apps.fleet import machine_details
from snakepit_celery.testing.rabbitmq import AMQP_URL
from snakepit_celery.testing.redis_server import EmbeddedRedis, find_redis_server_binary
from snakepit_celery.testing.workers import WorkerNode
from tests.support.chaos import VISIBILITY_TIMEOUT, ChaosFleet, Execution, run_db

FULL = os.environ.get("SNAKEPIT_CHAOS_FULL") == "1"
#: Whole-node kills the full run goes on to (0: the run ends when its tasks do).
KILLS = int(os.environ.get("SNAKEPIT_CHAOS_KILLS") or 0)
#: The broker of the run: ``redis`` or ``amqp`` (RabbitMQ, quorum queues).
BROKER = os.environ.get("SNAKEPIT_CHAOS_BROKER") or "redis"
AMQP_CONF: dict[str, Any] = {
    "broker_url": AMQP_URL,
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


@dataclass(frozen=True)
class Kind:
    """A task of the mix: its share of the tasks and how it behaves."""

    share: float
    idempotent: bool
    #: Kills its own process on every run.
    crashes: bool = False
    #: Works ``LONG_WORK`` seconds, longer than the broker's visibility timeout.
    long: bool = False


MIX: dict[str, Kind] = {
    "chaos.idempotent": Kind(0.5, idempotent=True),
    "chaos.once": Kind(0.28, idempotent=False),
    "chaos.poison": Kind(0.1, idempotent=True, crashes=True),
    "chaos.poison_once": Kind(0.1, idempotent=False, crashes=True),
    "chaos.long": Kind(0.01, idempotent=True, long=True),
    "chaos.long_once": Kind(0.01, idempotent=False, long=True),
}
#: Work (s) of a long task: longer than the broker's visibility timeout.
LONG_WORK = (VISIBILITY_TIMEOUT + 2.0, VISIBILITY_TIMEOUT + 4.0)
#: Chaos actions and their weights (``kill_store`` only while the store runs: the
#: store is down about a sixth of the time).
ACTIONS = {"kill_child": 4.0, "segv_child": 3.0, "kill_node": 2.0, "kill_store": 0.5}
#: How long (s) a killed node, and the killed store, stay down.
NODE_DOWN = (0.5, 2.0)
STORE_DOWN = (2.0, 4.0)
#: ``redis.conf`` lines of the store: every write on disk before it is answered.
STORE_PERSISTENCE = ("appendonly yes", "appendfsync always")
#: The two apps of a run, in the order the ``chaos`` fixture returns them.
APPS = ("first", "second")


@dataclass(frozen=True)
class Size:
    """How big a run is and how long each phase may last (s)."""

    tasks: int
    work: tuple[float, float]
    chaos: float
    drain: float
    nodes: int = 3
    #: Nodes of the second app (which sends half as many tasks).
    second_nodes: int = 2
    #: Keep the chaos going (more tasks) until this many whole nodes were killed.
    kills: int = 0


SMALL = Size(tasks=80, work=(0.1, 0.4), chaos=15.0, drain=35.0)
#: The full run drains longer: a poison task's last trips through a long queue come late.
LARGE = Size(tasks=1000, work=(0.05, 0.25), chaos=120.0 + KILLS * 6.0, drain=150.0, kills=KILLS)


#: Seconds after a run's end record within which a kill of its process still destroys the
#: run (its result is stored, and its message acknowledged, right after the body returns).
RESULT_WINDOW = 1.0
#: A node's section in ``ChaosFleet.logs``, and Celery's log line of a delivery.
_SECTION = re.compile(r"^===== (\S+) \(pid (\d+)\)")
_RECEIVED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
    r"Task \S+\[([0-9a-f-]+)\] received"
)
#: The pool parent's log lines of a child that died with the task: after it accepted the
#: task (``SnakepitRequest``), or before (``bootsteps/putback.py``: sent to another child).
_CHILD_LOST = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): (?:ERROR|WARNING)/MainProcess\] "
    r"task (?:\S+\[)?([0-9a-f-]+)(?:\] lost its worker process|: its pool child died before)"
)


@dataclass
class ChaosRun:
    """What a run did and what it left for one app: task kinds, final states, executions."""

    kinds: dict[str, str]
    states: dict[str, dict[str, Any] | None]
    runs: dict[str, list[Execution]]
    actions: Counter[str] = field(default_factory=Counter)
    #: pid -> when (``time.time()``) the chaos loop killed it, for every process it killed.
    deaths: dict[int, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    logs: str = ""
    #: Tasks whose messages the broker still held at the end (queued or unacknowledged).
    in_broker: set[str] = field(default_factory=set)
    #: This app's tasks found in another app's result backend or execution log.
    strays: list[str] = field(default_factory=list)
    #: The small run of ``make test`` (see ``_holds``).
    small: bool = False

    @cached_property
    def executions(self) -> Counter[str]:
        """How many times each task started running."""
        return Counter({task_id: len(runs) for task_id, runs in self.runs.items()})

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
            if (idempotent is None or MIX[kind].idempotent == idempotent)
            and (crashes is None or MIX[kind].crashes == crashes)
        ]

    def status(self, task_id: str) -> str | None:
        meta = self.states.get(task_id)
        return None if meta is None else str(meta.get("status"))

    def error_type(self, task_id: str) -> str | None:
        result = (self.states.get(task_id) or {}).get("result")
        return str(result.get("exc_type")) if isinstance(result, dict) else None

    def ended(self, execution: Execution) -> float | None:
        """When ``execution`` ended: its end record, else the loop's first kill of its process.

        None when neither is known (its process died otherwise, or it still runs).
        """
        if execution.end is not None:
            return execution.end
        kills = self.deaths.get(execution.pid, [])
        return min((at for at in kills if at >= execution.start), default=None)

    @cached_property
    def _node_lines(self) -> dict[str, dict[str, list[tuple[str, int, float]]]]:
        """Per kind of line (``received``, ``child_lost``), each task's (node, main pid, when)."""
        found: dict[str, dict[str, list[tuple[str, int, float]]]] = {
            "received": defaultdict(list),
            "child_lost": defaultdict(list),
        }
        node, pid = "", 0
        for line in self.logs.splitlines():
            if header := _SECTION.match(line):
                node, pid = header.group(1), int(header.group(2))
                continue
            for kind, pattern in (("received", _RECEIVED), ("child_lost", _CHILD_LOST)):
                if seen := pattern.match(line):
                    at = datetime.strptime(seen.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                    found[kind][seen.group(2)].append((node, pid, at))
        return found

    @property
    def receipts(self) -> dict[str, list[tuple[str, int, float]]]:
        """Each task's deliveries its nodes logged: (node, node's main pid, when received)."""
        return self._node_lines["received"]

    def losses(self, task_id: str) -> int:
        """Deliveries of the task the chaos loop destroyed.

        Its runs the loop killed (their process, or their node's main
        process, before their end record or within ``RESULT_WINDOW`` after
        it: the body returned, its result was not stored yet); its messages a
        node held when the loop SIGKILLed that node, without a run there in
        between (a prefetched message; the crash barrier cannot tell it from
        a run that just started, so it counts as a crash without start
        marks); and its deliveries whose pool child the loop killed before
        the run's start record (the node logged the child lost with the task,
        and no run there since the delivery).
        """
        runs = self.runs.get(task_id, [])
        receipts = self.receipts.get(task_id, [])
        lost = 0
        for run in runs:
            until = float("inf") if run.end is None else run.end + RESULT_WINDOW
            main = max(
                ((at, pid) for node, pid, at in receipts if node == run.node and at <= run.start),
                default=(0.0, 0),
            )[1]
            killers = [*self.deaths.get(run.pid, []), *self.deaths.get(main, [])]
            lost += any(run.start <= k <= until for k in killers)
        for node, pid, at in receipts:
            killed = min((k for k in self.deaths.get(pid, []) if k >= at), default=None)
            if killed is not None and not any(
                run.node == node and at <= run.start <= killed for run in runs
            ):
                lost += 1
        for node, _, at in self._node_lines["child_lost"].get(task_id, []):
            since = max((r for n, _, r in receipts if n == node and r <= at), default=None)
            if since is not None and not any(
                run.node == node and since <= run.start <= at for run in runs
            ):
                lost += 1
        return lost

    def lost_every_delivery(self, task_id: str) -> bool:
        """The chaos loop destroyed ``max_restarts + 1`` of the task's deliveries (``losses``)."""
        return self.losses(task_id) >= MAX_RESTARTS + 1

    def unsuccessful(self) -> list[str]:
        """Idempotent tasks that do not crash themselves, a node received, and did not succeed.

        Save those the chaos loop destroyed ``max_restarts + 1`` deliveries
        of (killed runs, or messages held by SIGKILLed nodes), which end
        FAILURE (WorkerCrashedError).
        """
        transport = set(self.lost_by_transport())
        return [
            t
            for t in self.ids(idempotent=True, crashes=False)
            if self.status(t) != "SUCCESS"
            and t not in transport
            and not (self.lost_every_delivery(t) and self.error_type(t) == "WorkerCrashedError")
        ]

    def overlapping(self) -> list[str]:
        """Tasks with a run that started before an earlier run of theirs ended."""
        return [t for t in self.kinds if _overlap(self.runs.get(t, []), self.ended)]

    def longest_long_run(self) -> float:
        """The longest run (s) of a long task, up to its end or its kill (0: none known)."""
        return max(
            (
                end - execution.start
                for task_id, kind in self.kinds.items()
                if MIX[kind].long
                for execution in self.runs.get(task_id, [])
                if (end := self.ended(execution)) is not None
            ),
            default=0.0,
        )

    def summary(self) -> str:
        """Outcomes per task kind and how often tasks ran, for the test log."""
        outcomes = Counter(
            (kind, self.status(t), self.error_type(t), self.executions[t])
            for t, kind in self.kinds.items()
        )
        lines = [f"{count:4d} x {key}" for key, count in sorted(outcomes.items(), key=str)]
        return "\n".join(lines)

    def report(self) -> str:
        """The run's invariants and outcomes as Markdown, for ``benchmarks/RESULTS.md``."""
        non_idempotent = self.ids(idempotent=False)
        unrun = [
            t for t in non_idempotent if self.status(t) == "FAILURE" and not self.executions[t]
        ]
        healthy = self.ids(idempotent=True, crashes=False)
        rows = [
            ("tasks", str(len(self.kinds))),
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
                f"({sum(self.lost_every_delivery(t) for t in healthy)} with "
                f"{MAX_RESTARTS + 1} deliveries destroyed: stopped by max_restarts)",
            ),
            (
                "... FAILURE, max_restarts + 1 of their deliveries destroyed by the chaos loop "
                "(runs killed, or held by a SIGKILLed node)",
                str(
                    sum(
                        self.lost_every_delivery(t) and self.status(t) == "FAILURE" for t in healthy
                    )
                ),
            ),
            ("... neither (the invariant)", str(len(self.unsuccessful()))),
            (
                "non-idempotent tasks run twice",
                str(sum(self.executions[t] > 1 for t in non_idempotent)),
            ),
            (
                "tasks run more than max_restarts + 1 times",
                str(sum(self.executions[t] > MAX_RESTARTS + 1 for t in self.kinds)),
            ),
            ("tasks with two executions overlapping in time", str(len(self.overlapping()))),
            ("tasks in the other app's backend or log", str(len(self.strays))),
            (
                "non-idempotent tasks failed without running (held by a SIGKILLed node)",
                f"{len(unrun)} of {len(non_idempotent)}",
            ),
            ("longest run of a long task", f"{self.longest_long_run():.1f} s"),
        ]
        table = "\n".join(f"| {what} | {value} |" for what, value in rows)
        return (
            f"| invariant | result |\n|---|---|\n{table}\n\n"
            f"Outcomes (kind, status, error, runs):\n\n```\n{self.summary()}\n```"
        )

    def describe(self, ids: list[str], limit: int = 10) -> str:
        return "; ".join(
            f"{task_id} {self.kinds[task_id]} status={self.status(task_id)} "
            f"runs={self.executions[task_id]}"
            for task_id in ids[:limit]
        ) + (f" (+{len(ids) - limit} more)" if len(ids) > limit else "")

    def describe_runs(self, ids: list[str], limit: int = 10) -> str:
        """Each task's executions: node, pid, start and end (``?``: unknown), in seconds."""
        first = min((r.start for t in ids for r in self.runs.get(t, [])), default=0.0)

        def span(execution: Execution) -> str:
            end = self.ended(execution)
            until = "?" if end is None else f"{end - first:.3f}"
            return f"{execution.node}/{execution.pid} {execution.start - first:.3f}..{until}"

        return "; ".join(
            f"{task_id} {self.kinds[task_id]} status={self.status(task_id)}: "
            + ", ".join(map(span, self.runs.get(task_id, [])))
            for task_id in ids[:limit]
        )


def _overlap(runs: list[Execution], ended: Callable[[Execution], float | None]) -> bool:
    """True when one of ``runs`` started before an earlier one ended (its end known)."""
    ordered = sorted(runs, key=lambda execution: execution.start)
    for index, earlier in enumerate(ordered):
        end = ended(earlier)
        if end is not None and any(later.start < end for later in ordered[index + 1 :]):
            return True
    return False


@dataclass
class App:
    """One app of a run: its fleet, how many nodes and tasks it starts with, what it sent."""

    fleet: ChaosFleet
    nodes: int
    tasks: int
    #: task id -> its kind (a name of ``MIX``).
    kinds: dict[str, str] = field(default_factory=dict)

    def send(self, rng: random.Random, count: int, work: tuple[float, float]) -> None:
        """Send one task of each kind, then ``count`` more picked by share."""
        names = list(MIX)
        picked = names + rng.choices(names, weights=[MIX[name].share for name in names], k=count)
        for name in picked:
            seconds = rng.uniform(*(LONG_WORK if MIX[name].long else work))
            self.kinds[self.fleet.send(name, seconds)] = name

    def unfinished(self, last: int | None = None) -> list[str]:
        """The app's tasks (the ``last`` ones sent) without a final state."""
        ids = list(self.kinds)
        return self.fleet.unfinished(ids if last is None else ids[-last:])


class Chaos:
    """The chaos loop's acts on the apps' nodes and on the store, and what it must restart."""

    def __init__(self, fleets: list[ChaosFleet], store: EmbeddedRedis, rng: random.Random) -> None:
        self.fleets = fleets
        self.store = store
        self.rng = rng
        self.actions: Counter[str] = Counter()
        #: pid -> when (``time.time()``) this loop killed it.
        self.deaths: defaultdict[int, list[float]] = defaultdict(list)
        #: node name -> its fleet and when (monotonic) to restart it.
        self._restarts: dict[str, tuple[ChaosFleet, float]] = {}
        #: When (monotonic) to restart the store; None while it runs.
        self._store_back: float | None = None

    def step(self) -> None:
        """One random act of violence, counted under its name in ``actions``."""
        self.actions[self._act()] += 1

    def _act(self) -> str:
        alive = [(fleet, node) for fleet in self.fleets for node in fleet.alive()]
        if not alive:
            return "none"
        action = self.rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
        if not self.actions["kill_store"]:
            action = "kill_store"  # every run, however short, has a store outage
        fleet, node = self.rng.choice(alive)
        if (action == "kill_store" and self._store_back is not None) or (
            action == "kill_node" and len(fleet.alive()) < 2
        ):
            action = "kill_child"
        if action == "kill_store":
            self.store.kill()
            self._store_back = time.monotonic() + self.rng.uniform(*STORE_DOWN)
        elif action == "kill_node":
            pids = [node.pid, *fleet.pool_children(node)]
            node.kill()
            self._killed(pids)
            self._restarts[node.name] = (fleet, time.monotonic() + self.rng.uniform(*NODE_DOWN))
        else:
            children = fleet.pool_children(node)
            if not children:
                return "none"
            child = self.rng.choice(children)
            try:
                os.kill(child, signal.SIGKILL if action == "kill_child" else signal.SIGSEGV)
            except ProcessLookupError:
                return "none"
            self._killed([child])
        return action

    def _killed(self, pids: list[int]) -> None:
        now = time.time()
        for pid in pids:
            self.deaths[pid].append(now)

    def revive(self, *, everything: bool = False) -> None:
        """Restart the nodes and the store whose time came (``everything``: all now).

        A node that died by itself (a pool child killed while it started) is
        restarted at once.
        """
        now = time.monotonic()
        for fleet in self.fleets:
            for name, node in fleet.nodes.items():
                if name not in self._restarts and _dead(node):
                    self._restarts[name] = (fleet, now)
        for name, (fleet, when) in list(self._restarts.items()):
            if everything or now >= when:
                fleet.start(name)
                del self._restarts[name]
        if self._store_back is not None and (everything or now >= self._store_back):
            self.store.start()
            self._store_back = None


def _dead(node: WorkerNode) -> bool:
    return node.process is not None and node.process.poll() is not None


def run_chaos(apps: list[App], store: EmbeddedRedis, size: Size, seed: int) -> list[ChaosRun]:
    """Send the tasks, unleash chaos, restart every node and the store, wait for final states."""
    rng = random.Random(seed)
    started = time.monotonic()
    for app in apps:
        app.fleet.start_all(app.nodes)
    for app in apps:
        app.send(rng, app.tasks, size.work)
    chaos = Chaos([app.fleet for app in apps], store, rng)
    chaos_until = time.monotonic() + size.chaos
    while time.monotonic() < chaos_until and (
        any(app.unfinished() for app in apps) or chaos.actions["kill_node"] < size.kills
    ):
        for app in apps:
            if not app.unfinished(last=app.tasks // 4):
                app.send(rng, app.tasks // 4, size.work)
        time.sleep(rng.uniform(0.3, 0.9))
        chaos.step()
        chaos.revive()
    chaos.revive(everything=True)
    drain_until = time.monotonic() + size.drain
    while any(app.unfinished() for app in apps) and time.monotonic() < drain_until:
        time.sleep(0.25)
    seconds = time.monotonic() - started
    return [
        ChaosRun(
            kinds=app.kinds,
            states=app.fleet.states(list(app.kinds)),
            runs=app.fleet.runs(),
            actions=chaos.actions,
            deaths=dict(chaos.deaths),
            seconds=seconds,
            logs=app.fleet.logs(0),
            in_broker=app.fleet.in_broker(),
            strays=_strays(app, [other for other in apps if other is not app]),
            small=size is SMALL,
        )
        for app in apps
    ]


def _strays(app: App, others: list[App]) -> list[str]:
    """``app``'s tasks that another app's result backend or execution log holds."""
    ids = list(app.kinds)
    found: set[str] = set()
    for other in others:
        found.update(t for t, meta in other.fleet.states(ids).items() if meta is not None)
        found.update(t for t in other.fleet.runs() if t in app.kinds)
    return sorted(found)


@pytest.fixture(scope="module")
def store() -> Iterator[EmbeddedRedis]:
    """The apps' shared snakepit store: a redis-server of the module, killed by the chaos loop."""
    binary = find_redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary")
    server = EmbeddedRedis(binary, config=STORE_PERSISTENCE).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(SMALL, id="small", marks=pytest.mark.integration),
        pytest.param(LARGE, id="full", marks=[pytest.mark.slow, pytest.mark.integration]),
    ],
)
def chaos(
    request: pytest.FixtureRequest, redis_base_url: str, store: EmbeddedRedis
) -> Iterator[list[ChaosRun]]:
    """One chaos run of the requested size, shared by the tests of the module: one per app."""
    size: Size = request.param
    if size is LARGE and not FULL:
        pytest.skip("the 1,000-task chaos run needs SNAKEPIT_CHAOS_FULL=1 (make chaos)")
    shared = {
        "snakepit_store_url": f"{store.url}/0",
        "snakepit_key_prefix": f"spchaos-{uuid.uuid4().hex[:10]}",
    }
    amqp = AMQP_CONF if BROKER == "amqp" and size is LARGE else {}
    first = ChaosFleet.create(redis_base_url, "spchaos", BARRIER, extra={**amqp, **shared})
    second = ChaosFleet.create(
        redis_base_url, "spchaos2", BARRIER, db=1 + run_db() % 14, extra=shared
    )
    seed = int(os.environ.get("SNAKEPIT_CHAOS_SEED", "1234"))
    try:
        apps = [App(first, size.nodes, size.tasks), App(second, size.second_nodes, size.tasks // 2)]
        runs = run_chaos(apps, store, size, seed=seed)
        print(f"chaos run: {runs[0].seconds:.1f}s, actions {dict(runs[0].actions)}")
        for name, run in zip(APPS, runs, strict=True):
            print(f"{name} app, {len(run.kinds)} tasks (kind, status, error, runs):")
            print(run.summary())
        log_file = os.environ.get("SNAKEPIT_CHAOS_LOG_FILE")
        if log_file:
            with open(log_file, "w", encoding="utf-8") as out:
                out.write("\n".join(run.logs for run in runs))
        if size is LARGE:
            section = "chaos" if BROKER == "redis" else f"chaos-{BROKER}"
            record(section, f"{machine_details(first.redis)}\n{_report(runs, seed)}")
        yield runs
    finally:
        first.close()
        second.close()


def _report(runs: list[ChaosRun], seed: int) -> str:
    """The full run's section of ``benchmarks/RESULTS.md``."""
    first = runs[0]
    actions = ", ".join(f"{k} {v}" for k, v in sorted(first.actions.items()))
    sections = "\n\n".join(
        f"{name.capitalize()} app:\n\n{run.report()}" for name, run in zip(APPS, runs, strict=True)
    )
    return (
        f"broker: {BROKER} (the second app: redis), whole-node kills asked: {KILLS or 'none'}\n\n"
        "`make chaos`: two apps sharing one store (3 and 2 prefork nodes, concurrency 2); "
        "random SIGKILL/SIGSEGV of pool children, SIGKILL of whole nodes and of the store's "
        "redis-server (AOF), restarted; final states from each app's result backend, "
        "executions from a log each task writes.\n\n"
        f"{len(first.kinds) + len(runs[1].kinds)} tasks in {first.seconds:.0f} s, seed {seed}; "
        f"chaos actions: {actions}\n\n{sections}"
    )


@pytest.fixture(params=range(len(APPS)), ids=APPS)
def run(request: pytest.FixtureRequest, chaos: list[ChaosRun]) -> ChaosRun:
    """The chaos run of one app: each invariant is checked for both."""
    result: ChaosRun = chaos[request.param]
    return result


pytestmark = pytest.mark.timeout(int(420 + KILLS * 8) if FULL else 150)


def test_chaos_actually_happened(chaos: list[ChaosRun]) -> None:
    actions = chaos[0].actions
    assert actions["kill_child"] + actions["segv_child"] > 0
    assert actions["kill_node"] > 0
    assert actions["kill_store"] > 0
    for run in chaos:
        assert set(run.kinds.values()) == set(MIX)
        assert run.executions, "the app ran no task"
    longest = max(run.longest_long_run() for run in chaos)
    assert longest > VISIBILITY_TIMEOUT, f"no long task outlived the visibility timeout: {longest}"


def _lost_by_us(run: ChaosRun, ids: list[str]) -> list[str]:
    """Lost tasks that are not the transport's (a node received them, or the broker holds them)."""
    transport = set(run.lost_by_transport())
    return [t for t in run.lost(ids) if t not in transport]


def test_no_task_a_node_received_is_lost(run: ChaosRun) -> None:
    lost = _lost_by_us(run, list(run.kinds))
    assert not lost, f"{len(lost)} task(s) without a final state: {run.describe(lost)}"


def test_no_message_is_lost_by_the_broker_transport(run: ChaosRun) -> None:
    lost = run.lost_by_transport()
    assert not lost, f"{len(lost)} message(s) never received by any node: {run.describe(lost)}"


def test_every_idempotent_task_that_does_not_crash_itself_succeeds(run: ChaosRun) -> None:
    """Unless the chaos loop destroyed ``max_restarts + 1`` of its deliveries (``losses``).

    Strict in the full run; XFAIL with its details in ``make test``'s small
    one: a delivery the loop destroyed before any node logged it (a message
    a node popped, then was SIGKILLed) is one ``losses`` cannot see, and the
    crash barrier counts it, as it must (README, Known limits).
    """
    failed = run.unsuccessful()
    message = f"{len(failed)} idempotent task(s) failed: {run.describe_runs(failed)}"
    if failed and run.small:
        pytest.xfail(f"known limit (README, Known limits), see make chaos: {message}")
    assert not failed, message


def test_no_non_idempotent_task_runs_twice(run: ChaosRun) -> None:
    twice = [t for t in run.ids(idempotent=False) if run.executions[t] > 1]
    assert not twice, f"{len(twice)} non-idempotent task(s) ran twice: {run.describe_runs(twice)}"


def test_no_task_runs_more_than_max_restarts_plus_one_times(run: ChaosRun) -> None:
    over = [t for t in run.kinds if run.executions[t] > MAX_RESTARTS + 1]
    assert not over, f"{len(over)} task(s) ran > {MAX_RESTARTS + 1} times: {run.describe(over)}"


def test_no_task_has_two_executions_that_overlap_in_time(run: ChaosRun) -> None:
    """No run of a task starts while an earlier run of it is still going (no concurrent copy).

    Runs are ordered by their start record; a later run overlaps an earlier
    one when it starts before the earlier one ended. The earlier run ended at
    its end record (written when the task's body returns or raises, or right
    before a poison task kills its own process); a run without one was killed
    by the chaos loop, and ended when the loop's SIGKILL or SIGSEGV reached
    its process (the loop notes the pid and time of each kill, whole nodes'
    pool children included). A run with neither (its process died otherwise)
    is only compared as the later run. Times are ``time.time()`` of one machine.
    """
    overlapping = run.overlapping()
    assert not overlapping, (
        f"{len(overlapping)} task(s) ran twice at once: {run.describe_runs(overlapping)}"
    )


def test_task_crashing_its_process_every_time_ends_failure(run: ChaosRun) -> None:
    poison = [t for t in run.ids(crashes=True) if t not in run.lost_by_transport()]
    wrong = [t for t in poison if run.status(t) != "FAILURE"]
    assert not wrong, f"{len(wrong)} poison task(s) not FAILURE: {run.describe(wrong)}"
    assert {run.error_type(t) for t in poison} == {"WorkerCrashedError"}


def test_every_task_that_ran_is_in_the_log(run: ChaosRun) -> None:
    never_ran = [t for t in run.kinds if run.status(t) == "SUCCESS" and not run.executions[t]]
    assert not never_ran, f"SUCCESS without an execution: {run.describe(never_ran)}"


def test_no_task_reaches_the_other_apps_backend_or_nodes(run: ChaosRun) -> None:
    assert not run.strays, f"in the other app: {run.describe(run.strays)}"
