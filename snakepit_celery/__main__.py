"""``python -m snakepit_celery hardware [--json]`` and ``... lock generate|validate``.

Works without a Celery app: it runs the very ``hardware`` and ``lock``
commands of ``celery snakepit`` (``snakepit_celery.celery.cli.host``), so
both print the same thing. Exit codes: 0 ok, 1 lock mismatch, 2 usage error
(including an unreadable or malformed lock or override file).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from snakepit_celery.celery.cli.host import host_commands

__all__ = ["main"]

PROG = "python -m snakepit_celery"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = None if argv is None else list(argv)
    try:
        code = host_commands.main(args=args, prog_name=PROG, standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
