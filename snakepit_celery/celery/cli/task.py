"""``celery -A proj snakepit task TASK_ID``: what is known of one task's runs, in one place.

Flower shows only Celery's own task fields, so the run facts snakepit sends
in its ``snakepit-run`` event (device, breaker, crash count) have no place on
its task page. This command gathers them from where they are kept: the
result backend (state; with ``result_extended`` also the node, the queue,
which names the device, and the retries), the store's crash ledger (crashes
and the worker running it now) and the fleet registry (the node running it
now). Nothing is sent to the task or the workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import click

from snakepit_celery.celery.app_context import app_group, namespace
from snakepit_celery.celery.cli.fleet import Fleet
from snakepit_celery.celery.cli.output import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    context_app,
    dump,
    guarded,
    json_option,
    table,
)
from snakepit_celery.celery.task import SnakepitTask
from snakepit_celery.policy.routing import queue_device
from snakepit_celery.store.records import LedgerEntry

__all__ = ["TaskFacts", "task_command", "task_facts"]


@dataclass(frozen=True)
class TaskFacts:
    """What the fleet knows of one task id (None: not known)."""

    task_id: str
    state: str
    name: str | None
    node: str | None
    running_on: str | None
    queue: str | None
    breaker: str | None
    device: str | None
    crashes: int
    attempt: int | None

    @property
    def known(self) -> bool:
        """True when any source knows the task (not merely PENDING, the backend's default)."""
        return self.state != "PENDING" or self.running_on is not None or self.crashes > 0


def _device_of(queue: str | None, task: SnakepitTask | None, prefix: str) -> str | None:
    """The device of a task with a device option, as its queue (namespace ``prefix``) names it.

    ``snakepit.node.<n>.cuda.1`` → ``cuda:1``, ``snakepit.cuda`` → ``cuda``;
    else the task's preference (``cuda,cpu``).
    """
    prefs = None if task is None else task.device
    if prefs is None:
        return None
    routed = queue_device(queue or "", prefix=prefix)
    if routed is not None:
        return str(routed)
    return ",".join([prefs] if isinstance(prefs, str) else prefs)


def _in_flight_node(fleet: Fleet, task_id: str) -> str | None:
    for record in fleet.store.node_list(group=app_group(fleet.app)):
        if task_id in (record.get("in_flight") or ()):
            return str(record["node"])
    return None


def task_facts(fleet: Fleet, task_id: str) -> TaskFacts:
    """Gather the facts of ``task_id`` from the result backend, the crash ledger and registry."""
    meta: dict[str, Any] = dict(fleet.app.backend.get_task_meta(task_id) or {})
    ledger: LedgerEntry | None = fleet.store.ledger_get(task_id)
    name = meta.get("name")
    task = fleet.app.tasks.get(name) if name else None
    task = task if isinstance(task, SnakepitTask) else None
    breaker = None if task is None else task.snakepit_runtime.breaker
    running_on = None if ledger is None else ledger.running_on
    node = meta.get("worker") or _in_flight_node(fleet, task_id)
    if node is None and running_on:
        node = running_on.partition("/")[0]
    retries = meta.get("retries")
    queue = meta.get("queue")
    return TaskFacts(
        task_id=task_id,
        state=str(meta.get("status") or "PENDING"),
        name=name,
        node=node,
        running_on=running_on,
        queue=queue,
        breaker=None if breaker is None else breaker.name,
        device=_device_of(queue, task, namespace(fleet.app)),
        crashes=0 if ledger is None else ledger.crashes,
        attempt=None if retries is None else int(retries) + 1,
    )


@click.command(name="task")
@click.argument("task_id")
@json_option
@click.pass_context
@guarded
def task_command(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one task: state, node, device, breaker, crashes, attempt (exit 1: unknown)."""
    facts = task_facts(Fleet.from_app(context_app(ctx)), task_id)
    if as_json:
        click.echo(dump({**asdict(facts), "known": facts.known}))
    else:
        rows = [(key, "-" if value is None else value) for key, value in asdict(facts).items()]
        click.echo(table(("field", "value"), rows))
    ctx.exit(EXIT_OK if facts.known else EXIT_UNHEALTHY)
