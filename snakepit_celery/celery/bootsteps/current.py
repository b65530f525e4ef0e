"""Which worker node this process belongs to, per app (the event bridge reads it).

The consumer step notes its node name when it is built, in the worker's main
process, before the pool forks; pool children inherit the note.
"""

from __future__ import annotations

from celery import Celery

__all__ = ["note_worker_node", "worker_node"]

_worker_nodes: dict[int, str] = {}


def note_worker_node(app: Celery, node: str) -> None:
    """Remember that this process runs ``app`` as worker node ``node``."""
    _worker_nodes[id(app)] = node


def worker_node(app: Celery) -> str | None:
    """The node name of the worker running ``app`` in this process (and its pool children)."""
    return _worker_nodes.get(id(app))
