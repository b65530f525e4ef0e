"""The warning when a process's numbers differ from the ones stored with a breaker or pool.

A breaker's and a health pool's configuration is stored with its state by
the first process that writes it; every process judges it by those stored
numbers. A process built with other numbers is told once (per store, name
and stored configuration), so a deploy with mixed settings shows in the logs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["warn_config_conflict"]

logger = logging.getLogger(__name__)

_warned: set[tuple[int, str, str, str]] = set()
_lock = threading.Lock()


def warn_config_conflict(
    kind: str, name: str, store: object, own: Mapping[str, Any], stored: Mapping[str, Any]
) -> None:
    """Log once that ``kind`` ``name`` is judged by its ``stored`` numbers, not ``own``."""
    key = (id(store), kind, name, repr(sorted(stored.items())))
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(
        "%s %s is judged by its stored configuration %s, not this process's %s "
        "(the first configuration stored wins)",
        kind,
        name,
        dict(stored),
        dict(own),
        extra={"snakepit_kind": kind, "snakepit_name": name, "stored_config": dict(stored)},
    )
