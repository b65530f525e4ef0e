"""Commands about this host that need no Celery app: ``hardware`` and ``lock``.

``celery -A proj snakepit`` and ``python -m snakepit_celery`` run these same
commands (``host_commands`` is the group of the latter), so both print the
same thing and exit with the same codes.
"""

from __future__ import annotations

import click

from snakepit_celery import hardware, lockfile
from snakepit_celery.celery.cli.output import (
    EXIT_UNHEALTHY,
    context_app,
    dump,
    guarded,
    json_option,
)
from snakepit_celery.config import load_settings
from snakepit_celery.errors import LockMismatchError
from snakepit_celery.hardware.report import hardware_json, hardware_table

__all__ = ["configure_hardware", "hardware_command", "host_commands", "lock"]


def configure_hardware(ctx: click.Context) -> None:
    """Apply the app's ``snakepit_hardware`` override, when there is an app that sets one.

    Without an app, detection honours the ``SNAKEPIT_HARDWARE`` variable by itself.
    """
    app = context_app(ctx)
    configured = None if app is None else load_settings(app.conf).hardware
    if configured:
        hardware.configure(configured)


@click.command(name="hardware")
@json_option
@click.pass_context
@guarded
def hardware_command(ctx: click.Context, as_json: bool) -> None:
    """This host's hardware, as the workers detect it (honours ``snakepit_hardware``)."""
    configure_hardware(ctx)
    info = hardware.detect()
    click.echo(hardware_json(info) if as_json else hardware_table(info))


@click.group()
def lock() -> None:
    """Hardware lock files: pin the hardware a deployment was validated on."""


@lock.command(name="generate")
@click.argument("dependencies", nargs=-1, metavar="[NAME=VERSION]...")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write here.")
@guarded
def lock_generate(dependencies: tuple[str, ...], output: str | None) -> None:
    """Print (or write) a lock file describing this host."""
    text = lockfile.generate(lockfile.parse_dependency_args(dependencies))
    if output:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


@lock.command(name="validate")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
@click.pass_context
@guarded
def lock_validate(ctx: click.Context, file: str, as_json: bool) -> None:
    """Check this host against FILE; exit 1 on a mismatch, saying why in one line."""
    try:
        lockfile.validate(file)
    except LockMismatchError as exc:
        if as_json:
            click.echo(dump({"ok": False, "reason": exc.reason, "message": str(exc)}))
        else:
            click.echo(str(exc))
        ctx.exit(EXIT_UNHEALTHY)
    if as_json:
        click.echo(dump({"ok": True, "reason": None, "message": "ok"}))
    else:
        click.echo("ok: this host satisfies the lock file")


@click.group(name="snakepit_celery")
def host_commands() -> None:
    """Hardware detection and lock files of snakepit_celery (no Celery app needed)."""


host_commands.add_command(hardware_command)
host_commands.add_command(lock)
