"""What every command shares: exit codes, JSON and table text, error handling, options.

Nothing here needs a Celery app, so ``python -m snakepit_celery`` uses it too.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NoReturn, TypeVar, cast

import click

from snakepit_celery.errors import ConfigError, SnakepitError
from snakepit_celery.store import fail_open, set_fail_open

__all__ = [
    "EXIT_OK",
    "EXIT_UNHEALTHY",
    "EXIT_USAGE",
    "context_app",
    "dump",
    "fail",
    "guarded",
    "json_option",
    "seconds",
    "suggestion",
    "table",
]

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes of every command.
EXIT_OK, EXIT_UNHEALTHY, EXIT_USAGE = 0, 1, 2


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart; ``-`` for None."""
    cells = [[str(h) for h in headers]]
    cells += [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def seconds(value: float) -> str:
    """A duration as people read it: ``4.0s``, ``2.5m``, ``1.0h``."""
    if value < 60:
        return f"{value:.1f}s"
    if value < 3600:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def dump(data: Any) -> str:
    """``data`` as pretty, sorted JSON (the ``--json`` output of every command)."""
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def suggestion(name: str, known: Iterable[str], what: str) -> str:
    """``did you mean: a, b?`` for the names close to ``name``, else ``<what>: <all of them>``."""
    candidates = sorted(set(known))
    close = difflib.get_close_matches(name, candidates, n=3)
    if close:
        return f"did you mean: {', '.join(close)}?"
    return f"{what}: {', '.join(candidates) or 'none'}"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit 1."""
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(EXIT_UNHEALTHY)


def context_app(ctx: click.Context) -> Any | None:
    """The Celery app ``celery -A`` loaded into the root context, or None (``python -m``)."""
    return getattr(ctx.find_root().obj, "app", None)


@contextlib.contextmanager
def _strict_store() -> Iterator[None]:
    """Report an unreachable store instead of showing an empty fleet (fail-open off)."""
    previous = fail_open()
    set_fail_open(False)
    try:
        yield
    finally:
        set_fail_open(previous)


def guarded(fn: F) -> F:
    """Turn package errors into the documented exit codes (config: 2, anything else: 1)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _strict_store():
                return fn(*args, **kwargs)
        except ConfigError as exc:
            raise click.UsageError(str(exc)) from exc
        except SnakepitError as exc:
            fail(str(exc))

    return cast(F, wrapper)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
