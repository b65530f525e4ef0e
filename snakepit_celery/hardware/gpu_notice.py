"""The node's GPU health notice: what a worker tells its pool children.

The worker's GPU watcher publishes a ``HealthNotice`` (GPUs tainted, GPUs
whose processes must recycle) as a small JSON file per worker process
(``write_notice``); a pool child reads its parent's (``read_notice``),
asking ``notice_version`` (one ``stat``) before every task.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "HealthNotice",
    "notice_file",
    "notice_version",
    "read_notice",
    "remove_notice",
    "write_notice",
]


@dataclass(frozen=True)
class HealthNotice:
    """What a worker tells its pool children about its GPUs (by UUID).

    ``tainted``: GPUs to keep work off; ``recycle``: GPU -> ``time.time()`` of
    its last finding that recycles the process using it.
    """

    tainted: frozenset[str] = frozenset()
    recycle: Mapping[str, float] = field(default_factory=dict)


def notice_file(pid: int) -> Path:
    """Where the worker process ``pid`` publishes its ``HealthNotice``."""
    return Path(tempfile.gettempdir()) / f"snakepit-gpu-health-{pid}.json"


def write_notice(pid: int, notice: HealthNotice) -> None:
    """Publish ``notice`` for process ``pid``'s children (atomically replaced)."""
    path = notice_file(pid)
    partial = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
    partial.write_text(json.dumps({"tainted": sorted(notice.tainted), "recycle": notice.recycle}))
    os.replace(partial, path)


def remove_notice(pid: int) -> None:
    """Remove process ``pid``'s notice (the watcher stopped)."""
    notice_file(pid).unlink(missing_ok=True)


def notice_version() -> int:
    """When this process's or its parent's notice last changed (ns; 0: there is none).

    One or two ``stat`` calls: cheap enough to ask before every task.
    """
    for pid in dict.fromkeys((os.getpid(), os.getppid())):
        try:
            return notice_file(pid).stat().st_mtime_ns
        except OSError:
            continue
    return 0


def read_notice(newer_than: float = 0.0) -> HealthNotice | None:
    """The notice of this process or its parent when written after ``newer_than`` (epoch s).

    A pool child reads its parent's, a threads/solo worker its own; None when
    there is none (no watcher) or it is older. A ``stat`` when nothing
    changed; never raises.
    """
    for pid in dict.fromkeys((os.getpid(), os.getppid())):
        path = notice_file(pid)
        try:
            if path.stat().st_mtime < newer_than:
                return None
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        recycle = data.get("recycle")
        return HealthNotice(
            frozenset(str(u) for u in data.get("tainted") or ()),
            {str(k): float(v) for k, v in recycle.items()} if isinstance(recycle, dict) else {},
        )
    return None
