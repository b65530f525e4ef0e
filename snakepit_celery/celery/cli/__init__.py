"""``celery -A proj snakepit ...``: look at the fleet and operate it from a shell.

Registered as a Celery sub-command through the ``celery.commands`` entry
point (``snakepit_celery.celery.cli:snakepit``), like Flower's ``celery
flower``. Every command prints a table for people, or JSON with ``--json``.
Exit codes: 0 ok, 1 unhealthy / mismatch / store unreachable / nothing
matched, 2 usage error.

- ``commands``: the group and the fleet commands;
- ``host``: ``hardware`` and ``lock``, shared with ``python -m snakepit_celery``;
- ``fleet``: what the commands read from an app; ``tables`` and ``output``: the text.
"""

from __future__ import annotations

from snakepit_celery.celery.cli.commands import snakepit
from snakepit_celery.celery.cli.fleet import Fleet

__all__ = ["Fleet", "snakepit"]
