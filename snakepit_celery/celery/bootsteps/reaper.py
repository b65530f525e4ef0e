"""The orphan reaper: tasks of dead nodes move on within seconds (DESIGN.md, crash path).

A task that is not idempotent is acknowledged before it ends, so when its
whole node dies (SIGKILL of the parent, OOM killer, power loss) no message
comes back and no pool parent is left to store ``WorkerCrashedError``. Every
``REAP_EVERY`` heartbeats a live node claims dead node incarnations from the
store (``Store.node_reap``: one node gets each; the claimed incarnation is
fenced; it is given back as done with the next claim, so one whose reaper died
or whose claim's reply was lost with the store is handed out again after
``store.base.REAP_RECLAIM``) and

- ends their early-acknowledged barrier tasks that have no final state
  FAILURE with ``WorkerCrashedError`` naming the dead node, through the one
  crash path (``celery.crash``);
- moves every message the dead node still held unacknowledged (its record
  lists their delivery tags) back to its queue at once (``UnackedRestorer``)
  instead of after kombu's visibility timeout: idempotent tasks run again on
  a live node, the crash-ledger gate ends the others. Before that it settles
  the crash ledger of barrier tasks: a run the ledger shows on the dead node
  is counted as a crash (its lease would otherwise make the new delivery look
  like a duplicate), and a ``start_marks`` task the ledger shows never started
  is marked given back unstarted, so it runs normally.

A delivery tag names a message, not one delivery of it: kombu restores a
message (visibility timeout) with its tag, so by the time a late reaper runs
(the store was down, say) a live node may hold the dead node's message again
under the same tag. The reaper leaves alone every tag its own node holds
(read in-process) or a live node's record lists, and every entry taken after
the dead node's last heartbeat (younger than its ``heartbeat_age``: the live
holder took it within its own last beat, so no record lists it yet), and
settles a ledger run only when it names a process of the dead incarnation
(``worker_pids`` of its record: a node restarted under the same name runs its
tasks in new processes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from celery import Celery
from celery.app.task import Context
from celery.backends.base import DisabledBackend

from snakepit_celery.celery.app_context import app_group
from snakepit_celery.celery.bootsteps.in_flight import CONTEXT_FIELDS, HeldDelivery, orphanable
from snakepit_celery.celery.bootsteps.restore import TAKEN_AGAIN_SLACK, UnackedRestorer
from snakepit_celery.celery.crash import CrashOutcome, Observer, SeenCrash, handle_crash
from snakepit_celery.celery.holders import split_holder
from snakepit_celery.celery.ledger_gate import final_state
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.errors import StoreUnavailableError, WorkerCrashedError
from snakepit_celery.store import report_store_error
from snakepit_celery.store.base import Store

__all__ = ["REAP_GRACE", "OrphanReaper"]

logger = logging.getLogger(__name__)

#: A node is reaped this many seconds after its record expired (a slow node may still beat).
REAP_GRACE = 0.5


class OrphanReaper:
    """Claims dead nodes from the store, ends their orphaned tasks FAILURE, restores their messages.

    ``reap()`` runs on the heartbeat thread; ``send_events()`` announces the
    reaped tasks as ``task-failed`` from the event loop.
    """

    def __init__(
        self,
        app: Celery,
        node: str,
        store: Store,
        *,
        grace: float = REAP_GRACE,
        restorer: UnackedRestorer | None = None,
        held: Callable[[], Sequence[HeldDelivery] | None] | None = None,
    ) -> None:
        self.app = app
        #: The messages this reaper's own node holds (None: not known, e.g. AMQP).
        self.held = held
        self.node = node
        self.store = store
        self.grace = grace
        self.restorer = restorer if restorer is not None else UnackedRestorer(app)
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        #: Incarnations reaped since the last claim: given back as done with the next one.
        self._done: list[tuple[str, str]] = []

    def reap(self) -> list[str]:
        """Claim dead nodes and end their orphaned tasks FAILURE; returns those tasks' ids.

        An orphan is a task the dead node's last record lists in flight that
        was acknowledged early (not ``acks_late``) under an enabled crash
        barrier, and has no final state in the result backend.
        """
        failed: list[str] = []
        records = self.store.node_reap(grace=self.grace, group=app_group(self.app), done=self._done)
        self._done = []
        for record in records:
            reaped = self._reap_node(record)
            failed.extend(reaped)
            self._restore_held(record, set(reaped))
            self._done.append((str(record.get("node")), str(record.get("incarnation"))))
        return failed

    def send_events(self, dispatcher: Any) -> None:
        """Send ``task-failed`` for the orphans reaped since the last call (event loop only)."""
        with self._lock:
            events, self._events = self._events, []
        if not events or dispatcher is None or not getattr(dispatcher, "enabled", False):
            return
        for fields in events:
            dispatcher.send("task-failed", **fields)

    def _reap_node(self, record: Mapping[str, Any]) -> list[str]:
        dead = str(record.get("node"))
        age = float(record.get("heartbeat_age") or 0.0)
        tasks = record.get("in_flight_tasks")
        orphans = sorted(orphanable(tasks if isinstance(tasks, Mapping) else {}))
        logger.warning(
            "node %s is dead (no heartbeat for %.1fs); reaped by %s: %d early-acked task(s) "
            "in flight%s",
            dead,
            age,
            self.node,
            len(orphans),
            f" ({', '.join(orphans)})" if orphans else "",
            extra={"node": self.node, "dead_node": dead, "task_ids": orphans},
        )
        failed = []
        for task_id in orphans:
            entry = (tasks or {})[task_id]
            name = str(entry.get("name") or "")
            try:
                if self._fail_orphan(dead, task_id, name, age, entry.get("context")):
                    failed.append(task_id)
            except StoreUnavailableError as exc:
                report_store_error(exc, node=self.node, task_id=task_id)
            except Exception:
                logger.exception(
                    "could not give task %s of dead node %s a final state",
                    task_id,
                    dead,
                    extra={"node": self.node, "dead_node": dead, "task_id": task_id},
                )
        return failed

    def _restore_held(self, record: Mapping[str, Any], failed: set[str]) -> list[str]:
        """Move the messages the dead node held back to their queues; their delivery tags.

        ``failed``: tasks this reaper just ended FAILURE (their ledger is settled).
        """
        dead = str(record.get("node"))
        deliveries = [
            HeldDelivery(*map(str, item))
            for item in record.get("held") or ()
            if isinstance(item, list | tuple) and len(item) == 3
        ]
        if not deliveries:
            return []
        try:
            live = self._live()
            deliveries = [d for d in deliveries if d.tag not in live.tags]
            unacked = set(self.restorer.unacked(d.tag for d in deliveries))
            for delivery in deliveries:
                if delivery.tag in unacked and delivery.task_id not in failed:
                    self._settle_ledger(record, delivery, live)
            # Taken before the record's heartbeat: an entry younger was taken again since.
            restored = self.restorer.restore(
                (d.tag for d in deliveries if d.tag in unacked),
                min_age=max(0.0, float(record.get("heartbeat_age") or 0.0) - TAKEN_AGAIN_SLACK),
            )
        except StoreUnavailableError as exc:
            report_store_error(exc, node=self.node)
            return []
        except Exception:
            logger.exception(
                "could not restore the messages of dead node %s",
                dead,
                extra={"node": self.node, "dead_node": dead},
            )
            return []
        moved = set(restored)
        ids = [d.task_id for d in deliveries if d.tag in moved]
        if ids:
            logger.warning(
                "node %s is dead: %d message(s) it held back in their queues (%s)",
                dead,
                len(ids),
                ", ".join(ids),
                extra={"node": self.node, "dead_node": dead, "task_ids": ids},
            )
        return restored

    def _live(self) -> _LiveNodes:
        """What the live nodes hold and run: this node's tags now, the others' last records."""
        live = _LiveNodes({d.tag for d in (self.held() if self.held else None) or ()}, set())
        for record in self.store.node_list(group=app_group(self.app)):
            for item in record.get("held") or ():
                if isinstance(item, list | tuple) and item:
                    live.tags.add(str(item[0]))
            pids = record.get("worker_pids")
            if isinstance(pids, list):
                live.workers.update(f"{record.get('node')}/{pid}" for pid in pids)
        return live

    def _settle_ledger(
        self, record: Mapping[str, Any], delivery: HeldDelivery, live: _LiveNodes
    ) -> None:
        """Count the dead node's run of a barrier task as a crash, or mark it never started.

        A run the ledger shows on the dead node holds a lease that would make
        the restored delivery look like a duplicate: it is counted as a crash.
        A ``start_marks`` task whose ledger shows no live run never started:
        its next delivery runs normally (``ledger_release``). Any other
        message comes back as it is and the gate counts its loss as a crash:
        the node's last record not listing it running does not prove it never
        started (the record follows a start by up to ``IN_FLIGHT_POLL``), and
        a run that is not counted could take a task past ``max_restarts + 1``
        runs. Only start marks tell a prefetched message from a started one.
        """
        task = self.app.tasks.get(delivery.name)
        if not isinstance(task, SnakepitTask):
            return
        barrier = task.snakepit_runtime.barrier
        if not barrier.enabled:
            return
        entry = barrier.ledger_get(delivery.task_id)
        running_on = entry.running_on if entry is not None else None
        if running_on is not None and _ran_on_dead(record, running_on, live):
            barrier.ledger_crash(delivery.task_id, holder=running_on)
        elif running_on is None and barrier.config.start_marks:
            barrier.ledger_release(delivery.task_id)

    def _fail_orphan(
        self, dead: str, task_id: str, name: str, age: float, context: Any = None
    ) -> bool:
        """Store FAILURE (``WorkerCrashedError``) for ``task_id`` unless it has a final state.

        ``context``: the task's errbacks, chain and chord/group membership as
        its record kept them: they are honoured as the pool parent would have
        (errbacks called, chord counted, chain failed).
        """
        backend = self.app.backend
        if isinstance(backend, DisabledBackend):  # no result backend: no state to give
            return False
        state = final_state(self.app, task_id)
        if state is not None:
            logger.info(
                "task %s of dead node %s already ended %s",
                task_id,
                dead,
                state,
                extra={"node": self.node, "dead_node": dead, "task_id": task_id},
            )
            return False
        error = WorkerCrashedError(
            "unknown",
            None,
            None,
            dead,
            None,
            message=(
                f"node {dead} was lost while running task {name}[{task_id}] (no heartbeat for "
                f"{age:.0f}s); the task is not idempotent, so it is not run again"
            ),
        )
        task = self.app.tasks.get(name)
        runtime = task.snakepit_runtime if isinstance(task, SnakepitTask) else None

        def fail(outcome: CrashOutcome) -> None:
            request = failed_request(task_id, name, context)
            backend.mark_as_failure(task_id, outcome.error, request=request)
            self._announce(task_id, name, dead, outcome.error)

        seen = SeenCrash(task_id, dead, error, Observer.REAPER)
        barrier, health = (runtime.barrier, runtime.health) if runtime else (None, None)
        handle_crash(seen, barrier, health, fail)
        return True

    def _announce(self, task_id: str, name: str, dead: str, error: WorkerCrashedError) -> None:
        with self._lock:
            self._events.append(
                {"uuid": task_id, "exception": repr(error), "traceback": "", "dead_node": dead}
            )
        logger.warning(
            "task %s[%s] was running on dead node %s: marked FAILURE (WorkerCrashedError)",
            name,
            task_id,
            dead,
            extra={"node": self.node, "dead_node": dead, "task_id": task_id},
        )


def failed_request(task_id: str, name: str, context: Any) -> Context | None:
    """The request ``mark_as_failure`` honours errbacks and chords by (None: nothing to honour)."""
    if not isinstance(context, Mapping):
        return None
    fields = {key: context[key] for key in CONTEXT_FIELDS if key in context}
    return Context(id=task_id, task=name, delivery_info={"is_eager": False}, **fields)


class _LiveNodes(NamedTuple):
    """Delivery tags the live nodes hold, and their task processes (``<node>/<pid>``)."""

    tags: set[str]
    workers: set[str]


def _ran_on_dead(record: Mapping[str, Any], running_on: str, live: _LiveNodes) -> bool:
    """True when a ledger's ``running_on`` names a process of the dead incarnation.

    One of the ``worker_pids`` of its record (main process and pool children
    at its last beat); else any process of its name that no live record
    claims: a node restarted under the same name runs in new processes.
    """
    dead = str(record.get("node"))
    pids = record.get("worker_pids")
    if isinstance(pids, list) and running_on in {f"{dead}/{pid}" for pid in pids}:
        return True
    return split_holder(running_on)[0] == dead and running_on not in live.workers
