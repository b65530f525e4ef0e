"""``celery -A proj snakepit quarantine list|show ID|replay ID [--queue Q]|drop ID``.

The messages the crash barrier stopped for good, and those the message guard
took out of a queue, as the store's quarantine keeps them
(``snakepit_celery.quarantine``). ``replay`` publishes one again with a fresh
crash count; ``drop`` deletes it. Exit 1 for an id the quarantine does not hold.
"""

from __future__ import annotations

import time
from typing import Any

import click

from snakepit_celery.celery.app_context import app_store, settings_for
from snakepit_celery.celery.cli.output import (
    context_app,
    dump,
    fail,
    guarded,
    json_option,
    seconds,
    suggestion,
    table,
)
from snakepit_celery.celery.poison import replay as replay_message
from snakepit_celery.quarantine import Quarantine
from snakepit_celery.store.records import QuarantineEntry

__all__ = ["quarantine"]

#: Characters of an error shown in the ``list`` table.
_ERROR_WIDTH = 60


def _quarantine(ctx: click.Context) -> tuple[Any, Quarantine]:
    app = context_app(ctx)
    if app is None:
        from celery import current_app  # noqa: PLC0415

        app = current_app
    return app, Quarantine(app_store(app), settings_for(app).crash_barrier)


def _entry(found: Quarantine, entry_id: str) -> QuarantineEntry:
    entry = found.get(entry_id)
    if entry is None:
        known = [e.entry_id for e in found.entries()]
        fail(f"no quarantined message {entry_id!r}; {suggestion(entry_id, known, 'quarantined')}")
    return entry


def entry_dict(entry: QuarantineEntry) -> dict[str, Any]:
    """The JSON of one entry: its id, times and record."""
    return {
        "id": entry.entry_id,
        "quarantined_at": entry.quarantined_at,
        "expires_at": entry.expires_at,
        **entry.record,
    }


@click.group(name="quarantine")
def quarantine() -> None:
    """Messages the crash barrier stopped for good: list, show, replay, drop."""


@quarantine.command(name="list")
@json_option
@click.pass_context
@guarded
def list_entries(ctx: click.Context, as_json: bool) -> None:
    """Every quarantined message, oldest first."""
    entries = _quarantine(ctx)[1].entries()
    if as_json:
        click.echo(dump([entry_dict(e) for e in entries]))
        return
    now = time.time()
    rows = [
        (
            e.entry_id,
            e.record.get("task"),
            e.record.get("reason"),
            e.record.get("crashes"),
            e.record.get("node"),
            seconds(max(0.0, now - e.quarantined_at)),
            str(e.record.get("error") or "")[:_ERROR_WIDTH],
        )
        for e in entries
    ]
    click.echo(table(("ID", "TASK", "REASON", "CRASHES", "NODE", "AGE", "ERROR"), rows))


@quarantine.command()
@click.argument("entry_id", metavar="ID")
@json_option
@click.pass_context
@guarded
def show(ctx: click.Context, entry_id: str, as_json: bool) -> None:
    """One quarantined message: why, its crashes, and the message itself."""
    entry = _entry(_quarantine(ctx)[1], entry_id)
    data = entry_dict(entry)
    if as_json:
        click.echo(dump(data))
        return
    message = data.pop("message", {}) or {}
    history = data.pop("history", []) or []
    for key in ("id", "task", "task_id", "reason", "crashes", "node", "error"):
        click.echo(f"{key}: {'-' if data.get(key) is None else data[key]}")
    click.echo(f"queue: {message.get('routing_key') or '-'}")
    click.echo(f"headers: {dump(message.get('headers') or {})}")
    click.echo(f"body: {message.get('body')}")
    rows = [
        (c.get("classification"), c.get("node"), c.get("device"), c.get("reason")) for c in history
    ]
    click.echo(table(("CRASH", "NODE", "DEVICE", "REASON"), rows))


@quarantine.command()
@click.argument("entry_id", metavar="ID")
@click.option("--queue", "queue", metavar="Q", help="Publish to this queue instead.")
@json_option
@click.pass_context
@guarded
def replay(ctx: click.Context, entry_id: str, queue: str | None, as_json: bool) -> None:
    """Publish a quarantined message again, with a fresh crash count, and forget it here."""
    app, found = _quarantine(ctx)
    target = replay_message(app, found, _entry(found, entry_id), queue)
    if as_json:
        click.echo(dump({"id": entry_id, "queue": target}))
    else:
        click.echo(f"replayed {entry_id} to queue {target}")


@quarantine.command()
@click.argument("entry_id", metavar="ID")
@json_option
@click.pass_context
@guarded
def drop(ctx: click.Context, entry_id: str, as_json: bool) -> None:
    """Delete a quarantined message for good."""
    found = _quarantine(ctx)[1]
    entry = found.drop(entry_id)
    if entry is None:
        _entry(found, entry_id)
    if as_json:
        click.echo(dump({"id": entry_id, "dropped": True}))
    else:
        click.echo(f"dropped {entry_id}")
